"""Recursive ROAR: RACU, masking, importance measures, the paper's data sizes, the synthetic check, a micro run."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, require_shared_data
import torch
from typer.testing import CliRunner

from l2v.cli import app
from l2v.roar.data import MASK
from l2v.roar.importance import importance
from l2v.roar.masking import grow_mask, masked_count
from l2v.roar.models import AttentionClassifier, PairedAttentionClassifier
from l2v.roar.racu import mean_with_ci, racu


@pytest.fixture(scope="module")
def roar_data() -> Path:
    require_shared_data("roar/sst_trees/train.txt")
    return SHARED_DATA / "roar"


def test_racu_worked_example_and_edges():
    b = [.90, .86, .72, .61, .55, .50, .45, .38, .29, .24, .20]
    p = [.90, .70, .45, .32, .29, .28, .27, .24, .20, .20, .20]
    assert racu(range(0, 101, 10), p, b) == pytest.approx(0.5238, abs=5e-5)
    assert racu(range(0, 101, 10), b, b) == 0.0
    assert np.isnan(racu([0, 50, 100], [.5, .5, .5], [.5, .5, .5]))  # random loses nothing: undefined
    assert racu(range(0, 101, 10), [.2] * 11, b) == 1.0  # clipped: drops at once to random's floor
    assert racu(range(0, 101, 10), [.95] + [.99] * 9 + [.2], b) == -1.0  # worse than random, clipped
    mean, low, high = mean_with_ci([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and 0.2 <= low < mean < high <= 0.6
    with pytest.raises(ValueError):
        racu([0, 100], [1.0], [1.0, 0.5])


def test_masking_counts_already_masked_tokens_and_replaces_never_deletes():
    tokens = [10, 11, MASK, 13, 14, 15, 16, 17, 18, 19]
    scores = np.array([0.1, 0.9, 5.0, 0.3, 0.8, 0.2, 0.7, 0.0, 0.0, 0.5])
    grown = grow_mask(tokens, scores, 30, MASK)
    assert len(grown) == len(tokens)
    assert [i for i, t in enumerate(grown) if t == MASK] == [1, 2, 4]  # 3 in all: the masked one counts
    assert grow_mask(grown, scores, 30, MASK) == grown  # idempotent at the same ratio
    assert grow_mask(tokens, np.zeros(10), 20, MASK)[:2] == [MASK, 11]  # ties: the earlier position first
    eligible = np.array([False] + [True] * 9)
    assert grow_mask(tokens, scores, 100, MASK, eligible)[0] == 10  # an ineligible position is never masked
    assert masked_count(30, 10) == 3 and masked_count(70, 10) == 7
    assert masked_count(70, 90) == 62  # the paper's int(k/100 * n), floating point included


def _tiny_batch(paired: bool):
    torch.manual_seed(0)
    tokens = torch.randint(3, 40, (3, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4]).bool()
    tokens[~mask] = 0
    labels = torch.tensor([0, 1, 1])
    model = (PairedAttentionClassifier(40, 2, 8, 4) if paired else AttentionClassifier(40, 2, 8, 4)).eval()
    questions = torch.randint(3, 40, (3, 4)) if paired else None
    question_mask = torch.ones(3, 4, dtype=torch.bool) if paired else None
    return model, tokens, mask, labels, questions, question_mask


@pytest.mark.parametrize("paired", [False, True])
def test_importance_measures_by_their_definitions(paired):
    model, tokens, mask, labels, questions, question_mask = _tiny_batch(paired)
    embedded = model.embedding(tokens).detach().requires_grad_(True)
    logits, alpha = model.forward_embedded(embedded, mask, questions, question_mask)
    logits.gather(1, labels[:, None]).sum().backward()
    g = embedded.grad
    # gradient w.r.t. the one-hot input = E g; its L2 norm, computed the long way
    one_hot_grad = torch.einsum("vd,bld->blv", model.embedding.weight.detach(), g)
    expected = {"attention": alpha.detach(), "gradient": one_hot_grad.norm(dim=-1),
                "input_x_gradient": (g * embedded.detach()).sum(-1).abs()}
    for measure, reference in expected.items():
        got = importance(model, tokens, mask, labels, measure, questions, question_mask)
        assert torch.allclose(got[mask], reference[mask], atol=1e-5), measure
        assert torch.isinf(got[~mask]).all()
    textbook = importance(model, tokens, mask, labels, "integrated_gradient", questions, question_mask, ig_steps=50, ig_variant="textbook")
    official = importance(model, tokens, mask, labels, "integrated_gradient", questions, question_mask, ig_steps=50)
    # completeness (textbook IG): the per-token terms (signed, before |.|) sum to F(x) - F(0)
    total = torch.zeros_like(embedded, dtype=torch.float32)
    for step in range(1, 51):
        point = (embedded.detach() * step / 50).requires_grad_(True)
        out, _ = model.forward_embedded(point, mask, questions, question_mask)
        (grad,) = torch.autograd.grad(out.gather(1, labels[:, None]).sum(), point)
        total += grad
    signed = ((total / 50) * embedded.detach()).sum(-1).masked_fill(~mask, 0).sum(1)
    zero, _ = model.forward_embedded(torch.zeros_like(embedded), mask, questions, question_mask)
    gap = (logits - zero).gather(1, labels[:, None]).squeeze(1).detach()
    assert torch.allclose(signed, gap, atol=0.05 * gap.abs().max() + 1e-3)
    assert torch.allclose(textbook[mask], ((total / 50) * embedded.detach()).sum(-1).abs()[mask], atol=1e-5)
    assert not torch.allclose(textbook[mask], official[mask])  # the official variant carries the extra alpha
    first = importance(model, tokens, mask, labels, "random", generator=torch.Generator().manual_seed(1))
    again = importance(model, tokens, mask, labels, "random", generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and torch.isinf(first[~mask]).all()


def test_bilstm_equals_a_packed_bidirectional_lstm_and_loads_its_weights():
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from l2v.roar.models import _BiLSTM

    torch.manual_seed(0)
    packed_lstm = nn.LSTM(6, 5, batch_first=True, bidirectional=True)
    torch.manual_seed(0)
    ours = _BiLSTM(6, 5)  # the same draws as the bidirectional module, in the same order
    assert all(torch.equal(a, b) for a, b in zip(packed_lstm.parameters(), ours.parameters()))
    loaded = _BiLSTM(6, 5)
    loaded.load_state_dict({f"lstm.{k}": v for k, v in packed_lstm.state_dict().items()})  # a cached model's keys
    assert all(torch.equal(a, b) for a, b in zip(packed_lstm.parameters(), loaded.parameters()))

    lengths = torch.tensor([7, 3, 1, 5])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    embedded = torch.randn(4, 7, 6, requires_grad=True)
    output, (final, _) = packed_lstm(pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False))
    expected, _ = pad_packed_sequence(output, batch_first=True, total_length=7)
    expected_final = torch.cat([final[0], final[1]], -1)
    states, final_states = ours(embedded, mask)
    assert torch.allclose(states, expected, atol=1e-6) and torch.allclose(final_states, expected_final, atol=1e-6)
    assert (states[~mask] == 0).all()
    weights = torch.randn_like(states)
    (expected * weights).sum().backward()
    expected_grad, embedded.grad = embedded.grad, None
    (states * weights).sum().backward()
    assert torch.allclose(embedded.grad, expected_grad, atol=1e-6)


def test_paper_data_sizes(roar_data):
    from l2v.roar.data import load

    sst = load("sst", roar_data)
    assert {k: len(v) for k, v in sst.splits.items()} == {"train": 6579, "validation": 848, "test": 1776}
    assert set(sst.splits["train"].labels.tolist()) == {0, 1}
    for task in ("babi-1", "babi-2"):
        babi = load(task, roar_data)
        assert {k: len(v) for k, v in babi.splits.items()} == {"train": 8500, "validation": 1500, "test": 1000}
        assert babi.paired and len(babi.classes) == 6


def test_limited_data_is_a_seeded_sample_in_file_order(roar_data):
    """``limit`` (micro runs, ``--limit-*``) samples: SST's first 500 test sentences are 93 % one label."""
    from l2v.roar.data import load

    sst = load("sst", roar_data)
    assert sst.splits["test"].labels[:500].mean() > 0.9 or sst.splits["test"].labels[:500].mean() < 0.1
    small = sst.limit(300, 500)
    assert {k: len(v) for k, v in small.splits.items()} == {"train": 300, "validation": 500, "test": 500}
    assert 0.3 < small.splits["test"].labels.mean() < 0.7
    assert small.signature() == sst.limit(300, 500).signature()  # seeded
    assert sst.limit(None, None).signature() == sst.signature()
    full = {tuple(t): i for i, t in enumerate(sst.splits["train"].tokens)}
    positions = [full[tuple(t)] for t in small.splits["train"].tokens]
    assert positions == sorted(positions)  # file order kept
    babi = load("babi-1", roar_data)
    sample = babi.splits["test"].sample(50)  # story, question and answer stay together
    pairs = {(tuple(s), tuple(q)): y for s, q, y in zip(babi.splits["test"].tokens, babi.splits["test"].questions,
                                                        babi.splits["test"].labels)}
    assert all(pairs[(tuple(s), tuple(q))] == y for s, q, y in zip(sample.tokens, sample.questions, sample.labels))
    copy = sst.splits["test"].sample(10_000)
    copy.tokens[0] = [3]
    assert sst.splits["test"].tokens[0] != [3]  # a copy, even when it keeps everything


