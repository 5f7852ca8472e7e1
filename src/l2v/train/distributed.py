"""torch.distributed helpers: gather embeddings from every process so negatives span the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(local: torch.Tensor, local_queries: int) -> tuple[torch.Tensor, int]:
    """All processes' rows with gradients flowing back to the process that owns each row.

    The gather is differentiable (its backward sums every process's gradient for a row into that row's owner),
    so with the usual averaging of parameter gradients across processes the result equals training on the
    global batch in one process. Keys are laid out as all positives (rank order), then all negatives.
    Returns the gathered keys and the offset of this process's first query among the global positives
    (processes hold equal numbers of positives)."""
    if not is_distributed():
        return local, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(local.contiguous())
    positives = torch.cat([p[:local_queries] for p in parts])
    negatives = [p[local_queries:] for p in parts if p.shape[0] > local_queries]
    gathered = torch.cat([positives, *negatives]) if negatives else positives
    return gathered, dist.get_rank() * local_queries
