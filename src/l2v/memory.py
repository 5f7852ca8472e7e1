"""Memory while encoding on a CPU: what a forward keeps beyond the weights, made small.

A decoder layer's feed-forward block holds several [positions x MLP size] tensors at once (the gate and up
projections, the activation, their product): for SmolLM2-135M and a batch of 32 texts of 512 tokens, about 100 MB
each in float32, the largest transient of the forward after attention's scores. The block works on each position
alone, so :func:`chunk_feed_forward` runs it over at most ``rows`` positions at a time at inference (no autograd):
the same numbers (each position's products are computed as before), a smaller working set; each block is checked
once, on a small sample, to work on positions alone. Training (autograd on) and other devices (a GPU's matrix
products want many rows; not measured there) run the block whole. With the CPU's per-forward token cap
(``l2v.encoder.CPU_FORWARD_TOKENS``) it takes the peak rise of encoding 64 such texts from ~470-590 MB to ~80-135 MB
and the time from ~57-65 s to ~40-47 s over runs, embeddings unchanged (benchmarks/encode_memory.py). For short
sentences (STS-B, batches of at most ~1,800 positions) the peak did not move measurably: what remains there is the
load's residue and the CPU kernels' per-shape caches (README, "Precision").

The C library's heap, in one place: :func:`release_free_memory` asks glibc to hand back freed pages after a load
(casting float32 weights to bfloat16 frees the float32 copies, which glibc otherwise keeps: about 20 MB for SmolLM2
in bfloat16); :func:`steady_cpu_allocator` keeps a training process's large blocks in the heap.

The CPU kernels' caches: :func:`bound_kernel_caches` caps the per-shape state oneDNN keeps for bfloat16 products
(the l2v commands that encode call it first thing).
"""

from __future__ import annotations

import gc
import os

import torch

FEED_FORWARD_NAMES = ("mlp", "feed_forward", "ffn")
CPU_FEED_FORWARD_ROWS = 512  # benchmarks/encode_memory.py: ~470-590 -> ~420-445 MB peak rise, 32 x 512-token batches

_CHUNKED: dict[type, type] = {}


def _new_chunked(base: type):
    """Unpickling: an empty instance of ``base``'s chunked class (its state is set after)."""
    return _chunked_class(base).__new__(_chunked_class(base))


