"""Fast encoding that keeps the embedding: ``dtype="mixed"``, float32 where the model is sensitive, bfloat16 after.

Where bfloat16 changes an embedding (``benchmarks/precision_probe.py``, SmolLM2-135M and its l2v encoders, STS-B
sentences): not in the attention sink, not spread evenly over the layers, but in the layers *before* the model's
massive activations form. A few tokens (sentence-final '.') acquire activations about 6x the usual norm at one
early layer (layer 11 of 30 in SmolLM2); whether and how they form depends on small differences upstream, and the
final norm turns the size of that outlier into the direction of the token's state. Rounding the weights of one
early layer to bfloat16 moves an embedding to cosine 0.97; rounding every layer *after* the massive activations
changes nothing measurable (cosine >= 0.9999), and random weight noise of the same size as bfloat16's rounding is
harmless too (the damage is the early layers' rounding, not noise in general). Keeping only some early
projections in float32 (the attention ones, or the MLPs) does not help; keeping the early layers whole does.

So ``mixed`` runs the decoder layers up to the one that forms the massive activations in float32, and every layer
after it with bfloat16 products (weights stored in bfloat16, ``torch.autocast``), with the residual stream, the
norms, attention (scores, softmax, weighted sum: a registered float32 SDPA) and pooling in float32. The split is
found per model at load time, not per family: one float32 pass over a small calibration set locates the largest
jump of the largest activation between consecutive layers, then the mixed model is checked against float32 on
the same texts (minimum cosine >= ``CHECK_COSINE``); if it misses, more layers move to float32 until it passes, and
a model that never passes stays float32 (with a warning). The published contract per encoder (minimum cosine over
the 2,758 STS-B test sentences, speed) is measured by ``benchmarks/precision.py``.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch

# The calibration check. The published contract (STS-B test sentences) is >= 0.999; 32 calibration texts see less
# of the tail than 2,758 test sentences do (the -sup encoder split at layer 1: 0.99979 here, 0.9983 on 800 STS-B
# test sentences), so the check is stricter than the contract (the splits SmolLM2's encoders get: 0.99994-0.99995).
CHECK_COSINE = 0.9999
FLOAT32_ATTENTION = "l2v_sdpa_float32"

# Calibration texts: short and long, statements and questions, with and without final punctuation, numbers,
# names, lists (the sentence-final tokens are the sensitive ones). Written for l2v.
CALIBRATION = [
    "A man is playing a guitar on the stage.",
    "Someone strums an acoustic guitar in front of an audience.",
    "A woman is slicing an onion in the kitchen.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "Scientists discovered a new species of frog in the rainforest.",
    "Heavy snow closed the mountain roads overnight.",
    "Who is making music?",
    "What happened to the economy?",
    "How is the weather affecting travel?",
    "a dog runs across the field",
    "Two boys are playing football.",
    "The cat sleeps.",
    "Rain.",
    "It is 7:45 and the train to Zurich leaves from platform 3.",
    "She bought apples, pears, three lemons and a loaf of bread.",
    "The committee approved the budget on 12 March 2021, after a long debate.",
    "Is this the right way to the station?",
    "I don't think that's what he meant!",
    "Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog.",
    "Protein folding determines how enzymes bind their substrates.",
    "The defendant pleaded not guilty to all charges.",
    "A small child is climbing the stairs of a wooden slide",
    "Please send me the report by Friday.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The orchestra played Beethoven's fifth symphony to a full hall.",
    "Prices rose 3.2 percent in the year to October, the fastest pace since 2008.",
    "He said: \"We will not give up.\"",
    "The new phone has a larger screen and a better camera than the old one.",
    "Volunteers planted two hundred trees along the river bank last weekend.",
    "Why do leaves change colour in autumn?",
    "Three people were injured when the bus skidded on the icy road.",
]


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The backbone's stack of decoder layers, found generically: the longest ``ModuleList`` whose members are all
    of one class (the class named in ``_no_split_modules`` when the model declares one)."""
    declared = set()
    for module in model.modules():
        declared.update(getattr(module, "_no_split_modules", None) or [])
    best = None
    for module in model.modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child).__name__ for child in module}
        if len(kinds) != 1:
            continue
        score = (next(iter(kinds)) in declared, len(module))
        if best is None or score > best[0]:
            best = (score, module)
    if best is None:
        raise ValueError(f"{type(model).__name__} has no stack of decoder layers (a ModuleList of one layer class)")
    return best[1]


