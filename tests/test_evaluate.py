"""Evaluation: metrics against references, file errors, the cache, reports, the CLI and the mteb adapter."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from l2v.cli import app
from l2v.errors import InputFileError
from l2v.evaluate import EvalModel, select_tasks
from l2v.evaluate.classification import _undersample, evaluate_classification
from l2v.evaluate.clustering import evaluate_clustering
from l2v.evaluate.data import read_beir, read_conll_jsonl, read_sts, read_tsv
from l2v.evaluate.pair_classification import best_accuracy
from l2v.evaluate.retrieval import exact_search, retrieval_metrics
from l2v.evaluate.word_level import evaluate_word_level


class TableModel:
    """A stand-in model whose embedding of a text is given by a table (or derived from its label)."""

    def __init__(self, table, dimension):
        self.table, self.dimension, self.calls = table, dimension, 0

    def encode(self, texts, instruction=""):
        self.calls += 1
        return np.stack([self.table(t) for t in texts]).astype(np.float32) if texts else np.zeros((0, self.dimension))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_best_accuracy_equals_a_brute_force_threshold_sweep():
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=60), rng.integers(0, 2, 60)
    brute = max(((scores >= t) == labels).mean() for t in np.append(scores, np.inf))
    assert best_accuracy(scores, labels) == pytest.approx(brute)


def test_exact_search_matches_full_sort():
    rng = np.random.default_rng(1)
    corpus, queries = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(7, 8)).astype(np.float32)
    scores, indices = exact_search(queries, corpus, k=10, chunk=3)
    full = queries @ corpus.T
    assert np.array_equal(indices, np.argsort(-full, axis=1)[:, :10])
    assert np.allclose(scores, np.sort(full, axis=1)[:, ::-1][:, :10])


def test_retrieval_metrics_by_hand():
    qrels = {"q1": {"d1": 1}, "q2": {"d3": 1, "d4": 1}}
    run = {"q1": {"d2": 0.9, "d1": 0.8}, "q2": {"d3": 0.9, "d5": 0.5, "d4": 0.4}}
    metrics = retrieval_metrics(qrels, run)
    ndcg_q1 = (1 / np.log2(3)) / 1.0
    ndcg_q2 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert metrics["ndcg_at_10"] == pytest.approx(100 * (ndcg_q1 + ndcg_q2) / 2, abs=1e-4)
    assert metrics["mrr_at_10"] == pytest.approx(100 * (0.5 + 1) / 2)
    assert metrics["recall_at_100"] == pytest.approx(100.0)


def test_classification_follows_the_mteb_protocol(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["text\tlabel"] + [f"sentence {i}\t{i % 3}" for i in range(90)]
    train = write(tmp_path / "train.tsv", "\n".join(lines) + "\n")
    test = write(tmp_path / "test.tsv", "\n".join(["text\tlabel"] + [f"test {i}\t{i % 3}" for i in range(30)]) + "\n")
    centres = rng.normal(size=(3, 6))
    model = TableModel(lambda t: centres[int(t.split()[1]) % 3] + 0.01 * rng.normal(size=6), 6)
    result = evaluate_classification(model, train, test)
    assert result["accuracy"] == pytest.approx(100.0) and result["f1_macro"] == pytest.approx(100.0)
    assert result["protocol"]["samples_per_label"] == 16 and result["protocol"]["n_experiments"] == 10
    picked = _undersample(np.array([i % 3 for i in range(90)]), 8, np.random.default_rng(0))
    assert len(picked) == 24 and np.bincount(np.array([i % 3 for i in range(90)])[picked]).tolist() == [8, 8, 8]
    cv = evaluate_classification(model, train)
    assert cv["protocol"]["cross_validation_folds"] == 5 and cv["n_examples"] == 90


def test_clustering_of_separated_groups_is_perfect(tmp_path):
    path = write(tmp_path / "c.tsv", "text\tlabel\n" + "".join(f"t{i}\t{i % 4}\n" for i in range(40)))
    centres = np.eye(4) * 10
    result = evaluate_clustering(TableModel(lambda t: centres[int(t[1:]) % 4], 4), path)
    assert result["v_measure"] == pytest.approx(100.0) and result["n_clusters"] == 4


@pytest.mark.parametrize(
    "content,message",
    [
        ("sentence1\tsentence2\n", "no column 'score'"),
        ("sentence1\tsentence2\tscore\na\tb\t1\nc\td\n", "line 3: expected 3 TAB-separated fields, found 2"),
        ("sentence1\tsentence2\tscore\na\tb\tfive\n", "line 2: score 'five' is not a number"),
        ("sentence1\tsentence2\tscore\n", "no data rows"),
    ],
)
def test_malformed_task_files_name_the_line(tmp_path, content, message):
    with pytest.raises(InputFileError, match=message):
        read_sts(write(tmp_path / "sts.tsv", content))


def test_malformed_beir_and_conll(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    write(folder / "corpus.jsonl", '{"_id": "d1", "title": "T", "text": "x"}\n{"_id": "d2" "text": "y"}\n')
    write(folder / "queries.jsonl", '{"_id": "q1", "text": "q"}\n')
    write(folder / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(InputFileError, match="corpus.jsonl: line 2 is not valid JSON"):
        read_beir(folder)
    write(folder / "corpus.jsonl", '{"_id": "d1", "title": "T", "text": "x"}\n')
    write(folder / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td9\t1\n")
    with pytest.raises(InputFileError, match="line 2: corpus-id 'd9' is not in corpus.jsonl"):
        read_beir(folder)
    conll = write(tmp_path / "c.jsonl", '{"tokens": ["a", "b"], "pos": ["DT"]}\n')
    with pytest.raises(InputFileError, match="1 pos tags for 2 tokens"):
        read_conll_jsonl(conll)


@pytest.fixture
def tiny_eval_model(tiny_llama_folder, tmp_path):
    return EvalModel.load(str(tiny_llama_folder), cache_dir=tmp_path / "cache")


def test_cache_encodes_each_distinct_text_once(tiny_eval_model, tiny_llama_folder, tmp_path):
    texts = ["the cat", "paris", "the cat", "a man is playing a guitar"]
    first = tiny_eval_model.encode(texts)
    assert tiny_eval_model.encoded_texts == 3
    again = tiny_eval_model.encode(["paris", "the cat"])
    assert tiny_eval_model.encoded_texts == 3
    assert np.array_equal(again, first[[1, 0]])
    tiny_eval_model.encode(["paris"], instruction="classify the sentiment of the review")
    assert tiny_eval_model.encoded_texts == 4  # an instruction makes a different embedding
    reloaded = EvalModel.load(str(tiny_llama_folder), cache_dir=tmp_path / "cache")
    assert reloaded.fingerprint == tiny_eval_model.fingerprint
    assert np.array_equal(reloaded.encode(texts), first) and reloaded.encoded_texts == 0
    other = EvalModel.load(str(tiny_llama_folder), cache_dir=tmp_path / "cache", pooling="weighted_mean")
    assert other.fingerprint != tiny_eval_model.fingerprint


def test_word_level_probe_runs_on_token_states(tiny_eval_model, tmp_path):
    sentence = {"tokens": ["the", "cat", "sits", "on", "the", "mat"], "pos": ["DT", "NN", "VBZ", "IN", "DT", "NN"],
                "chunk": ["B-NP", "I-NP", "B-VP", "B-PP", "B-NP", "I-NP"], "ner": ["O", "B-MISC", "O", "O", "O", "B-LOC"]}
    lines = "\n".join(json.dumps(sentence) for _ in range(6)) + "\n"
    train, test = write(tmp_path / "train.jsonl", lines), write(tmp_path / "test.jsonl", lines)
    features = tiny_eval_model.word_features([sentence["tokens"]])
    assert features[0].shape == (6, 32)
    previous = tiny_eval_model.word_features([sentence["tokens"]], read_previous=True)
    assert np.allclose(previous[0][1:], tiny_eval_model.word_features([sentence["tokens"]], subword="first")[0][:-1], atol=1e-5)
    # the probed layer is the one asked for: layer 0 (embeddings) is context-free, the last layer is not
    pair = [["a", "cat", "sits"], ["my", "cat", "runs"]]
    first, last = tiny_eval_model.word_features(pair, layer=0), tiny_eval_model.word_features(pair, layer=-1)
    assert np.allclose(first[0][1], first[1][1], atol=1e-6) and not np.allclose(last[0][1], last[1][1], atol=1e-3)
    pos = evaluate_word_level(tiny_eval_model, train, test, tag="pos")
    assert pos["main_metric"] == "accuracy" and pos["accuracy"] == pytest.approx(100.0) and pos["n_examples"] == 36
    ner = evaluate_word_level(tiny_eval_model, train, test, tag="ner")
    assert ner["main_metric"] == "entity_f1" and ner["entity_f1"] == pytest.approx(100.0)


def test_eval_cli_with_user_files_and_compare(tiny_llama_folder, tmp_path):
    sts = write(tmp_path / "sts.tsv", "sentence1\tsentence2\tscore\n" + "".join(
        f"{a}\t{b}\t{s}\n" for a, b, s in [("the cat", "the cat sits", 4), ("paris", "a man is playing a guitar", 0),
                                           ("the dog sleeps", "the cat sleeps", 3), ("paris", "the capital of france", 5)]))
    pairs = write(tmp_path / "pairs.tsv", "sentence1\tsentence2\tlabel\nthe cat\tthe cat sits\t1\nparis\tthe dog\t0\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", str(tiny_llama_folder), f"{tiny_llama_folder}@causal",
                                      "--file", f"sts:{sts}", "--file", f"pair_classification:{pairs}",
                                      "--output", str(out), "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "results.json").read_text())
    assert len(records) == 4 and {r["model"] for r in records} == {str(tiny_llama_folder), f"{tiny_llama_folder}@causal"}
    for record in records:
        assert set(record) >= {"model", "task", "split", "metric", "value", "n_examples", "seconds"}
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "sts:sts.tsv" in (out / "results.md").read_text()
    rerun = CliRunner().invoke(app, ["eval", "-m", str(tiny_llama_folder), "--file", f"sts:{sts}", "--output", str(out)])
    assert rerun.exit_code == 0 and "from" in rerun.output  # the finished (model, task) is reused
    # the narrower rerun keeps the other results in results.json; its table shows only what it was asked for
    after = json.loads((out / "results.json").read_text())
    assert sorted((r["model"], r["task"]) for r in after) == sorted((r["model"], r["task"]) for r in records)
    assert "pair_classification" not in (out / "results.md").read_text() and "@causal" not in (out / "results.md").read_text()


def test_eval_cli_errors_are_one_line(tiny_llama_folder, tmp_path):
    bad = write(tmp_path / "bad.tsv", "sentence1\tsentence2\tscore\na\tb\n")
    result = CliRunner().invoke(app, ["eval", "-m", str(tiny_llama_folder), "--file", f"sts:{bad}", "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "bad.tsv: line 2" in result.output
    result = CliRunner().invoke(app, ["eval", "-m", str(tiny_llama_folder), "--tasks", "sts"])
    assert result.exit_code == 2 and "--tasks needs --data" in result.output
    with pytest.raises(Exception, match="unknown task 'nope'"):
        select_tasks(["nope"], tmp_path, [])


def test_mteb_adapter_passes_mtebs_mock_tasks(tiny_llama_folder):
    import mteb

    from l2v.evaluate.mteb_adapter import L2VMtebEncoder

    results = mteb.mock_run(L2VMtebEncoder(str(tiny_llama_folder)))
    text_results = [status for name, status in results.items() if status is not None]
    assert len(text_results) >= 20 and results.all_passed, results.to_markdown()


def test_read_tsv_keeps_only_named_columns(tmp_path):
    path = write(tmp_path / "t.tsv", "text\tlabel\tfine_label\nwhat is it ?\tDESC\tdef\n")
    assert read_tsv(path, ["text", "label"]) == [["what is it ?", "DESC"]]


def test_sts_equals_mtebs_own_evaluator(tiny_llama_folder, tmp_path):
    from mteb_reference import mteb_sts_spearman

    from l2v.evaluate.mteb_adapter import L2VMtebEncoder
    from l2v.evaluate.sts import evaluate_sts

    rows = [("the cat sits on the mat", "the cat sleeps", 3.2), ("paris", "the capital of france", 4.5),
            ("a man is playing a guitar", "she plays the piano every evening", 1.5), ("the dog sleeps", "the dog", 3.9),
            ("what is the capital of france ?", "paris is the capital of france", 4.0), ("the stock market fell", "a frog", 0.2)]
    path = write(tmp_path / "sts.tsv", "sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows))
    ours = evaluate_sts(EvalModel.load(str(tiny_llama_folder)), path)["cosine_spearman"]
    theirs = mteb_sts_spearman(L2VMtebEncoder(str(tiny_llama_folder)), *map(list, zip(*rows)))
    assert ours == pytest.approx(theirs, abs=1e-6)


def test_cache_is_written_in_chunks(tiny_llama_folder, tmp_path):
    model = EvalModel.load(str(tiny_llama_folder), cache_dir=tmp_path / "cache")
    model.cache_chunk = 2
    writes = []
    original = model.cache.put_many
    model.cache.put_many = lambda *args: (writes.append(len(args[2])), original(*args))
    model.encode(["the cat", "paris", "the dog sleeps", "a man is playing a guitar", "paris"])
    assert writes == [2, 2]  # 4 distinct texts, stored two at a time (an interrupted task keeps them)


def test_task_signature_follows_contents_not_modification_times(tmp_path):
    import os

    from l2v.evaluate.tasks import Task

    data = tmp_path / "pairs.tsv"
    data.write_text("sentence1\tsentence2\tscore\na\tb\t1.0\n")
    task = Task(name="mine", family="sts", split="test", files=[data], run=lambda *a: {})
    first = task.signature()
    os.utime(data, (1_000_000, 1_000_000))  # re-mounted or copied: new times, same bytes
    assert task.signature() == first
    data.write_text("sentence1\tsentence2\tscore\na\tb\t2.0\n")
    assert task.signature() != first
    assert Task(name="mine", family="sts", split="test", files=[data], run=lambda *a: {}, options={"k": 1}).signature() != task.signature()


def test_l2v_options_on_a_sentence_transformers_model_are_refused():
    from l2v.errors import L2VError
    from l2v.evaluate.models import EvalModel

    with pytest.raises(L2VError, match="'minilm-l6' is a sentence-transformers model: l2v options \\(bidirectional\\)"):
        EvalModel.load("minilm-l6", bidirectional=False)
