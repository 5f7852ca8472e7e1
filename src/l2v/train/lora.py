"""LoRA for training: a fresh adapter on every linear projection of the decoder layers (whatever the family calls
them), or on the modules named; optional gradient checkpointing; and LoRA dropout whose masks are drawn faster.

LoRA dropout drops each input element of every adapted projection with probability p: seven projections per layer
over hidden-size or MLP-size inputs, about 230 million elements per forward of a 16 x 128 MNTP batch on SmolLM2. On
a CPU, ``nn.Dropout`` draws a 32-bit random number per element with ``bernoulli_``, about a fifth of a training
step (benchmarks/results/profile_step.md). :class:`Dropout` draws only the dropped positions: in a Bernoulli
process the gaps between successive drops are independent geometric variables, so p x n uniforms (one per drop,
through the inverse of the geometric distribution) give the distribution of n Bernoulli draws (to the 2^-24
resolution of float32 uniforms) - 20 times fewer random numbers at p = 0.05. Survivors are scaled by 1 / (1 - p).
On a GPU, torch's fused dropout is kept.

With the base weights in bf16, peft casts each adapted projection's input up to float32 to meet the adapter's
float32 weights, runs LoRA in float32 and casts the sum back: copies and float32 element-wise work on every
projection of every layer, in forward and backward. :func:`compute_in_base_dtype` keeps the adapter's weights
(the optimizer's master copy) in float32 and instead casts them, a few thousand numbers per projection, to the
input's dtype in the forward: LoRA's products run in bf16, as under bf16 autocast, and the gradients reach the
float32 weights through the cast. About 18 % off a training step on this CPU, MNTP and SimCSE alike (paired
steps, this change alone; benchmarks/step_ab.py times it with the other changes); a no-op when the model is float32.

With the factors in the base dtype, :func:`fuse_lora_forward` gives each projection a forward with fewer passes
over the activations (``FusedLoraLinear``): the scales folded into the factors, the dropout as a sparse fill of a
copy, the update added inside the B product. benchmarks/train_step.py times the result against the trainer of
commit 3098735 (README, "Training speed").
"""

from __future__ import annotations

import logging
import math

import torch

from ..errors import L2VError
from .config import TrainConfig

logger = logging.getLogger(__name__)


def drop_positions(count: int, p: float) -> torch.Tensor:
    """Flat indices (int64, ascending) of the dropped elements among ``count``, each dropped independently with
    probability p: the gaps between successive drops are drawn as geometric variables, floor(log(1 - u) / log(1 -
    p)) + 1 for uniforms u, from the global CPU generator."""
    log_keep = math.log1p(-p)
    found, last = [], -1  # last: the position of the latest drop drawn
    while True:
        remaining = count - 1 - last
        expected = remaining * p
        draws = int(expected + 8 * math.sqrt(expected) + 16)  # reaches the end but for a ~1e-15 chance
        gaps = torch.log1p(torch.rand(draws).neg_()).div_(log_keep).floor_().to(torch.int64).add_(1)
        positions = gaps.cumsum_(0).add_(last)
        if positions[-1].item() >= count:
            found.append(positions[positions < count])
            return torch.cat(found)
        found.append(positions)
        last = int(positions[-1].item())


def drop_elements(x: torch.Tensor, p: float) -> torch.Tensor:
    """``x`` with each element set to 0 with probability p (positions from :func:`drop_positions`), survivors
    *not* rescaled: a copy of ``x`` and a sparse fill, no mask tensor and no multiplication."""
    flat = x.reshape(-1)
    return flat.index_fill(0, drop_positions(flat.numel(), p), 0).view(x.shape)


class Dropout(torch.nn.Module):
    """``nn.Dropout`` whose drops are drawn by :func:`drop_elements` on CPU (``F.dropout`` elsewhere)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.numel() == 0:
            return x
        if x.device.type != "cpu":
            return torch.nn.functional.dropout(x, self.p, True)
        # the scale applied after the drops (in float arithmetic, rounded once per element)
        return drop_elements(x, self.p).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class InputDtypeLinear(torch.nn.Linear):
    """A LoRA factor whose float32 weight is cast to its input's dtype in the forward (its gradient flows back
    through the cast to the float32 weight)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), bias)


def compute_in_base_dtype(model) -> int:
    """Run every LoRA layer's products in its input's dtype (the base model's) instead of casting the input up to
    the adapter's float32: peft's input cast is switched off and the A and B factors become
    :class:`InputDtypeLinear` holding the same parameters (state dict, saving and loading unchanged). Returns the
    number of LoRA layers changed."""
    from peft.tuners.lora import LoraLayer

    changed = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer) or not isinstance(module.base_layer, torch.nn.Linear):
            continue
        module.cast_input_dtype_enabled = False
        for factors in (module.lora_A, module.lora_B):
            for name, linear in list(factors.items()):
                if type(linear) is not torch.nn.Linear:
                    continue
                swapped = InputDtypeLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                           device="meta")
                swapped.weight = linear.weight
                if linear.bias is not None:
                    swapped.bias = linear.bias
                swapped.train(linear.training)
                factors[name] = swapped
        changed += 1
    return changed


