"""Offline replicas of the LLM2Vec checkpoints the authors published on the Hugging Face hub.

Each replica has the published layout (l2v.llm2vec_format.write_checkpoint): a tiny random base model folder
written as transformers 4.4x writes one (``rope_theta`` / ``rope_scaling`` in config.json, e.g. Llama-3.1's
``llama3`` rope scaling), an ``-mntp`` folder with the base's config (``_name_or_path`` = the real hub id, which
picks the chat template), ``architectures: [LlamaEncoderModel]`` with an ``auto_map`` to custom code, the MNTP
LoRA and a tokenizer holding the family's chat special tokens, and a second LoRA folder.

Weights come from numpy generators seeded per replica (not from torch's initialisers), and the tokenizers are
kept in tests/data/llm2vec_replicas, so the replicas are identical in any environment: the official package's
embeddings of them (benchmarks/llm2vec_checkpoints.py --write-fixture) are checked in CI.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "data" / "llm2vec_replicas"
CORPUS = [Path(__file__).parent / "data" / "vocab_source.txt", Path(__file__).parents[1] / "src" / "l2v" / "data" / "demo_sentences.txt"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

TOKENIZERS = {
    # kind: (byte-level BPE?, BOS added in front, special tokens (bos, eos, pad/unk first), extra specials)
    "llama3": (True, "<|begin_of_text|>", ["<|begin_of_text|>", "<|end_of_text|>"],
               ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "llama2": (False, "<s>", ["<s>", "</s>", "<unk>"], []),
    "gemma2": (False, "<bos>", ["<bos>", "<eos>", "<pad>", "<unk>"], ["<start_of_turn>", "<end_of_turn>"]),
    "qwen2": (True, None, ["<|endoftext|>"], ["<|im_start|>", "<|im_end|>"]),
}


@dataclass(frozen=True)
class Replica:
    key: str
    family: str  # transformers model_type
    name_or_path: str  # the real checkpoint's config._name_or_path
    tokenizer: str
    config: dict  # transformers-4.4x config fields beyond the tiny common ones
    official: bool = True  # llm2vec 0.2.3 can load it bidirectionally (Gemma-2: no; Qwen2: stays causal)


COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256, rms_norm_eps=1e-5, hidden_act="silu", attention_dropout=0.0,
              initializer_range=0.02, torch_dtype="float32", use_cache=True)
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 32}

REPLICAS = {r.key: r for r in [
    Replica("llama3-8b-instruct", "llama", "meta-llama/Meta-Llama-3-8B-Instruct", "llama3",
            {"rope_theta": 500000.0, "tie_word_embeddings": False}),
    Replica("llama31-8b-instruct", "llama", "meta-llama/Meta-Llama-3.1-8B-Instruct", "llama3",
            {"rope_theta": 500000.0, "rope_scaling": LLAMA3_SCALING, "tie_word_embeddings": False}),
    Replica("llama32-3b-instruct", "llama", "meta-llama/Llama-3.2-3B-Instruct", "llama3",
            {"rope_theta": 500000.0, "rope_scaling": {**LLAMA3_SCALING, "factor": 32.0}, "tie_word_embeddings": True}),
    Replica("mistral-7b-instruct", "mistral", "mistralai/Mistral-7B-Instruct-v0.2", "llama2",
            {"rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False}),
    Replica("llama2-7b-chat", "llama", "meta-llama/Llama-2-7b-chat-hf", "llama2",
            {"rope_theta": 10000.0, "tie_word_embeddings": False}),
    Replica("sheared-llama-1.3b", "llama", "princeton-nlp/Sheared-LLaMA-1.3b", "llama2",
            {"rope_theta": 10000.0, "tie_word_embeddings": False}),
    Replica("gemma2-9b-it", "gemma2", "google/gemma-2-9b-it", "gemma2",
            {"head_dim": 8, "sliding_window": 64, "query_pre_attn_scalar": 8, "hidden_activation": "gelu_pytorch_tanh",
             "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "tie_word_embeddings": True,
             "rope_theta": 10000.0}, official=False),
    Replica("qwen2-7b-instruct", "qwen2", "Qwen/Qwen2-7B-Instruct", "qwen2",
            {"rope_theta": 1000000.0, "tie_word_embeddings": False}, official=False),
]}

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "gemma2": "Gemma2ForCausalLM",
                 "qwen2": "Qwen2ForCausalLM"}


def tokenizer_folder(kind: str, root: Path | None = None) -> Path:
    """The replica tokenizer of a kind: from the fixture when it is there, else trained (deterministically) into root."""
    fixed = FIXTURE / "tokenizers" / kind
    if (fixed / "tokenizer.json").exists():
        return fixed
    assert root is not None, f"no fixture tokenizer for {kind} and nowhere to train one"
    return train_tokenizer(kind, root / "tokenizers" / kind)


def train_tokenizer(kind: str, folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    byte_level, bos, specials, extra = TOKENIZERS[kind]
    tokenizer = Tokenizer(models.BPE(unk_token=None if byte_level else specials[-1]))
    if byte_level:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
        alphabet = []
    text = [line for path in CORPUS for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials + extra, initial_alphabet=alphabet,
                                  show_progress=False)
    tokenizer.train_from_iterator(text, trainer)
    if bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                                 special_tokens=[(bos, tokenizer.token_to_id(bos))])
    names = {"llama3": dict(bos_token=bos, eos_token="<|end_of_text|>"),
             "llama2": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
             "gemma2": dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"),
             "qwen2": dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")}[kind]
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, additional_special_tokens=extra, **names)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    from l2v.llm2vec_format import write_legacy_tokenizer

    write_legacy_tokenizer(folder, folder)  # one format both transformers 4.4x and 5.x read
    return folder


def _vocab_size(tokenizer_dir: Path) -> int:
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    ids = list(data["model"]["vocab"].values()) + [t["id"] for t in data.get("added_tokens", [])]
    return max(ids) + 1


def _legacy_base_config(replica: Replica, vocab_size: int, tokenizer_dir: Path) -> dict:
    special = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    ids = {t["content"]: t["id"] for t in special.get("added_tokens", [])}
    bos_token, _, specials, _ = TOKENIZERS[replica.tokenizer]
    return {"architectures": [ARCHITECTURES[replica.family]], "model_type": replica.family, "vocab_size": vocab_size,
            "bos_token_id": ids.get(bos_token) if bos_token else None, "eos_token_id": ids[specials[1] if len(specials) > 1 else specials[0]],
            **COMMON, **replica.config}


def _random_state(shapes: dict, seed: int, zero_centred_norms: bool = False) -> dict:
    import torch

    rng = np.random.default_rng(seed)
    state = {}
    for name in sorted(shapes):
        shape = shapes[name]
        values = rng.standard_normal(shape).astype(np.float32)
        if name.endswith("norm.weight"):
            values = 0.1 * values if zero_centred_norms else 1.0 + 0.1 * values  # Gemma norms scale by (1 + w)
        else:
            values = 0.15 * values
        state[name] = torch.from_numpy(values)
    return state


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_replica(key: str, root: Path) -> dict:
    """Write replica ``key`` under ``root``: base/, mntp/ (the published checkpoint), second/ (the second LoRA).
    Returns the paths and a digest of all weights."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    from l2v.llm2vec_format import write_adapter, write_checkpoint

    replica = REPLICAS[key]
    seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    root = Path(root) / key
    tokenizer_dir = tokenizer_folder(replica.tokenizer, root.parent)
    base_config = _legacy_base_config(replica, _vocab_size(tokenizer_dir), tokenizer_dir)
    base = root / "base"
    base.mkdir(parents=True, exist_ok=True)
    (base / "config.json").write_text(json.dumps(base_config, indent=2) + "\n", encoding="utf-8")
    config = transformers.AutoConfig.from_pretrained(base)
    with torch.device("meta"):
        causal = transformers.AutoModelForCausalLM.from_config(config)
    shapes = {name: tuple(p.shape) for name, p in causal.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    save_file(_random_state(shapes, seed, replica.family.startswith("gemma")), str(base / "model.safetensors"), metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).exists():
            (base / name).write_bytes((tokenizer_dir / name).read_bytes())
    adapters = {}
    for index, stage in enumerate(("mntp", "second")):
        backbone = transformers.AutoModel.from_pretrained(base, dtype=torch.float32)
        peft_model = get_peft_model(backbone, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS))
        lora = {n: tuple(p.shape) for n, p in peft_model.named_parameters() if "lora_" in n}
        values = _random_state(lora, seed + 1 + index)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if name in values:
                    parameter.copy_(values[name] * 0.5)
        folder = root / f"{stage}-adapter"
        peft_model.save_pretrained(folder, safe_serialization=True)
        adapters[stage] = folder
    mntp = write_checkpoint(root / "mntp", base=str(base.resolve()), base_config=base_config, adapter=adapters["mntp"],
                            tokenizer=tokenizer_dir, name_or_path=replica.name_or_path, overwrite=True)
    second = write_adapter(root / "second", adapter=adapters["second"], base=str(mntp.resolve()), overwrite=True)
    return {"key": key, "base": str(base), "mntp": str(mntp), "second": str(second),
            "digest": _digest(base) + _digest(mntp) + _digest(second)}