def test_bad_files_are_named(tmp_path):
    from l2v.errors import InputFileError
    from l2v.roar.data import read_babi, read_sst_trees

    (tmp_path / "bad.txt").write_text("(3 (2 fine) (4 good))\nnot a tree\n")
    with pytest.raises(InputFileError, match="line 2 is not a PTB tree"):
        read_sst_trees(tmp_path / "bad.txt")
    (tmp_path / "qa.txt").write_text("1 Mary moved to the bathroom.\n2 Where is Mary? \t\t1\n")
    with pytest.raises(InputFileError, match="line 2 is a question without an answer"):
        read_babi(tmp_path / "qa.txt")


def test_synthetic_recursive_roar_follows_the_ground_truth_and_plain_roar_does_not():
    from l2v.roar.synthetic import run

    result = run(seed=0, samples=2000)
    assert result["gap_to_truth"]["recursive"] < 0.5 * result["gap_to_truth"]["plain"]
    assert result["racu"]["recursive"] > result["racu"]["plain"] + 0.1
    assert abs(result["racu"]["recursive"] - result["racu"]["ground_truth"]) < 0.1


def test_micro_run_on_sst_is_cached_and_resumes(roar_data, tmp_path):
    out = tmp_path / "roar"
    args = ["roar", "run", "--dataset", "sst", "--data", roar_data, "--output", out, "--seeds", "0",
            "--measures", "attention,integrated_gradient", "--limit-train", 300, "--limit-eval", 100, "--epochs", 1,
            "--ratios", "0,50,100", "--ig-steps", 4]
    runner = CliRunner()
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    steps = sorted(str(p.relative_to(out)) for p in out.rglob("result.json"))
    assert steps == ["sst/seed-0/attention-recursive/k050/result.json", "sst/seed-0/base/result.json",
                     "sst/seed-0/integrated_gradient-recursive/k050/result.json", "sst/seed-0/random/k050/result.json",
                     "sst/seed-0/random/k100/result.json"]
    half = json.loads((out / "sst/seed-0/attention-recursive/k050/result.json").read_text())
    assert 0.45 <= half["masked_fraction"] <= 0.5
    full = json.loads((out / "sst/seed-0/random/k100/result.json").read_text())
    assert full["masked_fraction"] == 1.0
    (out / "sst/seed-0/random/k100/result.json").unlink()  # as if killed before that step finished
    before = (out / "sst/seed-0/base/result.json").stat().st_mtime_ns
    again = runner.invoke(app, [str(a) for a in args])
    assert again.exit_code == 0, again.output
    assert (out / "sst/seed-0/base/result.json").stat().st_mtime_ns == before  # cached steps are not recomputed
    assert "random k=100" in again.output and "attention" not in again.output.split("done")[0]
    report = runner.invoke(app, ["roar", "report", str(out)])
    assert report.exit_code == 0, report.output
    assert (out / "curves.png").exists()
    rows = json.loads((out / "racu.json").read_text())["racu"]
    assert sorted(r["measure"] for r in rows) == ["attention", "integrated_gradient"]
    for row in rows:  # a defined RACU for seed 0, or (a degenerate micro run) undefined, and said so
        assert (row["seeds"] == [0] and row["undefined_seeds"] == []) or (row["seeds"] == [] and row["undefined_seeds"] == [0])
    assert "| sst | attention | recursive |" in (out / "racu.md").read_text()
    other = runner.invoke(app, [str(a) for a in args[:-2]] + ["--ig-steps", "8"])
    assert other.exit_code == 2 and "other ig_steps" in other.output
    for option, value in (("--epochs", "0"), ("--limit-train", "0"), ("--ratios", ",")):
        bad = runner.invoke(app, [str(a) for a in args] + [option, value])
        assert bad.exit_code == 2 and option in bad.output, (option, bad.output)


