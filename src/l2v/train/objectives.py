"""Training objectives as plug-ins: what a stage trains on and what it minimises; the loop knows none by name.

An objective reads its examples (before any model is loaded, so bad data fails fast), says how they are grouped
into batches (a batch is drawn from one group), prepares the loaded encoder (e.g. SimCSE raises dropout), and
computes the loss of its slice of a global batch for a seed. ``forward`` is the encoder's forward as the loop
prepared it (wrapped for distributed gradient sync when there are several processes): objectives call it, never
the backbone directly, so gradients are synchronised whatever the objective.

Adding an objective is one file with a subclass of :class:`Objective` and one line in ``OBJECTIVES`` (or a call
to :func:`register` from your own package).
"""

from __future__ import annotations

import importlib
from typing import Callable, ClassVar

import torch

from ..errors import L2VError

# stage name -> "module:Class"; imported on use, so a stage's dependencies load only when it runs
OBJECTIVES: dict[str, str | type] = {
    "mntp": "l2v.train.mntp:MntpObjective",
    "simcse": "l2v.train.simcse:SimcseObjective",
    "supervised": "l2v.train.supervised:SupervisedObjective",
}


class Objective:
    """One training stage. Subclasses set ``name`` and implement :meth:`loss`; the rest has defaults."""

    name: ClassVar[str] = ""
    temperature: ClassVar[float | None] = None  # default contrastive temperature (config.contrastive.temperature wins)
    needs_lm_head: ClassVar[bool] = False  # the encoder is loaded with its LM head (MNTP)
    owns_backward: ClassVar[bool] = False  # loss() runs backward itself and returns a detached loss (GradCache)
    compute_device: torch.device | None = None  # where the steps run (set by ``load_objective``)
    _parameter_count: int | None = None  # the encoder's, counted once (group_min_tokens)

    def __init__(self, config):
        self.config = config
        self.examples = self.read_examples()

    def read_examples(self) -> list:
        from .data import load_texts

        return load_texts(self.config.data)

    def groups(self) -> dict[str, list[int]]:
        """Example indices by group; every global batch is drawn from one group."""
        return {"default": list(range(len(self.examples)))}

    def prepare(self, encoder) -> None:
        """Adjust the loaded encoder before LoRA is put on it (dropout, mask token, ...)."""
        self.encoder = encoder

    def loss(self, forward: Callable, batch: list, seed: int) -> torch.Tensor:
        """The loss of this process's ``batch`` (examples), with ``seed`` for any randomness of the step."""
        raise NotImplementedError

    def group_min_tokens(self) -> int:
        """``min_tokens`` of the length groups a batch runs in: the config's, else by the device the steps run on
        (not where the weights live: FSDP with CPU offload keeps them on the CPU) and the model's size
        (``l2v.batching.group_min_tokens``)."""
        from ..batching import group_min_tokens

        chosen = getattr(self.config, "group_min_tokens", None)
        if chosen is not None:
            return int(chosen)
        device = self.compute_device if self.compute_device is not None else self.encoder.device
        if self._parameter_count is None:
            self._parameter_count = sum(p.numel() for p in self.encoder.model.parameters())
        return group_min_tokens(device, self._parameter_count)

    def contrastive_temperature(self) -> float:
        chosen = self.config.contrastive.temperature
        if chosen is not None:
            return float(chosen)
        if self.temperature is None:
            raise L2VError(f"objective {self.name!r} has no temperature")
        return self.temperature


def register(name: str, target: str | type) -> None:
    """Make ``stage: name`` available to configs: ``target`` is an Objective subclass or "module:Class"."""
    OBJECTIVES[name] = target


def objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise L2VError(f"unknown training stage {name!r}; choose one of: {', '.join(OBJECTIVES)}")
    target = OBJECTIVES[name]
    if isinstance(target, str):
        module, _, attribute = target.partition(":")
        found = getattr(importlib.import_module(module), attribute)
    else:
        found = target
    if not (isinstance(found, type) and issubclass(found, Objective)):
        raise L2VError(f"training stage {name!r}: {OBJECTIVES[name]} is not an Objective")
    return found
