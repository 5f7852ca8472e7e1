"""Word-level probes, as in the LLM2Vec paper's word-level experiments: the encoder is frozen, one layer's token
states (the last by default) become one vector per word (sub-token states averaged, or the first sub-token),
and a linear probe (logistic regression) is trained on CoNLL-2003 train and scored on test.

POS and chunking report token accuracy; NER also reports entity-level F1 (seqeval, IOB2), the paper's metric.
For MNTP-trained models ``read_previous`` reads each word from the position before it, as the paper does.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from .data import read_conll_jsonl


def evaluate_word_level(model, train_path, test_path, tag: str = "pos", layer: int = -1, subword: str = "mean",
                        read_previous: bool = False, max_train_sentences: int | None = None,
                        max_test_sentences: int | None = None, max_iter: int = 200, seed: int = 0) -> dict:
    if tag not in ("pos", "chunk", "ner"):
        raise ValueError(f"unknown word-level tag {tag!r}; choose pos, chunk or ner")
    train = read_conll_jsonl(train_path)[:max_train_sentences]
    test = read_conll_jsonl(test_path)[:max_test_sentences]
    for name, split in (("train", train), ("test", test)):
        if any(tag not in s.tags for s in split):
            raise ValueError(f"{train_path if name == 'train' else test_path}: some sentences have no {tag!r} tags")
    train_features = model.word_features([s.tokens for s in train], layer=layer, subword=subword, read_previous=read_previous)
    test_features = model.word_features([s.tokens for s in test], layer=layer, subword=subword, read_previous=read_previous)
    x_train = np.concatenate(train_features)
    y_train = np.concatenate([s.tags[tag] for s in train])
    x_test = np.concatenate(test_features)
    y_test = np.concatenate([s.tags[tag] for s in test])
    scaler = StandardScaler().fit(x_train)
    probe = LogisticRegression(max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():  # not converging within max_iter is recorded in the result, not printed
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(scaler.transform(x_train), y_train)
    predicted = probe.predict(scaler.transform(x_test))
    result = {
        "main_metric": "entity_f1" if tag == "ner" else "accuracy",
        "accuracy": 100 * float((predicted == y_test).mean()),
        "n_examples": int(len(y_test)),
        "n_sentences": len(test),
        "train_tokens": int(len(y_train)),
        "probe": {"layer": layer, "subword": subword, "read_previous": read_previous, "max_iter": max_iter,
                  "converged": bool(int(max(probe.n_iter_)) < max_iter)},
    }
    if tag == "ner":
        sequences, cursor = [], 0
        for sentence in test:
            sequences.append(list(predicted[cursor: cursor + len(sentence.tokens)]))
            cursor += len(sentence.tokens)
        from seqeval.metrics import f1_score as entity_f1  # only NER needs it

        result["entity_f1"] = 100 * float(entity_f1([s.tags["ner"] for s in test], sequences, mode=None))
    return result
