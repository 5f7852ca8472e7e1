"""Processes working together: who this process is (rank, world, local rank), and embeddings gathered across
processes with gradients, so contrastive negatives span the global batch.

Launchers (``torchrun``, ``accelerate launch``, ``mpirun``) describe the process group in environment variables;
an initialised ``torch.distributed`` group wins over them. Everything in l2v asks here.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def current_process() -> Process:
    """This process's place in the job: from the initialised process group, else the launcher's environment."""
    local = _env_int(("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK"), 0)
    if dist.is_available() and dist.is_initialized():
        return Process(dist.get_rank(), dist.get_world_size(), local)
    return Process(_env_int(("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"), 0),
                   _env_int(("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"), 1), local)


@contextlib.contextmanager
def gradients_unsynced(model: torch.nn.Module):
    """Backward passes inside accumulate gradients without the cross-process reduction, for a model wrapped by DDP
    (``no_sync``) or sharded by FSDP2 (``set_requires_gradient_sync``); a plain model is unaffected. The first
    backward after the context synchronises everything accumulated."""
    if hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


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