def _float32_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention with queries, keys, values and mask in float32, outside autocast."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)


def _register_float32_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FLOAT32_ATTENTION, _float32_sdpa)
    AttentionMaskInterface.register(FLOAT32_ATTENTION, sdpa_mask)


def _set_attention_implementation(model: torch.nn.Module, name: str) -> list:
    """Point every config of the backbone that runs SDPA at attention ``name``; returns what to restore. Other
    implementations (eager with soft-capping, flash kernels) are left as they are: the calibration check then
    decides whether their bfloat16 attention keeps the embedding."""
    previous = []
    seen = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or id(config) in seen or getattr(config, "_attn_implementation", None) != "sdpa":
            continue
        seen.add(id(config))
        previous.append((config, config._attn_implementation))
        config._attn_implementation = name
    return previous


@dataclass
class MixedPrecision:
    """How an encoder runs in ``mixed`` precision: the first ``float32_layers`` of ``layers`` decoder layers in
    float32, the rest with bfloat16 products; ``calibration_cosine`` is the check it passed at load."""

    float32_layers: int
    layers: int
    calibration_cosine: float | None = None
    device_type: str = "cpu"

    def autocast(self):
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    def describe(self) -> str:
        return (f"mixed precision: decoder layers 0-{self.float32_layers - 1} float32, {self.float32_layers}-{self.layers - 1} "
                f"bfloat16 products (attention, norms, residual stream, pooling float32)"
                + (f"; calibration min cosine to float32 {self.calibration_cosine:.5f}" if self.calibration_cosine else ""))


def _in_float32(index: int, float32_layers) -> bool:
    """Whether layer ``index`` runs in float32: ``float32_layers`` is mixed's split (the layers below it) or a set
    of layer indices (benchmarks/precision_layer_sets.py tries other sets)."""
    return index < float32_layers if isinstance(float32_layers, int) else index in float32_layers


def _install(model: torch.nn.Module, float32_layers) -> None:
    """Layers below ``float32_layers`` (or in it, a set) run with autocast off (float32 inputs); the others under the
    caller's autocast. Re-installable with another split (the weights are not touched here)."""
    for index, layer in enumerate(decoder_layers(model)):
        if "forward" in layer.__dict__:  # an earlier split's wrapper
            del layer.forward
        if _in_float32(index, float32_layers):
            original = layer.forward

            def forward(*args, _original=original, **kwargs):
                with torch.autocast(_device_type(args, kwargs), enabled=False):
                    args = tuple(_to_float32(a) for a in args)
                    kwargs = {k: _to_float32(v) for k, v in kwargs.items()}
                    return _original(*args, **kwargs)

            layer.forward = forward


def _device_type(args, kwargs) -> str:
    for value in (*args, *kwargs.values()):
        if torch.is_tensor(value):
            return value.device.type
    return "cpu"


def _to_float32(value):
    if torch.is_tensor(value) and value.is_floating_point():
        return value.float()
    if isinstance(value, tuple):  # (cos, sin) position embeddings
        return tuple(_to_float32(v) for v in value)
    return value


def _store_bfloat16(model: torch.nn.Module, float32_layers) -> None:
    """The linear weights of the bfloat16 layers stored in bfloat16 (the products autocast would make from them
    are the same; storing them saves the cast at every batch and half their memory). Norm weights stay float32."""
    for index, layer in enumerate(decoder_layers(model)):
        if _in_float32(index, float32_layers):
            continue
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.data = module.weight.data.to(torch.bfloat16)
                if module.bias is not None:
                    module.bias.data = module.bias.data.to(torch.bfloat16)


def _release_loaded_file(model: torch.nn.Module) -> None:
    """Give the float32 weights their own memory, so the weights file mapped at load can be unmapped.

    transformers maps a safetensors file and the float32 parameters are views of it; once the later layers are cast
    to bfloat16 their float32 pages are unused, but the mapping (and the pages the calibration pass touched) stays
    in the process as long as any parameter views it: about 250 MB more resident memory for SmolLM2-135M than the
    mixed weights need. Copying the float32 tensors (parameters keep their identity, so tied weights stay tied)
    lets the mapping go; the allocator is then asked to return freed pages (glibc). A no-op in effect when the
    weights were not mapped."""
    from .memory import release_free_memory

    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.dtype == torch.float32 and tensor.device.type == "cpu":
            tensor.data = tensor.data.clone()
    release_free_memory()


