"""Supervised contrastive training: (query, positive, hard negative) triples, in-batch and hard negatives,
temperature 0.02, and gradient caching so a large effective batch fits a small machine.

Gradient caching (GradCache, Gao et al., 2021): (1) embed every chunk without a graph; (2) compute the loss
on the detached embeddings and its gradient with respect to each embedding; (3) re-run each chunk with a
graph and back-propagate those cached embedding gradients. Parameter gradients equal the full-batch ones;
the random state of each chunk is replayed so dropout masks match between the two passes.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .simcse import info_nce


def contrastive_loss(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None,
                     temperature: float = 0.02, gather: bool = True) -> torch.Tensor:
    keys = positives if negatives is None else torch.cat([positives, negatives])
    return info_nce(queries, keys, temperature, gather)


def _devices(module: torch.nn.Module) -> list[int]:
    return sorted({p.device.index for p in module.parameters() if p.device.type == "cuda"})


def grad_cache_step(encode: Callable[[dict], torch.Tensor], groups: Sequence[Sequence[dict]],
                    loss_fn: Callable[..., torch.Tensor], module: torch.nn.Module | None = None) -> torch.Tensor:
    """One GradCache step. ``groups`` is one list of feature chunks per input role (e.g. queries, positives,
    negatives); ``loss_fn`` takes one embedding tensor per role. Accumulates parameter gradients (call
    ``optimizer.step()`` after it) and returns the detached loss."""
    devices = _devices(module) if module is not None else []
    states: list[list[tuple]] = []
    cached: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for chunks in groups:
            role_states, role_embeddings = [], []
            for chunk in chunks:
                role_states.append((torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]))
                role_embeddings.append(encode(chunk))
            states.append(role_states)
            cached.append(role_embeddings)
    leaves = [torch.cat(role).detach().requires_grad_(True) for role in cached]
    loss = loss_fn(*leaves)
    loss.backward()
    for role, chunks in enumerate(groups):
        gradient = leaves[role].grad
        start = 0
        for chunk, embedding, (cpu_state, cuda_states) in zip(chunks, cached[role], states[role]):
            rows = embedding.shape[0]
            with torch.random.fork_rng(devices=devices):
                torch.set_rng_state(cpu_state)
                for device, state in zip(devices, cuda_states):
                    torch.cuda.set_rng_state(state, device)
                replay = encode(chunk)
            replay.backward(gradient[start: start + rows])
            start += rows
    return loss.detach()
