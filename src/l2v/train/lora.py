"""LoRA for training: a fresh adapter on every linear projection of the decoder layers (whatever the family calls
them), or on the modules named; optional gradient checkpointing; and LoRA dropout whose masks are drawn faster.

LoRA dropout draws one mask element per input element of every adapted projection: seven projections per layer
over hidden-size or MLP-size inputs, about 230 million draws per forward of a 16 x 128 MNTP batch on SmolLM2. On a
CPU, ``nn.Dropout`` draws them with ``bernoulli_`` (one 32-bit random number each), about a fifth of a training
step (benchmarks/results/profile_step.md). :class:`Dropout` draws 64-bit random words and reads each as four
16-bit uniforms: the same distribution (keep with probability 1 - p, p rounded to a multiple of 1/65536; scale
1 / (1 - p)), forward and backward about 2.5x faster on this CPU. On a GPU, torch's fused dropout is kept.
"""

from __future__ import annotations

import logging

import torch

from ..errors import L2VError
from .config import TrainConfig

logger = logging.getLogger(__name__)


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A boolean mask, True with probability 1 - p (p rounded to a multiple of 1/65536), from the global CPU
    generator: 16-bit uniforms read four to a 64-bit random word."""
    count = 1
    for size in shape:
        count *= size
    words = torch.randint(-(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64)
    uniforms = words.view(torch.int16)[:count].view(shape)  # each in [-32768, 32767], uniform
    return uniforms >= -32768 + round(p * 65536)


class Dropout(torch.nn.Module):
    """``nn.Dropout`` whose mask is drawn by :func:`keep_mask` on CPU (``F.dropout`` elsewhere)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return torch.nn.functional.dropout(x, self.p, True)
        return x * keep_mask(x.shape, self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


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
    return model
