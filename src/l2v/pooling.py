"""Turn token states into one vector per text.

Every pooling is a small ``nn.Module`` with one interface::

    pooling(hidden_states [B, T, H], pooling_mask [B, T], attention_mask [B, T]) -> [B, H]

A pooling that reads a special token (EOS, BOS) also says where that token goes around a text:
``special_tokens(tokenizer, prefix, suffix) -> (prefix, suffix)``; the encoder lays out every input with it.

``attention_mask`` marks real tokens (1) versus padding (0). ``pooling_mask`` marks the tokens that may be
pooled: real text tokens, *not* instruction tokens (they attend and are attended to, but are not averaged) and
never padding. Everything is vectorised over the batch and independent of the padding side.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import L2VError


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    total = (hidden * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp(min=1.0)
    return total / count


def _without_first_position(pooling_mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``pooling_mask`` without each row's first real position (whatever the padding side), where that row has
    another pooled token left. A decoder's first position is often an attention sink whose state has a huge
    norm and carries little of the text (SmolLM2, without a BOS token, sinks on the text's first token)."""
    length = attention_mask.shape[1]
    positions = torch.arange(length, device=attention_mask.device).expand_as(attention_mask)
    first = torch.where(attention_mask.bool(), positions, length).min(dim=1).values
    is_first = positions == first.unsqueeze(1)
    trimmed = pooling_mask.masked_fill(is_first, 0)
    keep = trimmed.sum(dim=1, keepdim=True) > 0
    return torch.where(keep, trimmed, pooling_mask)


class MeanPooling(nn.Module):
    """The mean of the pooled tokens' states; ``skip_first_token`` leaves the sequence's first position out
    (an attention sink: see ``_without_first_position``). Off by default; saved with the encoder."""

    name = "mean"

    def __init__(self, skip_first_token: bool = False):
        super().__init__()
        if not isinstance(skip_first_token, bool):
            raise L2VError(f"pooling option skip_first_token must be true or false, got {skip_first_token!r}")
        self.skip_first_token = skip_first_token

    def config(self) -> dict:
        return {"skip_first_token": True} if self.skip_first_token else {}

    def _mask(self, pooling_mask, attention_mask):
        return _without_first_position(pooling_mask, attention_mask) if self.skip_first_token else pooling_mask

    def forward(self, hidden_states, pooling_mask, attention_mask):
        return _masked_mean(hidden_states, self._mask(pooling_mask, attention_mask))


class WeightedMeanPooling(MeanPooling):
    """Position-weighted mean (SGPT): the i-th pooled token has weight i, so later tokens - which have seen
    more of the text in a causal model - count more. ``skip_first_token`` as for ``mean``."""

    name = "weighted_mean"

    def forward(self, hidden_states, pooling_mask, attention_mask):
        mask = self._mask(pooling_mask, attention_mask).to(hidden_states.dtype)
        weights = mask.cumsum(dim=1) * mask
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
        return (hidden_states * weights.unsqueeze(-1)).sum(dim=1)


def _gather_position(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, index]


class LastTokenPooling(nn.Module):
    """The state of the last real token."""

    name = "last_token"

    def forward(self, hidden_states, pooling_mask, attention_mask):
        length = attention_mask.shape[1]
        positions = torch.arange(length, device=attention_mask.device).expand_as(attention_mask)
        last = torch.where(attention_mask.bool(), positions, -1).max(dim=1).values
        return _gather_position(hidden_states, last)


class EosTokenPooling(LastTokenPooling):
    """The state of an EOS token appended after the text (the tokenizer's own, when it does not end in one)."""

    name = "eos_token"

    def special_tokens(self, tokenizer, prefix: list[int], suffix: list[int]) -> tuple[list[int], list[int]]:
        if tokenizer.eos_token_id is None:
            raise L2VError("pooling 'eos_token' needs a tokenizer with an EOS token; this one has none")
        if not suffix or suffix[-1] != tokenizer.eos_token_id:
            suffix = suffix + [tokenizer.eos_token_id]
        return prefix, suffix


