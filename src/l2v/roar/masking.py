"""Masking for ROAR: replace (never delete) the most important eligible tokens by the mask token.

Eligible positions are real tokens (no padding, no special tokens); already masked positions stay masked and
count towards the total: at ratio k %, ``int(k / 100 * n_eligible)`` positions of a sequence are masked (the
paper's formula, floating point included), the new ones chosen by importance among those not yet masked (ties:
the earlier position first). A score that is not finite at an eligible position is an error, not a silent
fallback to position order.
"""

from __future__ import annotations

import numpy as np


def masked_count(k: int, eligible: int) -> int:
    return int(k / 100 * eligible)


def grow_mask(tokens: list[int], scores: np.ndarray, k: int, mask_id: int, eligible: np.ndarray | None = None) -> list[int]:
    """``tokens`` with the mask grown to ``k`` %: ``scores`` (one per position) rank the unmasked eligible ones."""
    tokens = list(tokens)
    eligible = np.ones(len(tokens), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    if len(scores) < len(tokens) or len(eligible) != len(tokens):
        raise ValueError(f"scores ({len(scores)}) and eligibility ({len(eligible)}) must cover all {len(tokens)} tokens")
    positions = np.flatnonzero(eligible)
    already = [p for p in positions if tokens[p] == mask_id]
    wanted = masked_count(k, len(positions))
    need = wanted - len(already)
    if need <= 0:
        return tokens
    candidates = np.array([p for p in positions if tokens[p] != mask_id], dtype=np.int64)
    values = np.asarray(scores, dtype=np.float64)[candidates]
    if not np.isfinite(values).all():
        raise ValueError(f"importance scores are not finite at eligible positions {candidates[~np.isfinite(values)].tolist()}")
    order = candidates[np.argsort(-values, kind="stable")]
    for position in order[:need]:
        tokens[int(position)] = mask_id
    return tokens


def masked_fraction(sequences: list[list[int]], mask_id: int) -> float:
    total = sum(len(s) for s in sequences)
    return sum(t == mask_id for s in sequences for t in s) / total if total else 0.0
