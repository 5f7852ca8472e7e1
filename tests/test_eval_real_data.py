"""Evaluation on the real shared data sets (../shared/data, or $L2V_DATA). CI has them; on a machine without
them these tests are skipped, except under CI=true, where a missing data folder is a failure."""

from pathlib import Path

import pytest
from conftest import SHARED_DATA, require_shared_data

from l2v.evaluate import EvalModel
from l2v.evaluate.data import read_beir, read_conll_jsonl, read_sts
from l2v.evaluate.sts import evaluate_sts


@pytest.fixture(scope="module")
def data() -> Path:
    require_shared_data("sts/stsb_test.tsv")
    return SHARED_DATA


def test_loaders_give_the_documented_sizes(data):
    assert len(read_sts(data / "sts" / "stsb_test.tsv").scores) == 1379
    assert len(read_sts(data / "sts" / "sickr_test.tsv").scores) == 4927
    conll = read_conll_jsonl(data / "word_level" / "conll2003_test.jsonl")
    assert len(conll) == 3453 and sum(len(s.tokens) for s in conll) == 46435
    assert len(read_beir(data / "retrieval" / "scifact", "test").queries) == 300


@pytest.mark.slow
def test_minilm_stsb_reproduces_82_and_equals_mteb(data):
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
    from mteb_reference import mteb_sts_spearman
    from sentence_transformers import SentenceTransformer

    model = EvalModel.load("minilm-l6")
    ours = evaluate_sts(model, data / "sts" / "stsb_test.tsv")["cosine_spearman"]
    assert ours == pytest.approx(82.0, abs=0.3)
    sts = read_sts(data / "sts" / "stsb_test.tsv")
    theirs = mteb_sts_spearman(SentenceTransformerEncoderWrapper(SentenceTransformer(model_folder())),
                               sts.sentences1, sts.sentences2, sts.scores)
    assert ours == pytest.approx(theirs, abs=1e-4)


def model_folder() -> str:
    from l2v.registry import resolve

    return resolve("minilm-l6").location


def test_supervised_triples_come_from_training_splits_only(data, tmp_path):
    from l2v.evaluate.data import read_pairs_with_labels
    from l2v.train.pairs import build_triples

    triples = build_triples(data)
    counts = {}
    for triple in triples:
        counts[triple["dataset"]] = counts.get(triple["dataset"], 0) + 1
        assert triple["negative"] not in (triple["query"], triple["positive"])
    assert set(counts) == {"stsb", "sickr", "mrpc", "scifact"} and min(counts.values()) > 500
    test_pairs = set()
    for path in (data / "sts" / "stsb_test.tsv", data / "sts" / "sickr_test.tsv"):
        sts = read_sts(path)
        test_pairs |= set(zip(sts.sentences1, sts.sentences2))
    mrpc = read_pairs_with_labels(data / "pair_classification" / "mrpc_test.tsv")
    test_pairs |= set(zip(mrpc.sentences1, mrpc.sentences2))
    both_ways = test_pairs | {(b, a) for a, b in test_pairs}
    assert not [t for t in triples if (t["query"], t["positive"]) in both_ways]
    assert not [t for t in triples if (t["query"], t["negative"]) in both_ways]  # nor as a hard negative
    test_claims = set(read_beir(data / "retrieval" / "scifact", "test").queries.values())
    assert not [t for t in triples if t["dataset"] == "scifact" and t["query"] in test_claims]
