"""One home for batching by length: sort, cut under a token budget, pad, restore the input order.

Every part of l2v that runs many texts through a model batches them here: inference (``Encoder.embed_tokenized``),
training (length groups inside one autograd graph, GradCache chunks), the word-level probes and the ROAR scorers.
Sorting by length and bounding a batch's *padded* size keeps the padding (wasted compute) small; because a
text's states do not depend on its batch in l2v, the result is the same as in any other batching.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def token_budget_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None,
                         longest_first: bool = True) -> list[list[int]]:
    """Indices sorted by length (stable), cut into batches of at most ``batch_size`` items whose padded size
    (longest x count) stays within ``max_tokens``. Longest first by default, so the first batch shows the peak
    memory."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=(lambda i: -lengths[i]) if longest_first else (lambda i: lengths[i]))
    batches: list[list[int]] = []
    batch: list[int] = []
    for index in order:
        longest = max(lengths[batch[0]], lengths[index]) if batch else lengths[index]
        if batch and (len(batch) >= batch_size or (max_tokens and longest * (len(batch) + 1) > max_tokens)):
            batches.append(batch)
            batch = []
        batch.append(index)
    if batch:
        batches.append(batch)
    return batches


# A training batch's length groups hold at least this many padded positions (``length_groups``). On a CPU, padding
# is arithmetic: small groups with little padding are fastest. On a GPU a small model's step is bound by kernel
# launches, not arithmetic (each group is a whole forward and backward: a paper MNTP batch of SmolLM2 makes ~14k
# operator calls in one group, ~81k in its ~7, benchmarks/results/step_launches.json), so below a billion parameters
# a batch stays one padded group up to 65,536 positions (the paper recipes' 32 x 512 and 2 x 128 x 128 batches are
# one group each; one group pads SimCSE batches of Wikipedia sentences to 2.5-4x the positions of the CPU's groups).
# Larger models are bound by arithmetic and memory again: groups of >= 4,096 positions (not measured on a GPU).
GROUP_MIN_TOKENS_CPU = 256
GROUP_MIN_TOKENS_SMALL_ON_ACCELERATOR = 65536
GROUP_MIN_TOKENS_LARGE_ON_ACCELERATOR = 4096
SMALL_MODEL_PARAMETERS = 1_000_000_000


def group_min_tokens(device: torch.device | str, parameters: int = 0) -> int:
    """The ``min_tokens`` of :func:`length_groups` for training a model of ``parameters`` on ``device``."""
    if torch.device(device).type == "cpu":
        return GROUP_MIN_TOKENS_CPU
    if parameters < SMALL_MODEL_PARAMETERS:
        return GROUP_MIN_TOKENS_SMALL_ON_ACCELERATOR
    return GROUP_MIN_TOKENS_LARGE_ON_ACCELERATOR


def length_groups(lengths: Sequence[int], max_padding: float = 0.15, min_tokens: int = 256) -> list[list[int]]:
    """Indices longest first, grouped for training: a group grows while its padded size is within
    ``1 + max_padding`` of its real tokens, or while it holds fewer than ``min_tokens`` padded positions (so the
    matrix products stay efficient)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in order:
        if current:
            padded = lengths[current[0]] * (len(current) + 1)
            if padded > min_tokens and padded > (1 + max_padding) * (real + lengths[index]):
                groups.append(current)
                current, real = [], 0
        current.append(index)
        real += lengths[index]
    if current:
        groups.append(current)
    return groups


def sorted_chunks(lengths: Sequence[int], chunk_size: int) -> list[list[int]]:
    """Indices longest first, cut into chunks of ``chunk_size`` (GradCache: every chunk the same number of rows,
    with little padding in each)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i: i + chunk_size] for i in range(0, len(order), chunk_size)]


def restore_order(parts: Sequence[torch.Tensor], batches: Sequence[Sequence[int]]) -> torch.Tensor:
    """Concatenate per-batch results (rows in batch order) back into input order; differentiable."""
    if len(parts) == 1 and list(batches[0]) == list(range(len(batches[0]))):
        return parts[0]
    order = torch.tensor([i for batch in batches for i in batch], device=parts[0].device)
    return torch.cat(list(parts))[torch.argsort(order)]


def run_in_order(items: Sequence, batches: Sequence[Sequence[int]], run: Callable[[list], torch.Tensor]) -> torch.Tensor:
    """``run`` each batch of ``items`` and return the rows in input order."""
    return restore_order([run([items[i] for i in batch]) for batch in batches], batches)


def embed_in_groups(forward: Callable[[dict], torch.Tensor], collate: Callable[[list], dict], tokenized: Sequence,
                    min_tokens: int = 256) -> torch.Tensor:
    """Pooled embeddings (with gradients) of ``tokenized`` in input order, computed over :func:`length_groups`:
    the padded batch's result with less padding, because a text's embedding does not depend on its batch."""
    groups = length_groups([len(t.input_ids) for t in tokenized], min_tokens=min_tokens)
    return run_in_order(tokenized, groups, lambda items: forward(collate(items)))


def pad(rows: Sequence[Sequence[int]], pad_value: int, side: str = "right", length: int | None = None,
        dtype: torch.dtype = torch.long) -> tuple[torch.Tensor, torch.Tensor]:
    """(padded [B, T] tensor, attention mask [B, T]) of integer rows, padded on the ``side`` given."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    length = max((len(r) for r in rows), default=0) if length is None else length
    values = torch.full((len(rows), length), pad_value, dtype=dtype)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for index, row in enumerate(rows):
        n = len(row)
        if not n:
            continue
        span = slice(0, n) if side == "right" else slice(length - n, length)
        values[index, span] = torch.as_tensor(list(row), dtype=dtype)
        mask[index, span] = 1
    return values, mask