class FirstTokenPooling(nn.Module):
    """The state of the first real token: a BOS token put before the text (when the tokenizer does not)."""

    name = "bos_token"

    def special_tokens(self, tokenizer, prefix: list[int], suffix: list[int]) -> tuple[list[int], list[int]]:
        if tokenizer.bos_token_id is None:
            raise L2VError("pooling 'bos_token' needs a tokenizer with a BOS token; this one has none")
        if tokenizer.bos_token_id not in prefix:
            prefix = [tokenizer.bos_token_id] + prefix
        return prefix, suffix

    def forward(self, hidden_states, pooling_mask, attention_mask):
        length = attention_mask.shape[1]
        positions = torch.arange(length, device=attention_mask.device).expand_as(attention_mask)
        first = torch.where(attention_mask.bool(), positions, length).min(dim=1).values
        return _gather_position(hidden_states, first)


class LatentAttentionPooling(nn.Module):
    """NV-Embed's latent attention layer (Lee et al., 2024): token states are queries over a trainable latent
    array (keys = values = latents), followed by an MLP, both with residual connections; then a masked mean.
    Its weights are trained with the encoder and saved with it."""

    name = "latent_attention"

    def __init__(self, hidden_size: int, num_latents: int = 512, num_heads: int = 8, mlp_ratio: int = 4):
        super().__init__()
        if hidden_size % num_heads:
            raise L2VError(f"latent_attention: hidden size {hidden_size} is not divisible by num_heads={num_heads}")
        self.hidden_size, self.num_latents, self.num_heads, self.mlp_ratio = hidden_size, num_latents, num_heads, mlp_ratio
        self.latents = nn.Parameter(torch.randn(num_latents, hidden_size) / math.sqrt(hidden_size))
        self.attention_norm = nn.LayerNorm(hidden_size)
        self.query = nn.Linear(hidden_size, hidden_size, bias=False)
        self.key = nn.Linear(hidden_size, hidden_size, bias=False)
        self.value = nn.Linear(hidden_size, hidden_size, bias=False)
        self.output = nn.Linear(hidden_size, hidden_size, bias=False)
        self.mlp_norm = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_ratio * hidden_size), nn.GELU(), nn.Linear(mlp_ratio * hidden_size, hidden_size)
        )

    def config(self) -> dict:
        return {"num_latents": self.num_latents, "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio}

    def forward(self, hidden_states, pooling_mask, attention_mask):
        dtype = hidden_states.dtype
        hidden = hidden_states.to(self.latents.dtype)
        batch, length, size = hidden.shape
        head_dim = size // self.num_heads
        normed = self.attention_norm(hidden)
        query = self.query(normed).view(batch, length, self.num_heads, head_dim).transpose(1, 2)
        key = self.key(self.latents).view(1, self.num_latents, self.num_heads, head_dim).transpose(1, 2)
        value = self.value(self.latents).view(1, self.num_latents, self.num_heads, head_dim).transpose(1, 2)
        attended = nn.functional.scaled_dot_product_attention(
            query, key.expand(batch, -1, -1, -1), value.expand(batch, -1, -1, -1)
        )
        hidden = hidden + self.output(attended.transpose(1, 2).reshape(batch, length, size))
        hidden = hidden + self.mlp(self.mlp_norm(hidden))
        return _masked_mean(hidden, pooling_mask).to(dtype)


POOLING_MODES = {
    "mean": MeanPooling,
    "weighted_mean": WeightedMeanPooling,
    "eos_token": EosTokenPooling,
    "last_token": LastTokenPooling,
    "bos_token": FirstTokenPooling,
    "latent_attention": LatentAttentionPooling,
}
ALIASES = {"eos": "eos_token", "last": "last_token", "bos": "bos_token", "cls": "bos_token", "latent": "latent_attention"}


def canonical_pooling(name: str) -> str:
    if not isinstance(name, str):
        raise L2VError(f"pooling must be a string, got {type(name).__name__}")
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in POOLING_MODES:
        raise L2VError(f"unknown pooling {name!r}; choose one of: {', '.join(POOLING_MODES)}")
    return key


def build_pooling(name: str, hidden_size: int, options: dict | None = None) -> nn.Module:
    key = canonical_pooling(name)
    options = dict(options or {})
    if key == "latent_attention":
        module = LatentAttentionPooling(hidden_size, **options)
    elif key in ("mean", "weighted_mean"):
        unknown = sorted(set(options) - {"skip_first_token"})
        if unknown:
            raise L2VError(f"pooling {key!r}: unknown option(s) {unknown}; it takes skip_first_token")
        module = POOLING_MODES[key](**options)
    else:
        if options:
            raise L2VError(f"pooling {key!r} takes no options, got {sorted(options)}")
        module = POOLING_MODES[key]()
    module.mode = key
    return module