TEXTS = [
    "A man is playing a guitar.",
    "the cat sits on the mat while the dog sleeps",
    "  What is the capital of France?  ",
    "",
    "Scientists discovered a new species of frog in the rainforest, and " * 6 + "they named it.",
]
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query:"
POOLINGS = ["mean", "weighted_mean", "eos_token", "last_token"]
SETTINGS = dict(max_length=64, doc_max_length=40)


def cases() -> list[dict]:
    """Every (replica, pooling, instruction) combination the fixture holds."""
    return [{"replica": key, "pooling": pooling, "instruction": instruction}
            for key in REPLICAS for pooling in POOLINGS for instruction in ("", INSTRUCTION)]


def case_id(case: dict) -> str:
    return f"{case['replica']}|{case['pooling']}|{'instr' if case['instruction'] else 'plain'}"


def official_positions(layout: dict, pooling: str) -> list[int]:
    """The positions llm2vec pools, from the ids and embed_mask it builds for one text alone."""
    length, n = len(layout["input_ids"]), sum(layout["embed_mask"])
    if pooling in ("eos_token", "last_token"):
        return [length - 1]
    return list(range(length - n, length)) if n else list(range(length))


def l2v_positions(item, pooling: str) -> list[int]:
    if pooling in ("eos_token", "last_token"):
        return [len(item.input_ids) - 1]
    return [i for i, keep in enumerate(item.pooling_mask) if keep]


_ENCODERS: dict = {}


def l2v_encoder(paths: dict, pooling: str):
    from l2v import Encoder

    key = (paths["mntp"], pooling)
    if key not in _ENCODERS:
        _ENCODERS[key] = Encoder.from_pretrained(paths["mntp"], adapters=paths["second"], pooling=pooling, **SETTINGS)
    return _ENCODERS[key]


def l2v_outputs(paths: dict, case: dict) -> tuple[np.ndarray, np.ndarray, list]:
    """(each text encoded alone, all texts in one batch, the token layouts) from l2v, unnormalised like llm2vec."""
    encoder = l2v_encoder(paths, case["pooling"])
    pairs = [(case["instruction"], text) for text in TEXTS]
    alone = np.stack([encoder.encode([pair], normalize=False)[0] for pair in pairs])
    batch = encoder.encode(pairs, normalize=False)
    return alone, batch, encoder.tokenize(pairs)
