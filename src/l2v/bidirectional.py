"""Step 1 of LLM2Vec: let every token attend to every other token.

One generic mechanism for every decoder family, no copied modeling files:

1. transformers 5 builds attention masks in ``masking_utils``; when ``config.is_causal`` is False it builds a
   bidirectional (padding-only) mask instead of a causal one. That alone is not enough: when a batch has no
   padding the mask builder returns ``None`` and the SDPA / flash kernels then fall back to the attention
   module's own ``is_causal`` flag, which is True. So we also clear ``is_causal`` on every attention module.
2. A family whose modeling code ignores ``config.is_causal`` (older or custom code) gets a ready 4-D padding
   mask, which transformers passes through unchanged (mode ``"mask4d"``).
3. Either way the result is *checked*: changing the last token must change the first token's hidden state.
   If neither mode passes, loading fails with an error naming the family - never a silently causal encoder.

Position ids are always computed from the attention mask, so a text gets the same positions whether it is
alone, right-padded or left-padded in a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UnsupportedModelError

@dataclass(frozen=True)
class AttentionState:
    """How a backbone's attention is run: held by the :class:`~l2v.encoder.Encoder` (not by the transformers
    model) and passed to :func:`model_inputs` for every forward."""

    bidirectional: bool
    mode: str  # "config" (library mechanism), "mask4d" (generic fallback) or "causal"
    family: str


CAUSAL = "causal"


def model_family(model) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", None) or type(model).__name__)


def attention_configs(model):
    """The model's config and any nested text/decoder configs (multimodal wrappers keep one inside)."""
    seen, stack = [], [model.config]
    while stack:
        config = stack.pop()
        if config is None or any(config is s for s in seen):
            continue
        seen.append(config)
        for name in ("text_config", "decoder", "language_config"):
            stack.append(getattr(config, name, None))
    return seen


def _set_flags(model, bidirectional: bool) -> None:
    for config in attention_configs(model):
        if not hasattr(config, "_l2v_original_is_causal"):
            config._l2v_original_is_causal = config.__dict__.get("is_causal", None)
        if bidirectional:
            config.is_causal = False
        elif config._l2v_original_is_causal is None:
            config.__dict__.pop("is_causal", None)
        else:
            config.is_causal = config._l2v_original_is_causal
    for module in model.modules():
        flag = module.__dict__.get("is_causal")
        if isinstance(flag, bool):
            if not hasattr(module, "_l2v_original_is_causal"):
                module._l2v_original_is_causal = flag
            module.is_causal = False if bidirectional else module._l2v_original_is_causal


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0..n-1 over each row's real tokens, whichever side the padding is on."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def padding_mask_4d(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (batch, 1, query, key) mask that hides padding keys only: a bidirectional mask."""
    keep = attention_mask.bool()[:, None, None, :]
    mask = torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device)
    mask = mask.masked_fill(~keep, torch.finfo(dtype).min)
    return mask.expand(-1, 1, attention_mask.shape[-1], -1)


def model_inputs(state: AttentionState, model, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                 inputs_embeds: torch.Tensor | None = None) -> dict:
    """Keyword arguments for the backbone's forward that realise the attention ``state`` (token ids, or input
    embeddings in their place)."""
    inputs = {
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
        "use_cache": False,
    }
    if inputs_embeds is not None:
        inputs["inputs_embeds"] = inputs_embeds
    else:
        inputs["input_ids"] = input_ids
    if state.bidirectional and state.mode == "mask4d":
        inputs["attention_mask"] = padding_mask_4d(attention_mask, _float_dtype(model))
    return inputs


def _float_dtype(model) -> torch.dtype:
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


def _probe_ids(model, length: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    vocab = int(getattr(model.config, "vocab_size", None) or model.get_input_embeddings().num_embeddings)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    low = min(100, vocab // 4)  # stay clear of special tokens, which usually sit at the start of the vocabulary
    ids = torch.randint(low, vocab, (1, length), generator=generator)
    changed = ids.clone()
    changed[0, -1] = low + (int(ids[0, -1]) - low + 1 + vocab // 3) % (vocab - low)
    return ids.to(device), changed.to(device)


def _first_position_state(model, state: AttentionState, input_ids: torch.Tensor, padded_batch: bool) -> torch.Tensor:
    attention_mask = torch.ones_like(input_ids)
    if padded_batch:
        # A second, padded row forces the mask to be materialised; without padding transformers may hand the
        # kernel no mask at all. Both paths must be bidirectional.
        input_ids = torch.cat([input_ids, input_ids])
        attention_mask = torch.cat([attention_mask, attention_mask])
        attention_mask[1, -2:] = 0
    with torch.inference_mode():
        output = model(**model_inputs(state, model, input_ids, attention_mask))
    hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
    return hidden[0, 0].float()


def _padding_is_hidden(model, state: AttentionState, input_ids: torch.Tensor) -> bool:
    """A right-padded row must equal the same tokens run alone: padding keys are masked out."""
    short = input_ids[:, :-2]
    padded_ids = torch.cat([input_ids, input_ids])
    mask = torch.ones_like(padded_ids)
    mask[1, -2:] = 0
    with torch.inference_mode():
        padded = model(**model_inputs(state, model, padded_ids, mask))
        alone = model(**model_inputs(state, model, short, torch.ones_like(short)))
    padded = (padded.last_hidden_state if hasattr(padded, "last_hidden_state") else padded[0])[1, :-2].float()
    alone = (alone.last_hidden_state if hasattr(alone, "last_hidden_state") else alone[0])[0].float()
    scale = alone.abs().max().clamp(min=1e-6)
    return bool(((padded - alone).abs().max() / scale) < 1e-2)


def is_bidirectional(model, state: AttentionState) -> bool:
    """Empirical check: run with ``state``, does the first position see the last token, with and without padding
    in the batch, while padding stays hidden?"""
    ids, changed = _probe_ids(model)
    was_training = model.training
    model.eval()
    try:
        for padded_batch in (False, True):
            first = _first_position_state(model, state, ids, padded_batch)
            second = _first_position_state(model, state, changed, padded_batch)
            scale = first.abs().max().clamp(min=1e-6)
            if not bool(((first - second).abs().max() / scale) > 1e-5):
                return False
        if not _padding_is_hidden(model, state, ids):
            return False
    finally:
        model.train(was_training)
    return True


def set_attention(model, bidirectional: bool = True, verify: bool = True) -> AttentionState:
    """Make ``model`` (a transformers backbone) bidirectional, or restore it to exactly its causal self, and return
    the :class:`AttentionState` to run it with (:func:`model_inputs`).

    Raises :class:`UnsupportedModelError` if bidirectional attention cannot be verified.
    """
    family = model_family(model)
    if not bidirectional:
        _set_flags(model, False)
        return AttentionState(False, CAUSAL, family)
    _set_flags(model, True)
    for mode in ("config", "mask4d"):
        state = AttentionState(True, mode, family)
        if not verify or is_bidirectional(model, state):
            return state
    _set_flags(model, False)
    raise UnsupportedModelError(
        f"model family {family!r} ({type(model).__name__}, attention {getattr(model.config, '_attn_implementation', '?')}) "
        "stays causal after l2v's bidirectional conversion (neither config.is_causal=False nor a 4-D padding mask "
        "changes it); refusing to build a silently causal encoder. Try attn_implementation='eager' or 'sdpa', "
        "or load it with bidirectional=False."
    )
