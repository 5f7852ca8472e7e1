"""The synthetic check: Recursive ROAR follows the ground truth where plain ROAR does not.

16 features: the label depends on the first 4 (weights 4, 3, 2, 1, logistic noise); features 4-7 are noisy
copies of those 4 (redundant: the same information, a little worse), 8-15 are noise. The model is a logistic
regression and a feature's importance is |coefficient|; masking sets a feature to 0 (its mean) for every
example, and the model is retrained after each mask.

* plain ROAR ranks the features once, with the unmasked model: it relies on features 0-3, not on their copies,
  so the copies are masked late and accuracy holds up for long;
* Recursive ROAR re-ranks with the model retrained on the current masking: once feature 0 is masked the model
  leans on its copy, which is masked next;
* the ground truth is the best any ranking can do, found by brute force: at each step the feature whose masking
  (with retraining) lowers validation accuracy the most.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from .racu import racu

FEATURES = 16


def make_data(samples: int = 3000, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    weights = np.array([4.0, 3.0, 2.0, 1.0])

    def draw(n):
        signal = rng.normal(size=(n, 4))
        label = (signal @ weights + rng.logistic(size=n) > 0).astype(int)
        copies = signal + rng.normal(scale=0.3, size=(n, 4))
        return np.hstack([signal, copies, rng.normal(size=(n, 8))]), label

    return {"train": draw(samples), "validation": draw(samples), "test": draw(samples)}


def _fit(data, masked: list[int]):
    keep = np.ones(FEATURES, dtype=bool)
    keep[masked] = False
    x_train, y_train = data["train"]
    model = LogisticRegression(max_iter=2000)
    model.fit(np.where(keep, x_train, 0.0), y_train)
    return model, keep


def _accuracy(model, keep, data, split: str) -> float:
    x, y = data[split]
    return float((model.predict(np.where(keep, x, 0.0)) == y).mean())


def run(seed: int = 0, samples: int = 3000, random_orders: int = 5) -> dict:
    """Test-accuracy curves (one point per masked feature, 0..16) for plain, recursive, random and ground truth."""
    data = make_data(samples, seed)
    model, keep = _fit(data, [])
    start = _accuracy(model, keep, data, "test")
    plain_order = list(np.argsort(-np.abs(model.coef_[0]), kind="stable"))
    plain = [start] + [_accuracy(*_fit(data, plain_order[:m]), data, "test") for m in range(1, FEATURES + 1)]
    recursive, masked = [start], []
    current = model
    for _ in range(FEATURES):
        importance = np.abs(current.coef_[0]).astype(float)
        importance[masked] = -np.inf
        masked.append(int(np.argmax(importance)))
        current, keep = _fit(data, masked)
        recursive.append(_accuracy(current, keep, data, "test"))
    truth, masked = [start], []
    for _ in range(FEATURES):
        options = [f for f in range(FEATURES) if f not in masked]
        drops = [_accuracy(*_fit(data, masked + [f]), data, "validation") for f in options]
        masked.append(options[int(np.argmin(drops))])
        truth.append(_accuracy(*_fit(data, masked), data, "test"))
    rng = np.random.default_rng(seed + 1)
    random_curves = []
    for _ in range(random_orders):
        order = list(rng.permutation(FEATURES))
        random_curves.append([start] + [_accuracy(*_fit(data, order[:m]), data, "test") for m in range(1, FEATURES + 1)])
    random = [float(v) for v in np.mean(random_curves, axis=0)]
    ratios = [100 * m / FEATURES for m in range(FEATURES + 1)]
    return {"ratios": ratios, "plain": plain, "recursive": recursive, "ground_truth": truth, "random": random,
            "racu": {name: racu(ratios, curve, random) for name, curve in
                     (("plain", plain), ("recursive", recursive), ("ground_truth", truth))},
            "gap_to_truth": {name: _area(ratios, np.abs(np.array(curve) - np.array(truth))) / 100
                             for name, curve in (("plain", plain), ("recursive", recursive))}}


def _area(x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return float(np.sum(np.diff(x) * (y[:-1] + y[1:]) / 2))
