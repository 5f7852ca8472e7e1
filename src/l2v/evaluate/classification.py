"""Classification with a logistic regression on frozen embeddings, following MTEB's protocol: ``n_experiments``
runs (seed 42 + i), each training on a class-balanced undersample of the training set (``samples_per_label``
per label: 16, as MTEB's EmotionClassification; its abstract default is 8) and scoring the full test set; mean accuracy and macro-F1 (x100) with their
standard deviation. Sets without a split (MR, CR, SUBJ, MPQA) use stratified k-fold cross-validation, each fold
evaluated the same way."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold

from .data import read_labelled_texts


def _undersample(labels: np.ndarray, per_label: int | None, rng: np.random.Generator) -> np.ndarray:
    if per_label is None:
        return np.arange(len(labels))
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen.extend(rng.permutation(members)[:per_label])
    return np.sort(np.asarray(chosen))


def _experiments(train_x, train_y, test_x, test_y, n_experiments, per_label, seed, max_iter) -> list[tuple[float, float]]:
    scores = []
    for i in range(n_experiments):
        rng = np.random.default_rng(seed + i)
        idx = _undersample(train_y, per_label, rng)
        classifier = LogisticRegression(max_iter=max_iter, random_state=seed + i)
        classifier.fit(train_x[idx], train_y[idx])
        predicted = classifier.predict(test_x)
        scores.append((accuracy_score(test_y, predicted), f1_score(test_y, predicted, average="macro")))
    return scores


def evaluate_classification(model, train_path, test_path=None, instruction: str = "", n_experiments: int = 10,
                            samples_per_label: int | None = 16, n_folds: int = 5, seed: int = 42, max_iter: int = 100) -> dict:
    train_texts, train_labels = read_labelled_texts(train_path)
    if test_path is not None:
        test_texts, test_labels = read_labelled_texts(test_path)
        train_y, test_y = np.asarray(train_labels), np.asarray(test_labels)
        needed = sorted({int(j) for i in range(n_experiments) for j in _undersample(train_y, samples_per_label, np.random.default_rng(seed + i))})
        train_x = np.zeros((len(train_texts), model.dimension), dtype=np.float32)
        train_x[needed] = model.encode([train_texts[j] for j in needed], instruction)  # only what is used
        test_x = model.encode(test_texts, instruction)
        scores = _experiments(train_x, train_y, test_x, test_y, n_experiments, samples_per_label, seed, max_iter)
        n_examples = len(test_y)
    else:
        x = model.encode(train_texts, instruction)
        y = np.asarray(train_labels)
        scores = []
        folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        for fold, (train_idx, test_idx) in enumerate(folds.split(x, y)):
            scores += _experiments(x[train_idx], y[train_idx], x[test_idx], y[test_idx], n_experiments,
                                   samples_per_label, seed + 1000 * fold, max_iter)
        n_examples = len(y)
    accuracy = np.array([s[0] for s in scores]) * 100
    f1 = np.array([s[1] for s in scores]) * 100
    return {
        "main_metric": "accuracy",
        "accuracy": float(accuracy.mean()),
        "accuracy_std": float(accuracy.std()),
        "f1_macro": float(f1.mean()),
        "f1_macro_std": float(f1.std()),
        "n_examples": int(n_examples),
        "protocol": {"n_experiments": n_experiments, "samples_per_label": samples_per_label,
                     "cross_validation_folds": None if test_path else n_folds, "max_iter": max_iter},
    }
