"""The official ``llm2vec`` package's formats: its checkpoint layout (read and written), its text preparation,
and the encoders the LLM2Vec authors published on the Hugging Face hub.

**Layout.** A published ``McGill-NLP/LLM2Vec-<base>-mntp`` repo holds the base model's ``config.json`` (whose
``_name_or_path`` names the base, with an ``auto_map`` to custom modeling code l2v never runs),
``adapter_config.json`` (``base_model_name_or_path``: where the base weights come from), the MNTP LoRA in
``adapter_model.safetensors`` and the tokenizer; no base weights. A second repo (``-mntp-supervised``,
``-mntp-unsup-simcse``) holds one more LoRA. llm2vec 0.2.3 always merges the MNTP LoRA and applies the second.

**Text preparation** (llm2vec 0.2.3, ``LLM2Vec._convert_to_str``, ``prepare_for_tokenization`` and ``tokenize``):
a text longer than ``doc_max_length`` tokens is first cut to ``int(words * doc_max_length / tokens)`` words;
``instruction.strip() + " " + SEP + text`` (``SEP + text`` without instruction) is wrapped in the chat template
chosen by the exact ``config._name_or_path`` of the checkpoint, the separator removed, and the whole string
tokenised with special tokens; the pooled span is the last N tokens, N being the length of the part after the
separator tokenised alone. BOS, instruction and the template's opening are attended to but not pooled.
``eos_token`` pooling appends a family-specific EOS *string* before tokenising.

l2v reproduces the official embedding of a text encoded alone: the official package pads on the left with
positions 0..T-1 over the padded row, so there a text's embedding depends on its batch; l2v's does not.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import L2VError, ModelNotFoundError

SEPARATOR = "!@#$%^&*()"
DEFAULTS = {"pooling_mode": "mean", "max_length": 512, "doc_max_length": 400, "skip_instruction": True}
LLM2VEC_CONFIG = "llm2vec_config.json"
# The pooling modes llm2vec 0.2.3 knows, and the model families it can make bidirectional (by config class).
OFFICIAL_POOLINGS = ("mean", "weighted_mean", "eos_token", "last_token", "bos_token")
OFFICIAL_FAMILIES = ("llama", "mistral", "gemma", "qwen2")


@dataclass(frozen=True)
class ChatWrapper:
    prefix: str
    suffix: str
    skip_eos: bool = False  # llm2vec returns before appending the EOS string (Meta-Llama-3-8B-Instruct only)


_INST = ChatWrapper("[INST] ", " [/INST]")
# Keyed on the exact config._name_or_path, as the official package keys them.
CHAT_WRAPPERS: dict[str, ChatWrapper] = {
    "meta-llama/Meta-Llama-3-8B-Instruct": ChatWrapper("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>", skip_eos=True),
    "mistralai/Mistral-7B-Instruct-v0.2": _INST,
    "meta-llama/Llama-2-7b-chat-hf": _INST,
    "google/gemma-2-9b-it": ChatWrapper("<bos><start_of_turn>user\n", "<end_of_turn>"),
    "Qwen/Qwen2-1.5B-Instruct": ChatWrapper("<|im_start|>user\n", "<|im_end|>"),
    "Qwen/Qwen2-7B-Instruct": ChatWrapper("<|im_start|>user\n", "<|im_end|>"),
}
# Bases the authors trained on that get no template (known, so they draw no warning).
UNWRAPPED_BASES = {
    "meta-llama/Meta-Llama-3.1-8B-Instruct",
    "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Llama-3.2-3B-Instruct",
    "meta-llama/Llama-3.2-1B-Instruct",
    "meta-llama/Llama-3.2-3B",
    "meta-llama/Llama-3.2-1B",
    "meta-llama/Meta-Llama-3-8B",
    "princeton-nlp/Sheared-LLaMA-1.3b",
    "princeton-nlp/Sheared-LLaMA-1.3B",
    "princeton-nlp/Sheared-LLaMA-2.7b",
}


def eos_string(name_or_path: str, family: str, tokenizer) -> str:
    """What llm2vec appends (after ``strip()``) for ``eos_token`` pooling: by checkpoint name, then config class;
    nothing for other classes (Gemma-2's config is not a Gemma config there), so the last text token is pooled."""
    if name_or_path == "meta-llama/Meta-Llama-3-8B":
        return "<|end_of_text|>"
    if family in ("llama", "mistral"):
        return " </s>"
    if family == "gemma":
        return "<eos>"
    if family == "qwen2":
        return "<|endoftext|>"
    return ""


_warned_names: set[str] = set()


def chat_wrapper(name_or_path: str | None) -> ChatWrapper | None:
    """The template llm2vec 0.2.3 uses for a checkpoint name; an unknown name is warned about once (no template,
    as the official rule)."""
    key = name_or_path or ""
    if key in CHAT_WRAPPERS:
        return CHAT_WRAPPERS[key]
    if key not in UNWRAPPED_BASES and key not in _warned_names:
        _warned_names.add(key)
        warnings.warn(
            f"llm2vec text format: no chat template is known for {key!r} (config._name_or_path); following llm2vec "
            "0.2.3, texts are encoded without one", stacklevel=3)
    return None


def official_string(instruction: str, text: str, name_or_path: str | None, pooling: str, family: str,
                    tokenizer, max_length: int, doc_max_length: int) -> tuple[str, str]:
    """(the whole string llm2vec tokenises, the part after its separator), for one (instruction, text) pair."""
    text = cut_document(text, tokenizer, max_length, doc_max_length)
    joined = f"{instruction.strip()} {SEPARATOR}{text}" if instruction else f"{SEPARATOR}{text}"
    wrapper = chat_wrapper(name_or_path)
    if wrapper is not None:
        joined = wrapper.prefix + joined.strip() + wrapper.suffix
    if pooling == "eos_token" and not (wrapper is not None and wrapper.skip_eos):
        joined = joined.strip() + eos_string(name_or_path or "", family, tokenizer)
    parts = joined.split(SEPARATOR)
    return "".join(parts), (parts[1] if len(parts) > 1 else "")


def cut_document(text: str, tokenizer, max_length: int, doc_max_length: int) -> str:
    """llm2vec's document cut: while the text (truncated at ``max_length``) is over ``doc_max_length`` tokens,
    keep ``int(words * doc_max_length / tokens)`` words."""
    count = len(tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"])
    while count > doc_max_length:
        words = text.split()
        text = " ".join(words[: int(len(words) * doc_max_length / count)])
        count = len(tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"])
    return text


def layout(pairs: Sequence[tuple[str, str]], tokenizer, *, name_or_path: str | None, pooling: str, family: str,
           max_length: int, doc_max_length: int, skip_instruction: bool) -> list[tuple[list[int], list[int], bool]]:
    """Token ids, pooling mask and whether it was truncated, for each pair, as llm2vec lays out one text alone.

    The mask marks what llm2vec pools: the last N tokens (N = the text part alone) for mean and weighted mean;
    all tokens without ``skip_instruction`` or when N is 0 (llm2vec's ``[-0:]``); the last token for
    eos/last_token; the BOS token for bos_token (l2v's poolings read the same positions from it).
    """
    strings = [official_string(i, t, name_or_path, pooling, family, tokenizer, max_length, doc_max_length) for i, t in pairs]
    wholes = [s for s, _ in strings]
    full = tokenizer(wholes, truncation=True, max_length=max_length)["input_ids"] if wholes else []
    parts = tokenizer([p for _, p in strings], add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"] if wholes else []
    # only a text that fills max_length can have been cut: tokenise just those again, whole
    full_length = [i for i, ids in enumerate(full) if len(ids) == max_length]
    cut = {i for i, ids in zip(full_length, tokenizer([wholes[i] for i in full_length])["input_ids"] if full_length else [])
           if len(ids) > max_length}
    result = []
    for index, (ids, part_ids) in enumerate(zip(full, parts)):
        ids = list(ids)
        if not ids:
            raise L2VError(f"input {index}: the tokenizer gives no tokens for it, and llm2vec has nothing to pool")
        n = min(len(part_ids), len(ids))
        if pooling == "bos_token":
            if tokenizer.bos_token_id is None or ids[0] != tokenizer.bos_token_id or ids.count(tokenizer.bos_token_id) > 1:
                raise L2VError(f"input {index}: pooling 'bos_token' in the llm2vec format needs exactly one BOS token, "
                               "at the start of the input (llm2vec pools every BOS it finds); this tokenizer and template "
                               "do not give that")
            ids_mask = [1] + [0] * (len(ids) - 1)
        elif not skip_instruction or n == 0:
            ids_mask = [1] * len(ids)
        else:
            ids_mask = [0] * (len(ids) - n) + [1] * n
        result.append((ids, ids_mask, index in cut))
    return result


def mteb_instructions() -> dict[str, str]:
    """The LLM2Vec authors' MTEB instructions, by MTEB task name (shipped as data: l2v/data/README.md cites it)."""
    return dict(_read_mteb_instructions())


@functools.lru_cache(maxsize=1)
def _read_mteb_instructions() -> dict[str, str]:
    path = Path(__file__).resolve().parent / "data" / "llm2vec_mteb_instructions.json"
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------- reading a checkpoint folder
@dataclass
class Checkpoint:
    """A folder in the published layout: an MNTP LoRA beside the base model's config, no base weights."""

    folder: Path
    base: str  # adapter_config.json's base_model_name_or_path
    name_or_path: str  # the key for the text preparation (config.json's _name_or_path, else the base)
    options: dict  # llm2vec_config.json, if any


def is_checkpoint(folder: Path) -> bool:
    """A folder llm2vec would treat as an adapter checkpoint: ``adapter_config.json`` and no l2v config."""
    return (folder / "adapter_config.json").exists() and not (folder / "l2v_config.json").exists()


def read_checkpoint(folder: Path) -> Checkpoint:
    folder = Path(folder)
    adapter_config = read_json(folder / "adapter_config.json")
    base = adapter_config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base.strip():
        raise L2VError(f"{folder / 'adapter_config.json'}: no base_model_name_or_path, so the base weights cannot be found")
    name = base
    if (folder / "config.json").exists():
        name = read_json(folder / "config.json").get("_name_or_path") or base
    options = read_options(folder)
    return Checkpoint(folder, base, name, options)


def read_options(folder: Path | None) -> dict:
    """``llm2vec_config.json`` (pooling_mode, max_length, doc_max_length, skip_instruction), checked."""
    if folder is None or not (Path(folder) / LLM2VEC_CONFIG).exists():
        return {}
    path = Path(folder) / LLM2VEC_CONFIG
    data = read_json(path)
    unknown = set(data) - set(DEFAULTS)
    if unknown:
        raise L2VError(f"{path}: unknown keys {sorted(unknown)} (llm2vec knows {', '.join(DEFAULTS)})")
    return data


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise L2VError(f"{path}: cannot read it as JSON ({error})") from None
    if not isinstance(data, dict):
        raise L2VError(f"{path}: expected a JSON object")
    return data


# ---------------------------------------------------------------------- hub
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", LLM2VEC_CONFIG, "README.md"]
CHECKPOINT_FILES = [*ADAPTER_FILES, "config.json", "tokenizer*", "special_tokens_map.json", "*.model", "vocab*", "merges.txt",
                    "added_tokens.json", "generation_config.json"]


def fetch_adapter_repo(repo: str, checkpoint: bool = False) -> Path:
    """A hub adapter repo (or a published ``-mntp`` checkpoint) as a local folder: configs, safetensors and tokenizer
    files only (never the repo's modeling code or pickles)."""
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    try:
        folder = Path(snapshot_download(repo, allow_patterns=CHECKPOINT_FILES if checkpoint else ADAPTER_FILES,
                                        local_files_only=offline))
    except Exception as error:  # noqa: BLE001 - the hub client raises many kinds; one line names the repo
        raise ModelNotFoundError(f"adapter repo {repo!r} could not be fetched from the Hugging Face hub: "
                                 f"{_first_line(error)}") from None
    if not (folder / "adapter_model.safetensors").exists():
        raise L2VError(f"adapter repo {repo!r} has no adapter_model.safetensors; l2v loads safetensors only "
                       "(a pickled adapter_model.bin is not loaded)")
    return folder


def hub_has_adapter(repo: str) -> bool:
    from huggingface_hub import file_exists

    try:
        return bool(file_exists(repo, "adapter_config.json"))
    except Exception:  # noqa: BLE001 - unreachable, gated or missing: the normal loader reports it
        return False


def gated_message(base: str, error: BaseException, checkpoint: Path | None = None) -> str | None:
    """A clear message when the hub refuses a gated base model, else None."""
    text = f"{type(error).__name__}: {error}"
    if "gated" not in text.lower() and "GatedRepoError" not in text:
        return None
    named = f" (named by {checkpoint / 'adapter_config.json'})" if checkpoint else ""
    return (f"base model {base!r}{named} is gated on the Hugging Face hub: accept its licence at "
            f"https://huggingface.co/{base} with your account, then log in here (`hf auth login`, or set HF_TOKEN)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---------------------------------------------------------------------- the published encoders
@dataclass(frozen=True)
class Published:
    name: str
    checkpoint: str  # the -mntp repo
    adapter: str | None  # the second repo
    base: str
    licence: str
    gated: bool
    description: str


_LLAMA3 = "Meta Llama 3 Community License"
_PUBLISHED_BASES = [
    # short stem, repo stem, base, licence, gated, description
    ("llama3-8b-instruct", "LLM2Vec-Meta-Llama-3-8B-Instruct", "meta-llama/Meta-Llama-3-8B-Instruct", _LLAMA3, True, "Meta-Llama-3-8B-Instruct"),
    ("llama31-8b-instruct", "LLM2Vec-Meta-Llama-31-8B-Instruct", "meta-llama/Meta-Llama-3.1-8B-Instruct", "Llama 3.1 Community License", True, "Meta-Llama-3.1-8B-Instruct"),
    ("llama32-3b-instruct", "LLM2Vec-Meta-Llama-32-3B-Instruct", "meta-llama/Llama-3.2-3B-Instruct", "Llama 3.2 Community License", True, "Llama-3.2-3B-Instruct"),
    ("mistral-7b-instruct", "LLM2Vec-Mistral-7B-Instruct-v2", "mistralai/Mistral-7B-Instruct-v0.2", "Apache-2.0", True, "Mistral-7B-Instruct-v0.2"),
    ("llama2-7b-chat", "LLM2Vec-Llama-2-7b-chat-hf", "meta-llama/Llama-2-7b-chat-hf", "Llama 2 Community License", True, "Llama-2-7b-chat-hf"),
    ("sheared-llama-1.3b", "LLM2Vec-Sheared-LLaMA", "princeton-nlp/Sheared-LLaMA-1.3b", "Apache-2.0", False, "Sheared-LLaMA-1.3B"),
]
PUBLISHED: dict[str, Published] = {}
for _stem, _repo, _base, _licence, _gated, _what in _PUBLISHED_BASES:
    _mntp = f"McGill-NLP/{_repo}-mntp"
    PUBLISHED[f"llm2vec-{_stem}-mntp"] = Published(f"llm2vec-{_stem}-mntp", _mntp, None, _base, _licence, _gated,
                                                  f"LLM2Vec {_what}: bidirectional + MNTP (authors' checkpoint)")
    PUBLISHED[f"llm2vec-{_stem}-sup"] = Published(f"llm2vec-{_stem}-sup", _mntp, f"{_mntp}-supervised", _base, _licence, _gated,
                                                 f"LLM2Vec {_what}: + MNTP + supervised contrastive (authors' checkpoint)")
    PUBLISHED[f"llm2vec-{_stem}-unsup"] = Published(f"llm2vec-{_stem}-unsup", _mntp, f"{_mntp}-unsup-simcse", _base, _licence, _gated,
                                                   f"LLM2Vec {_what}: + MNTP + unsupervised SimCSE (authors' checkpoint)")


def cached(repo: str, filename: str = "config.json") -> bool:
    """Whether a hub file is in the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, filename)
    except Exception:  # noqa: BLE001
        return False
    return isinstance(found, str)


def cache_status(spec: Published) -> str:
    parts = [("checkpoint", cached(spec.checkpoint, "adapter_model.safetensors"))]
    if spec.adapter:
        parts.append(("adapter", cached(spec.adapter, "adapter_model.safetensors")))
    parts.append(("base", cached(spec.base, "model.safetensors.index.json") or cached(spec.base, "model.safetensors")))
    if all(ok for _, ok in parts):
        return "in the hub cache"
    return "not cached: " + ", ".join(name for name, ok in parts if not ok) + " (downloaded on first use)"


# ---------------------------------------------------------------------- writing folders the official package reads
def legacy_config(config: dict, name_or_path: str | None = None) -> dict:
    """A transformers-5 config.json as transformers 4.4x (llm2vec 0.2.3's stack) reads it: ``rope_theta`` and
    ``rope_scaling`` at the top instead of ``rope_parameters``, ``torch_dtype`` instead of ``dtype``."""
    config = dict(config)
    rope = dict(config.pop("rope_parameters", None) or {})
    if "rope_theta" in rope:
        config["rope_theta"] = rope.pop("rope_theta")
    if rope and rope.get("rope_type", "default") != "default":
        config["rope_scaling"] = rope
    if "dtype" in config:
        config["torch_dtype"] = config.pop("dtype")
    if name_or_path is not None:
        config["_name_or_path"] = name_or_path
    return config


def write_legacy_tokenizer(source: Path, target: Path) -> None:
    """Tokenizer files that transformers 4.4x reads: BPE merges as "a b" strings, the fast tokenizer class."""
    tokenizer = read_json(source / "tokenizer.json")
    merges = tokenizer.get("model", {}).get("merges")
    if merges and isinstance(merges[0], list):
        tokenizer["model"]["merges"] = [" ".join(pair) for pair in merges]
    (target / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    tokenizer_config = read_json(source / "tokenizer_config.json")
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer_config["model_input_names"] = ["input_ids", "attention_mask"]
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    for name in ("special_tokens_map.json",):
        if (source / name).exists():
            shutil.copy2(source / name, target / name)


def options_of(encoder) -> dict:
    config = encoder.config
    return {"pooling_mode": config.pooling, "max_length": config.max_length,
            "doc_max_length": config.doc_max_length, "skip_instruction": config.skip_instruction}


def check_exportable(encoder) -> None:
    """Refuse what the official package would encode differently from l2v."""
    from .bidirectional import model_family

    family = model_family(encoder.model)
    if family not in OFFICIAL_FAMILIES:
        raise L2VError(f"--format llm2vec: llm2vec 0.2.3 makes only {', '.join(OFFICIAL_FAMILIES)} models bidirectional; "
                       f"this encoder is {family!r}")
    if family == "qwen2":
        raise L2VError("--format llm2vec: llm2vec 0.2.3's Qwen2 model stays causal under eager and SDPA attention, so it "
                       "would not give this encoder's embeddings")
    if encoder.config.pooling not in OFFICIAL_POOLINGS:
        raise L2VError(f"--format llm2vec: llm2vec 0.2.3 has no {encoder.config.pooling!r} pooling")
    if encoder.config.pooling_options.get("skip_first_token"):
        raise L2VError("--format llm2vec: llm2vec 0.2.3 pools every text token; this encoder's pooling leaves the first "
                       "position out (skip_first_token)")
    if not encoder.config.bidirectional:
        raise L2VError("--format llm2vec: the encoder is causal; llm2vec's folders load bidirectional")
    if encoder.config.text_format != "llm2vec" and encoder.config.pooling in ("eos_token", "bos_token"):
        raise L2VError(f"--format llm2vec: with {encoder.config.pooling!r} pooling, llm2vec lays the special token out "
                       "by its own rule; load the encoder with text_format='llm2vec' first so both agree")


ARCHITECTURE_PREFIX = {"llama": "Llama", "mistral": "Mistral", "gemma": "Gemma", "gemma2": "Gemma2", "qwen2": "Qwen2"}


def write_checkpoint(output: str | Path, *, base: str, base_config: dict, adapter: str | Path, tokenizer: str | Path,
                     name_or_path: str, options: dict | None = None, overwrite: bool = False) -> Path:
    """Write an MNTP LoRA in the published ``-mntp`` layout (atomically): the base's config.json with
    ``_name_or_path`` and the encoder architecture the authors' repos declare, ``adapter_config.json`` pointing at
    ``base``, the adapter weights and the tokenizer, all readable by transformers 4.4x and 5.x; no base weights."""
    from .fileio import atomic_dir

    adapter, tokenizer = Path(adapter), Path(tokenizer)
    with atomic_dir(Path(output), overwrite=overwrite) as tmp:
        config = legacy_config(base_config, name_or_path)
        prefix = ARCHITECTURE_PREFIX.get(config.get("model_type", ""), str(config.get("model_type", "")).capitalize())
        config["architectures"] = [f"{prefix}EncoderModel"]
        config["auto_map"] = {"AutoModel": f"modeling_{config.get('model_type')}_encoder.{prefix}EncoderModel"}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        _write_adapter_files(adapter, tmp, base)
        write_legacy_tokenizer(tokenizer, tmp)
        if options:
            (tmp / LLM2VEC_CONFIG).write_text(json.dumps(options, indent=4) + "\n", encoding="utf-8")
    return Path(output)


def write_adapter(output: str | Path, *, adapter: str | Path, base: str, options: dict | None = None,
                  overwrite: bool = False) -> Path:
    """Write a second-stage LoRA as the authors' ``-mntp-supervised`` / ``-mntp-unsup-simcse`` repos hold it."""
    from .fileio import atomic_dir

    with atomic_dir(Path(output), overwrite=overwrite) as tmp:
        _write_adapter_files(Path(adapter), tmp, base)
        if options:
            (tmp / LLM2VEC_CONFIG).write_text(json.dumps(options, indent=4) + "\n", encoding="utf-8")
    return Path(output)


def _write_adapter_files(adapter: Path, target: Path, base: str) -> None:
    if not (adapter / "adapter_model.safetensors").exists():
        raise L2VError(f"{adapter}: no adapter_model.safetensors to write")
    adapter_config = read_json(adapter / "adapter_config.json")
    adapter_config["base_model_name_or_path"] = base
    (target / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n", encoding="utf-8")
    shutil.copy2(adapter / "adapter_model.safetensors", target / "adapter_model.safetensors")