def test_cached_runs_are_tied_to_their_data_locked_and_kept_apart(roar_data, tmp_path):
    """A cache folder refuses other data of the same sizes; two processes cannot compute one seed; a smaller run kept
    inside the report folder is its own row, not extra seeds of the main run."""
    from l2v.errors import L2VError
    from l2v.roar.data import load
    from l2v.roar.report import collect, racu_table
    from l2v.roar.runner import RoarRun, run, seed_lock
    from l2v.roar.training import TrainSettings

    data = load("sst", roar_data).limit(120, 40)
    options = dict(settings=TrainSettings(epochs=1, batch_size=32), ratios=[0, 50, 100], log=lambda *_: None)
    run(data, tmp_path / "roar", ["attention"], [0], **options)
    changed = data.limit(120, 40)
    changed.splits["train"].tokens[5] = list(reversed(changed.splits["train"].tokens[5])) + [3]
    with pytest.raises(L2VError, match="other data"):
        RoarRun(changed, tmp_path / "roar", **options)
    with seed_lock(tmp_path / "roar" / "sst" / "seed-0"):
        with pytest.raises(L2VError, match="another process"):
            run(data, tmp_path / "roar", ["attention"], [0], **options)
    run(data.limit(100, 40), tmp_path / "roar" / "micro", ["attention"], [0], **options)
    results = collect(tmp_path / "roar")
    assert {r["run"] for r in results} == {"sst", "micro/sst"}
    rows = racu_table(results)
    assert sorted(r["dataset"] for r in rows) == ["sst [micro/sst]", "sst [sst]"]
    assert all(r["seeds"] + r["undefined_seeds"] == [0] for r in rows)