MASSIVE_JUMP = 4.0  # the largest activation grows at least this much in one layer: massive activations form there


def massive_activation_layer(hidden_states: list[torch.Tensor], mask: torch.Tensor) -> int:
    """The index of the hidden state (0: embeddings, i: output of layer i-1) where the largest activation over the
    real tokens (the first position, an attention sink, left out) jumps most from the state before it, if it jumps
    at least ``MASSIVE_JUMP``-fold; 0 when no layer makes such a jump (no massive activations: nothing to protect).

    The step from the embeddings to the first layer's output is not compared: token embeddings live on their own,
    small scale (SmolLM2: peak 1.0, then 35-46 after layer 0 in every l2v encoder), so that ratio says nothing about
    massive activations, and taking it for one put the split at layer 1 (min cosine 0.998 on STS-B sentences where
    the split at the real jump, layer 12, keeps 0.99986)."""
    keep = mask.bool().clone()
    keep[:, 0] = False
    if not keep.any():
        keep = mask.bool()
    # the last state is after the final norm in transformers' outputs, not a layer's raw output: left out
    peaks = [float(state.float().abs().amax(dim=-1)[keep].max()) for state in hidden_states[:-1]]
    if len(peaks) < 3:
        return 0
    ratios = {i: peaks[i] / max(peaks[i - 1], 1e-6) for i in range(2, len(peaks))}
    best = max(ratios, key=ratios.__getitem__)
    return best if ratios[best] >= MASSIVE_JUMP else 0


def calibrate(encoder, texts: list[str] | None = None, threshold: float = CHECK_COSINE) -> MixedPrecision | None:
    """Choose the float32/bfloat16 split for ``encoder`` (float32 weights, on its device) and install it; returns
    the plan, or ``None`` when no split passes the check (the encoder is then left in float32)."""
    texts = texts or CALIBRATION
    device = encoder.device
    layers = decoder_layers(encoder.model)
    total = len(layers)
    features = encoder.collate(encoder.tokenize(texts))
    with torch.inference_mode():
        reference, output = encoder(features, output_hidden_states=True)
    reference = torch.nn.functional.normalize(reference.float(), dim=-1)
    start = massive_activation_layer(list(output.hidden_states), features["attention_mask"].to(device))
    del output  # every layer's states (~55 MB for SmolLM2): gone before the memory is handed back below
    _register_float32_attention()
    restore = _set_attention_implementation(encoder.model, FLOAT32_ATTENTION)
    plan = MixedPrecision(float32_layers=start, layers=total, device_type=device.type)
    encoder.precision = plan
    def undo() -> None:
        encoder.precision = None
        _install(encoder.model, 0)
        for config, name in restore:
            config._attn_implementation = name

    try:
        for split in sorted({min(start + extra, total) for extra in (0, 2, 4, 8, 16)} | {total}):
            if split >= total:
                break
            plan.float32_layers = split
            _install(encoder.model, split)
            with torch.inference_mode():
                mixed = torch.nn.functional.normalize(encoder(features).float(), dim=-1)
            cosine = float((mixed * reference).sum(-1).min())
            if cosine >= threshold:
                plan.calibration_cosine = cosine
                _store_bfloat16(encoder.model, split)
                if device.type == "cpu":
                    _release_loaded_file(encoder.model)
                return plan
    except Exception:
        undo()
        raise
    undo()
    warnings.warn(f"mixed precision: no split of {encoder.source}'s {total} layers keeps the embeddings within cosine "
                  f"{threshold} of float32 on the calibration texts; encoding in float32")
    return None


def autocast_for(encoder):
    """The context an encoder's forward runs in: bfloat16 autocast in mixed precision, nothing otherwise."""
    plan = getattr(encoder, "precision", None)
    return plan.autocast() if plan is not None else contextlib.nullcontext()


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 products natively (CPU: AVX-512 BF16 or AMX; CUDA: compute >= 8.0)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return False
