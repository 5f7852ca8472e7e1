"""RACU, the relative area between curves (Madsen et al., 2022), per seed, and its mean with a bootstrap CI.

With p the measure's performance curve and b the random curve of the same seed, both at masking ratios x:

    RACU = sum_i dx_i (dp_i + dp_{i+1}) / 2  /  sum_i dx_i (db_i + db_{i+1}) / 2,
    dp_i = b_i - p_i,   db_i = b_i - b_I   (b_I: random masking at 100 %)

clipped to [-1, 1]: the area between the random curve and the measure's, relative to the area random masking
can lose at most.
"""

from __future__ import annotations

import numpy as np


def racu(ratios, measure, random) -> float:
    x = np.asarray(ratios, dtype=np.float64)
    p = np.asarray(measure, dtype=np.float64)
    b = np.asarray(random, dtype=np.float64)
    if not (x.shape == p.shape == b.shape) or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"ratios, measure and random curves must be 1-D and of equal length, got {x.shape}, {p.shape}, {b.shape}")
    dx = np.diff(x)
    dp = b - p
    db = b - b[-1]
    numerator = float(np.sum(dx * (dp[:-1] + dp[1:]) / 2))
    denominator = float(np.sum(dx * (db[:-1] + db[1:]) / 2))
    if denominator <= 0:
        return float("nan")  # random masking loses nothing: RACU is undefined for this seed
    return float(np.clip(numerator / denominator, -1.0, 1.0))


def mean_with_ci(values, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap confidence interval over seeds."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values")
    if values.size == 1:
        return float(values[0]), float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(values.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