def _fused_class():
    """peft's LoRA ``Linear`` with :meth:`forward` fused for training (made once, on first use: peft is imported
    lazily)."""
    global _FUSED
    if _FUSED is not None:
        return _FUSED
    from peft.tuners.lora.layer import Linear as LoraLinear

    class FusedLoraLinear(LoraLinear):
        """A LoRA projection whose forward does the vanilla one-adapter case in fewer passes over the activations:
        the dropout's 1 / (1 - p) and LoRA's alpha / r are folded into the (small, float32) A and B factors before
        their cast to the input's dtype, the dropout is a copy with the dropped elements set to 0, and the update
        is added to the base output inside the B product (``addmm``). Peft's forward and this one compute the
        same function (to float rounding); every other case (merged, adapters disabled or mixed, LoRA variants such
        as DoRA, biased factors, factors not in the base dtype) goes to peft's forward."""

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            name = self._fused_adapter()
            if name is None or args or kwargs:
                return super().forward(x, *args, **kwargs)
            factor_a, factor_b = self.lora_A[name], self.lora_B[name]
            dropout = self.lora_dropout[name]
            result = self.base_layer(x)
            scale_a = 1.0
            if isinstance(dropout, Dropout) and dropout.training and dropout.p > 0.0 and x.numel():
                if x.device.type == "cpu":
                    x, scale_a = drop_elements(x, dropout.p), 1.0 / (1.0 - dropout.p)
                else:
                    x = torch.nn.functional.dropout(x, dropout.p, True)
            weight_a = factor_a.weight if scale_a == 1.0 else factor_a.weight * scale_a
            weight_b = factor_b.weight * self.scaling[name]
            hidden = torch.nn.functional.linear(x, weight_a.to(x.dtype))
            rows = result.reshape(-1, result.shape[-1])
            return torch.addmm(rows, hidden.reshape(-1, hidden.shape[-1]), weight_b.to(rows.dtype).t()).view(result.shape)

        def _fused_adapter(self) -> str | None:
            if self.disable_adapters or self.merged or not isinstance(self.base_layer, torch.nn.Linear):
                return None
            names = [a for a in self.active_adapters if a in self.lora_A]
            if len(names) != 1 or names[0] in self.lora_variant:
                return None
            name = names[0]
            factors = (self.lora_A[name], self.lora_B[name])
            if not all(isinstance(f, InputDtypeLinear) and f.bias is None for f in factors):
                return None
            dropout = self.lora_dropout[name]
            no_dropout = isinstance(dropout, torch.nn.Identity) or (isinstance(dropout, torch.nn.Dropout) and dropout.p == 0.0)
            if not (isinstance(dropout, Dropout) or no_dropout):
                return None
            return name

    _FUSED = FusedLoraLinear
    return _FUSED


_FUSED = None


def fuse_lora_forward(model) -> int:
    """Give every vanilla LoRA projection (peft's ``Linear``, factors from :func:`compute_in_base_dtype`) the fused
    training forward of ``FusedLoraLinear``: same parameters, state dict, saving and merging; returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    fused = _fused_class()
    changed = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = fused
            changed += 1
    return changed


def _draw_masks_faster(model) -> None:
    """Swap peft's LoRA dropout modules for :class:`Dropout` (same probability, same distribution)."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, dropout in list(dropouts.items()):
                if isinstance(dropout, torch.nn.Dropout):
                    dropouts[name] = Dropout(dropout.p)


def apply_lora(model, config: TrainConfig):
    """Put a fresh LoRA (config.lora) on every linear projection of the decoder layers, or on the modules named."""
    from peft import LoraConfig, get_peft_model

    linear = {name.split(".")[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    if config.lora.target_modules is None:  # the backbone has no LM head: its linear layers are the projections
        targets = sorted(linear)
    else:
        present = {name.split(".")[-1] for name, _ in model.named_modules()}
        targets = [t for t in config.lora.target_modules if t in present]
        missing = [t for t in config.lora.target_modules if t not in present]
        if not targets:
            raise L2VError(f"none of lora.target_modules {config.lora.target_modules} exist in this model "
                           f"(its linear layers: {', '.join(sorted(linear))})")
        if missing:
            logger.warning("lora.target_modules %s do not exist in this model; LoRA goes on %s", missing, targets)
    lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout, target_modules=targets)
    if config.gradient_checkpointing:
        # Activations of each decoder layer are recomputed in backward instead of kept: memory for time. The
        # non-reentrant form needs no input gradients (frozen embeddings under LoRA) and replays the RNG, so
        # dropout (SimCSE's only augmentation) draws the same masks: the loss and gradients are unchanged.
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise L2VError(f"gradient_checkpointing: {type(model).__name__} does not support it")
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, lora)
    _draw_masks_faster(model)
    if config.lora.compute_in_base_dtype:
        compute_in_base_dtype(model)
        fuse_lora_forward(model)
    return model
