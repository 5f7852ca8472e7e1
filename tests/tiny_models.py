"""Tiny random decoder models built from configs, as transformers' own tests do: no download, < 1 s each."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

TINY_COMMON = dict(
    vocab_size=320,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": 64}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 8}),
    "gemma": ("GemmaConfig", {"head_dim": 8}),
    "gemma2": ("Gemma2Config", {"head_dim": 8, "sliding_window": 4}),
    "gemma3": ("Gemma3TextConfig", {"head_dim": 8, "sliding_window": 4}),
    "phi3": ("Phi3Config", {}),
}


def tiny_config(family: str, attn_implementation: str = "sdpa"):
    class_name, extra = FAMILIES[family]
    config = getattr(transformers, class_name)(**{**TINY_COMMON, **extra})
    config._attn_implementation = attn_implementation
    return config


def tiny_backbone(family: str, attn_implementation: str = "sdpa", seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(tiny_config(family, attn_implementation))
    return model.eval()


def write_tiny_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over a small vocabulary, saved as a fast tokenizer (tokenizer.json)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [w.strip(".,!?").lower() for w in (Path(__file__).parent / "data" / "vocab_source.txt").read_text().split()]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for word in sorted(set(words)):
        if word and word not in vocab and len(vocab) < TINY_COMMON["vocab_size"]:
            vocab[word] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)


def save_tiny_causal_lm(folder: Path, family: str = "llama", attn_implementation: str = "sdpa", seed: int = 0) -> Path:
    """A tiny random causal LM with a tokenizer, saved as a Hugging Face folder."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(family, attn_implementation))
    model.save_pretrained(folder)
    write_tiny_tokenizer(folder)
    return folder