def test_encoder_classifier_roar_micro_run(roar_data, tiny_llama_folder, tmp_path):
    """The l2v-encoder variant end to end on a tiny model: masking uses the model's mask token, gradients go
    through the encoder, the head is refitted at each step, and the report has the encoder's RACU rows."""
    import torch

    from l2v import Encoder
    from l2v.roar.encoder_classifier import EncoderBackend, EncoderClassifier, sst_for_encoder
    from l2v.roar.report import write_report
    from l2v.roar.runner import run

    encoder = Encoder.from_pretrained(str(tiny_llama_folder), attn_implementation="eager", max_length=32)
    data = sst_for_encoder(roar_data / "sst_trees", encoder, limit_train=120, limit_eval=40)
    # a limited split is a seeded sample with both classes in it, not the split's first (nearly one-class) rows
    for split in data.splits.values():
        assert 0.2 < np.mean(split.labels) < 0.8
    assert data.signature() == sst_for_encoder(roar_data / "sst_trees", encoder, limit_train=120, limit_eval=40).signature()
    backend = EncoderBackend(encoder, "tiny", ig_steps=3, mask_token="<s>")  # the tiny vocabulary has no "_"
    assert backend.mask_id == encoder.tokenizer.convert_tokens_to_ids("<s>")
    # gradients reach the input embeddings through the encoder, and attention is the last layer's
    classifier = EncoderClassifier(encoder, 2)
    split = data.splits["test"].sample(3)
    rows = split.tokens
    width = max(len(r) for r in rows)
    tokens = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]).bool()
    scores = backend.score(classifier, split, "gradient", seed=0)
    assert all(np.isfinite(s).all() and (s > 0).any() for s in scores)
    classifier.want_attention = True
    _, alpha = classifier(tokens, mask)
    assert torch.isfinite(alpha).all() and (alpha[mask] > 0).all() and (alpha[~mask] == 0).all()
    # the head is deterministic (lbfgs on a frozen encoder): a seed varies it through a bootstrap resample
    heads = [backend.train(data, seed)[0].output.weight for seed in (0, 1)]
    assert not torch.allclose(heads[0], heads[1])
    results = run(data, tmp_path / "roar", ["gradient", "attention"], [0], backend=backend, ratios=[0, 50, 100], log=lambda *_: None)
    assert {r["measure"] for r in results} == {"base", "random", "gradient", "attention"}
    half = next(r for r in results if r["measure"] == "gradient" and r["k"] == 50)
    assert 0.4 <= half["masked_fraction"] <= 0.5
    write_report(tmp_path / "roar")
    table = (tmp_path / "roar" / "racu.md").read_text()
    assert "| sst (encoder-tiny) | gradient | recursive |" in table
    # the explained model is the fitted one: its logits give the head's probabilities on the test split
    model = backend.load(__import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(tmp_path / "roar" / "sst-encoder-tiny" / "seed-0" / "gradient-recursive" / "k050" / "model.safetensors")), data)
    from l2v.roar.training import predict

    masked = json.loads((tmp_path / "roar" / "sst-encoder-tiny" / "seed-0" / "gradient-recursive" / "k050" / "result.json").read_text())
    from l2v.roar.runner import _load_masks

    k50 = _load_masks(tmp_path / "roar" / "sst-encoder-tiny" / "seed-0" / "gradient-recursive" / "k050", data)
    probabilities = predict(model, k50.splits["test"], torch.device("cpu"), batch_size=8)
    accuracy = float((probabilities.argmax(1) == k50.splits["test"].labels).mean())
    assert accuracy == pytest.approx(masked["test"]["accuracy"], abs=1e-9)
    assert (tmp_path / "roar" / "sst-encoder-tiny" / "seed-0" / "gradient-recursive" / "k050" / "model.safetensors").exists()