def _chunked_class(cls: type) -> type:
    """``cls`` with a forward that runs over row chunks when autograd is off (made once per class)."""
    if cls in _CHUNKED:
        return _CHUNKED[cls]

    def forward(self, *args, **kwargs):
        rows = getattr(self, "l2v_chunk_rows", 0)
        hidden = args[0] if len(args) == 1 and not kwargs else None
        if (hidden is None or not torch.is_tensor(hidden) or hidden.dim() < 2 or not rows or torch.is_grad_enabled()
                or hidden.device.type != "cpu" or hidden.numel() // hidden.shape[-1] <= rows):
            return cls.forward(self, *args, **kwargs)
        if not getattr(self, "l2v_chunk_checked", False):
            # once per block: it must work on each position alone (a block that mixes positions - a token shift, a
            # convolution, capacity-limited routing - does not, and then runs whole from here on). Checked on a
            # small sample: up to 64 positions of the first text, whole against in two halves.
            self.l2v_chunk_checked = True
            sample = (hidden[:1] if hidden.dim() >= 3 else hidden)[..., :64, :]
            half = sample.shape[-2] // 2
            if half:
                whole = cls.forward(self, sample)
                parts = [cls.forward(self, sample[..., :half, :]), cls.forward(self, sample[..., half:, :])]
                if not (all(torch.is_tensor(t) for t in (whole, *parts))
                        and torch.allclose(whole.float(), torch.cat(parts, dim=-2).float(), rtol=1e-4, atol=1e-5)):
                    self.l2v_chunk_rows = 0
                    return cls.forward(self, hidden)
        count = hidden.numel() // hidden.shape[-1]
        flat = hidden.reshape(1, count, hidden.shape[-1])
        first = cls.forward(self, flat[:, :rows])
        if not torch.is_tensor(first) or first.shape[:-1] != (1, rows):  # e.g. a router's (states, logits): whole
            self.l2v_chunk_rows = 0
            return cls.forward(self, hidden)
        output = first.new_empty((1, count, first.shape[-1]))
        output[:, :rows] = first
        del first
        for start in range(rows, count, rows):
            output[:, start:start + rows] = cls.forward(self, flat[:, start:start + rows])
        output = output.view(*hidden.shape[:-1], output.shape[-1])
        return output

    def __reduce_ex__(self, protocol):  # pickles as the base class's chunked twin, rebuilt by name of the base
        return _new_chunked, (cls,), self.__dict__.copy()

    chunked = type(cls.__name__, (cls,), {"forward": forward, "__reduce_ex__": __reduce_ex__,
                                          "__module__": cls.__module__, "__qualname__": f"{cls.__qualname__}[row-chunked]"})
    _CHUNKED[cls] = chunked
    return chunked


def chunk_feed_forward(model: torch.nn.Module, rows: int | None) -> int:
    """Run every decoder layer's feed-forward block (its ``mlp`` / ``feed_forward`` / ``ffn`` child) over at most
    ``rows`` positions at a time when autograd is off; ``rows`` None or 0 switches it off again. The module keeps
    its parameters, state dict and ``isinstance``; returns how many blocks were changed. A block whose output is
    not the states alone (a mixture-of-experts block returning router logits too) is run whole from its first call
    on."""
    from .precision import decoder_layers

    try:
        layers = decoder_layers(model)
    except ValueError:
        return 0
    changed = 0
    for layer in layers:
        for name in FEED_FORWARD_NAMES:
            block = getattr(layer, name, None)
            if not isinstance(block, torch.nn.Module):
                continue
            base = type(block).__mro__[1] if type(block) in _CHUNKED.values() else type(block)
            block.__class__ = _chunked_class(base)
            block.l2v_chunk_rows = int(rows) if rows else 0
            changed += 1
            break
    return changed


def _glibc():
    """The C library's handle where it is glibc (``malloc_trim``, ``mallopt``), else None (macOS, musl)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018  (both exist in glibc only)
    except (OSError, AttributeError):
        return None
    return libc


def release_free_memory() -> bool:
    """Collect garbage and ask glibc to return free heap pages to the system; False where that cannot be asked
    (not glibc)."""
    gc.collect()
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def steady_cpu_allocator() -> bool:
    """Ask glibc's malloc to serve large blocks from its heap instead of a fresh memory mapping per block (and to
    stop adapting its thresholds; free memory at the top of the heap is still handed back at once, trim threshold
    0). Training steps allocate and free activations of changing sizes; by default each block above a threshold is
    a new mapping whose pages the kernel faults in and zeroes again at every step. Measured on this repository's
    2-core CPU, MNTP 16 x 128 on SmolLM2-135M with bf16 weights over 8 steps of changing batches, two pairs of
    processes: 7-9 % less time, peak RSS +3 %. Process-wide, for the training process only (``load_objective`` on a
    CPU); False (nothing changed) where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 0))


KERNEL_CACHES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
KERNEL_CACHE_ENTRIES = 16


def bound_kernel_caches(entries: int = KERNEL_CACHE_ENTRIES) -> dict[str, str]:
    """Cap oneDNN's primitive cache and PyTorch's oneDNN (ideep) LRU cache at ``entries`` each for this process,
    where the environment does not set them already; returns the two settings in force.

    Each new shape of a bfloat16 product on a CPU (a batch's rows against a weight) leaves a compiled kernel and a
    scratchpad about the size of its output in both caches, 1,024 entries each by default: 1,499 row counts against
    one 1536 x 576 weight held 1.8 GB. An encoder sees a new row count with nearly every batch, so a mixed or
    bfloat16 encoder's memory grows with the batches it has seen (a server's without end); at 16 entries the kernels
    one batch uses are still reused across its layers. Measured (``benchmarks/precision_memory_levers.py``,
    mixed, 2,758 STS-B sentences): the peak over the weights 1.38 -> 1.25-1.29 (``-unsup``) and 1.33 -> 1.27-1.28
    (``-sup``), time 0.90x / 0.96x the default's over three alternating rounds.

    Both libraries read the setting at their first bfloat16 product: call this before it. Process-wide, so the l2v
    commands that encode call it and the library does not on its own: a process that also runs, say, a CNN cycling
    through more than ``entries`` shapes would rebuild its kernels."""
    if not isinstance(entries, int) or isinstance(entries, bool) or entries < 1:
        raise ValueError(f"entries must be a whole number >= 1, not {entries!r}")
    for name in KERNEL_CACHES:
        os.environ.setdefault(name, str(entries))
    return {name: os.environ[name] for name in KERNEL_CACHES}
