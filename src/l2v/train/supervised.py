"""Supervised contrastive training: (query, positive, hard negative) triples, in-batch and hard negatives,
temperature 0.02, and gradient caching so a large effective batch fits a small machine.

Gradient caching (GradCache, Gao et al., 2021): (1) embed every chunk without a graph; (2) compute the loss
on the detached embeddings and its gradient with respect to each embedding; (3) re-run each chunk with a
graph and back-propagate those cached embedding gradients. Parameter gradients equal the full-batch ones;
the random state of each chunk is replayed so dropout masks match between the two passes.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch

from ..batching import embed_in_groups, restore_order, sorted_chunks
from ..distributed import gradients_unsynced
from .objectives import Objective
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
    ``optimizer.step()`` after it) and returns the detached loss. When ``encode`` is a module wrapped for
    distributed training (DDP or FSDP2), gradients are synchronised once, on the last chunk's backward."""
    devices = _devices(module) if module is not None else []
    wrapped = isinstance(encode, torch.nn.Module) and (hasattr(encode, "no_sync") or hasattr(encode, "set_requires_gradient_sync"))
    last = (len(groups) - 1, len(groups[-1]) - 1) if groups and groups[-1] else None
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
        for index, (chunk, embedding, (cpu_state, cuda_states)) in enumerate(zip(chunks, cached[role], states[role])):
            rows = embedding.shape[0]
            synchronise = not wrapped or (role, index) == last
            with contextlib.nullcontext() if synchronise else gradients_unsynced(encode):
                with torch.random.fork_rng(devices=devices):
                    torch.set_rng_state(cpu_state)
                    for device, state in zip(devices, cuda_states):
                        torch.cuda.set_rng_state(state, device)
                    replay = encode(chunk)
                replay.backward(gradient[start: start + rows])
            start += rows
    return loss.detach()


class SupervisedObjective(Objective):
    """Supervised contrastive training on (query, positive, hard negative) triples; each batch from one dataset;
    GradCache (``contrastive.chunk_size``) for batches larger than memory allows."""

    name = "supervised"
    temperature = 0.02

    @property
    def owns_backward(self) -> bool:  # type: ignore[override]
        return bool(self.config.contrastive.chunk_size)

    def read_examples(self) -> list:
        from .data import load_triples

        return load_triples(self.config.data)

    def groups(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for index, triple in enumerate(self.examples):
            groups.setdefault(triple.dataset, []).append(index)
        return groups

    def prepare(self, encoder) -> None:
        super().prepare(encoder)
        if self.config.contrastive.attention_dropout is not None:
            from .simcse import set_dropout

            set_dropout(encoder.model, attention_dropout=self.config.contrastive.attention_dropout)

    def loss(self, forward, batch: list, seed: int) -> torch.Tensor:
        encoder, config = self.encoder, self.config
        roles = [[(t.instruction, t.query) for t in batch], [t.positive for t in batch]]
        if batch[0].negative is not None:
            roles.append([t.negative for t in batch])
        loss_fn = lambda *embeddings: contrastive_loss(*embeddings, temperature=self.contrastive_temperature(),  # noqa: E731
                                                       gather=config.contrastive.gather_negatives)
        tokenized = [encoder.tokenize(role) for role in roles]
        chunk = config.contrastive.chunk_size
        if not chunk:
            return loss_fn(*[embed_in_groups(forward, encoder.collate, role, min_tokens=self.group_min_tokens())
                             for role in tokenized])
        # GradCache chunks cut from each role sorted by length (little padding per chunk); the loss sees the
        # embeddings back in batch order, so pairs and in-batch negatives are unchanged.
        groups, orders = [], []
        for role in tokenized:
            chunks = sorted_chunks([len(t.input_ids) for t in role], chunk)
            orders.append(chunks)
            groups.append([encoder.collate([role[i] for i in members]) for members in chunks])
        in_batch_order = lambda *embeddings: loss_fn(*[  # noqa: E731
            restore_order(list(e.split([len(c) for c in chunks])), chunks) for e, chunks in zip(embeddings, orders)])
        return grad_cache_step(forward, groups, in_batch_order, module=encoder)