def test_recursive_chain_resumes_from_its_latest_model(roar_data, tmp_path):
    """A run killed while training k=60 resumes: k=60 is scored with the k=30 model kept on disk, and every
    result equals an uninterrupted run's; a chain whose model is gone is a clear error. Plain ROAR caches the
    k=0 model's scores."""
    from l2v.roar.data import load
    from l2v.roar.runner import RoarRun
    from l2v.roar.training import TrainSettings

    data = load("sst", roar_data).limit(200, 60)
    settings = TrainSettings(epochs=1, batch_size=32)

    def roar(folder):
        return RoarRun(data, folder, settings, ig_steps=2, ratios=[0, 30, 60, 100], log=lambda *_: None)

    whole = roar(tmp_path / "whole").measure(0, "gradient", recursive=True)
    assert [r["k"] for r in whole] == [0, 30, 60, 100]
    killed = roar(tmp_path / "killed")
    train = killed.backend.train

    def dies_at_k60(split_data, seed):
        if seed % 1_000_003 == 60 * 101:
            raise KeyboardInterrupt("killed")
        return train(split_data, seed)

    killed.backend.train = dies_at_k60
    with pytest.raises(KeyboardInterrupt):
        killed.measure(0, "gradient", recursive=True)
    chain = tmp_path / "killed" / "sst" / "seed-0" / "gradient-recursive"
    assert (chain / "k030" / "model.safetensors").exists() and not (chain / "k060").exists()
    resumed = roar(tmp_path / "killed").measure(0, "gradient", recursive=True)
    assert [r["performance"] for r in resumed] == [r["performance"] for r in whole]
    assert not (chain / "k030" / "model.safetensors").exists()  # only the chain's latest model is kept
    import shutil

    shutil.rmtree(chain / "k060")  # invalidate k=60: its scorer (the k=30 model) is gone
    with pytest.raises(Exception, match="no model to score the next step"):
        roar(tmp_path / "killed").measure(0, "gradient", True)
    plain = roar(tmp_path / "whole").measure(0, "attention", False)
    assert (tmp_path / "whole" / "sst" / "seed-0" / "attention-plain" / "importance.npz").exists()
    fractions = [r["masked_fraction"] for r in plain]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
