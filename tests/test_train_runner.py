"""The training loop: each stage runs end to end on a tiny model, a SIGKILLed run resumes to the same losses,
bad configs and data fail before training, and the result loads as an encoder."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from l2v import Encoder
from l2v.errors import L2VError
from l2v.train.config import load_config
from l2v.train.runner import train

TEXTS = ["the cat sits on the mat while the dog sleeps", "a man is playing a guitar", "paris is the capital of france",
         "she plays the piano every evening", "scientists discovered a new species of frog in the rainforest",
         "the quick brown fox jumps over the lazy dog", "two children are riding bikes in the park",
         "the weather is cold and windy in winter", "he is running to catch the bus", "the chef prepares a delicious meal"]


def write_config(folder: Path, tiny_llama_folder: Path, stage: str, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "texts.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    config = {"stage": stage, "model": str(tiny_llama_folder), "output": str(folder / "run"), "data": {"train": str(data)},
              "batch_size": 4, "steps": 6, "save_every": 2, "max_length": 16, "learning_rate": 1e-3, "seed": 3,
              "lora": {"r": 4, "alpha": 8}, "mntp": {"mask_token": "<unk>"}}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = folder / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "l2v.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


# A crash after a step, as a test hook: the library's on_step_end callback, called by a script run in its own process.
KILL_AFTER = """
import os, signal, sys
from l2v.train.config import load_config
from l2v.train.runner import train
kill_after = int(sys.argv[2])
train(load_config(sys.argv[1]), show_progress=False,
      on_step_end=lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == kill_after else None)
"""


def killed_after(config: Path, step: int):
    return subprocess.run([sys.executable, "-c", KILL_AFTER, str(config), str(step)], capture_output=True, text=True)


@pytest.mark.parametrize("stage", ["mntp", "simcse"])
def test_a_sigkilled_run_resumes_to_the_same_losses(tmp_path, tiny_llama_folder, stage):
    straight = write_config(tmp_path / "a", tiny_llama_folder, stage)
    assert cli("train", stage, "--config", straight, "--no-progress").returncode == 0
    killed = write_config(tmp_path / "b", tiny_llama_folder, stage)
    crashed = killed_after(killed, 3)
    assert crashed.returncode == -9  # SIGKILL
    assert len(losses(tmp_path / "b" / "run")) == 3 and not (tmp_path / "b" / "run" / "encoder").exists()
    resumed = cli("train", stage, "--config", killed, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "step-00000002" in resumed.stderr
    assert losses(tmp_path / "b" / "run") == losses(tmp_path / "a" / "run")
    assert len(losses(tmp_path / "a" / "run")) == 6
    assert (tmp_path / "a" / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_a_finished_run_rerun_reuses_its_encoder_without_rewriting_it(tmp_path, tiny_llama_folder):
    """Rerunning a finished stage (a second recipe sharing it, or the same command again) leaves its encoder as it
    is: two recipes started together used to rewrite it at once and one failed on the other's temporary folder."""
    config = write_config(tmp_path, tiny_llama_folder, "mntp", steps=2)
    assert cli("train", "mntp", "--config", config, "--no-progress").returncode == 0
    adapter = tmp_path / "run" / "encoder" / "adapter" / "adapter_model.safetensors"
    before = (adapter.stat().st_ino, adapter.stat().st_mtime_ns, adapter.read_bytes())
    again = cli("train", "mntp", "--config", config, "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "already trained (2 steps, same config): reusing it" in again.stderr
    assert (adapter.stat().st_ino, adapter.stat().st_mtime_ns, adapter.read_bytes()) == before
    assert len(losses(tmp_path / "run")) == 2
    # a run finished before the marker existed: recognised from its last checkpoint, and marked
    (tmp_path / "run" / "finished.json").unlink()
    marked = cli("train", "mntp", "--config", config, "--no-progress")
    assert marked.returncode == 0 and "already trained (2 steps): reusing it" in marked.stderr
    assert (tmp_path / "run" / "finished.json").exists() and adapter.stat().st_mtime_ns == before[1]
    # its checkpoints deleted (they are the big files), the finished run is still recognised and reused
    import shutil

    shutil.rmtree(tmp_path / "run" / "checkpoints")
    third = cli("train", "mntp", "--config", config, "--no-progress")
    assert third.returncode == 0 and "same config): reusing it" in third.stderr
    assert (adapter.stat().st_ino, adapter.stat().st_mtime_ns) == before[:2]
    # another config in the same folder is not mistaken for it: it trains
    changed = write_config(tmp_path, tiny_llama_folder, "mntp", steps=2, learning_rate=5e-4)
    retrained = cli("train", "mntp", "--config", changed, "--no-progress")
    assert retrained.returncode == 0 and "reusing it" not in retrained.stderr
    assert adapter.read_bytes() != before[2]


def test_mntp_then_simcse_chain_gives_an_encoder(tmp_path, tiny_llama_folder, sentences):
    mntp = load_config(write_config(tmp_path / "m", tiny_llama_folder, "mntp", steps=4))
    mntp_encoder = train(mntp, show_progress=False, log=lambda *_: None)
    assert (mntp_encoder / "adapter" / "adapter_model.safetensors").exists()
    base = Encoder.from_pretrained(str(tiny_llama_folder)).encode(sentences)
    after_mntp = Encoder.from_pretrained(str(mntp_encoder)).encode(sentences)
    assert np.abs(after_mntp - base).max() > 1e-4  # the adapters changed something
    simcse = load_config(write_config(tmp_path / "s", tiny_llama_folder, "simcse", steps=4,
                                      adapters=[str(mntp_encoder / "adapter")]))
    final = train(simcse, show_progress=False, log=lambda *_: None)
    config = json.loads((final / "l2v_config.json").read_text())
    assert config["merged_adapters"] == ["merged_adapter_0"] and config["adapters"] == "adapter"
    # trained at max_length 16, saved for encoding at the inference default
    assert config["max_length"] == 512 and json.loads((mntp_encoder / "l2v_config.json").read_text())["max_length"] == 512
    encoder = Encoder.from_pretrained(str(final))
    vectors = encoder.encode(sentences)
    assert np.isfinite(vectors).all() and np.abs(vectors - after_mntp).max() > 1e-5
    merged = encoder.save(tmp_path / "merged", merge_adapters=True)
    assert np.abs(Encoder.from_pretrained(str(merged)).encode(sentences) - vectors).max() < 1e-4


def test_supervised_with_grad_cache_runs(tmp_path, tiny_llama_folder):
    triples = tmp_path / "triples.jsonl"
    rows = [{"query": TEXTS[i], "positive": TEXTS[(i + 1) % 10], "negative": TEXTS[(i + 5) % 10],
             "instruction": "retrieve documents that answer the question", "dataset": "ab"[i % 2]} for i in range(10)]
    triples.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = load_config(write_config(tmp_path, tiny_llama_folder, "supervised", data={"train": str(triples)},
                                      batch_size=4, steps=3, contrastive={"chunk_size": 2}))
    final = train(config, show_progress=False, log=lambda *_: None)
    assert len(losses(tmp_path / "run")) == 3 and (final / "adapter").exists()


def test_each_stage_loss_equals_the_padded_full_batch(tmp_path, tiny_llama_folder):
    """The runner's length-grouped MNTP and SimCSE passes and its length-sorted GradCache chunks compute the
    loss (and gradients) of the plain padded batch: checked with dropout off, on a batch of mixed lengths."""
    import torch

    from l2v.train.mntp import MaskingConfig, mask_for_mntp, mntp_loss
    from l2v.train.runner import load_objective, trainable_parameters
    from l2v.train.simcse import set_dropout

    def grads(module):
        return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    def no_dropout(objective):
        set_dropout(objective.encoder.model, attention_dropout=0.0, hidden_dropout=0.0)
        objective.encoder.train()

    # MNTP: grouped == the full-vocabulary-free loss on the padded batch with the same masks
    config = load_config(write_config(tmp_path / "m", tiny_llama_folder, "mntp", batch_size=6, lora={"dropout": 0.0}))
    objective = load_objective(config)
    no_dropout(objective)
    batch = [objective.examples[i] for i in [0, 3, 1, 7, 2, 5]]
    seed = 11
    encoder = objective.encoder
    grouped = objective.loss(encoder, batch, seed)
    features = encoder.collate(encoder.tokenize(batch), padding_side="right")
    special = features["pooling_mask"].eq(0) & features["attention_mask"].bool()
    corrupted, labels = mask_for_mntp(features["input_ids"], features["attention_mask"], special, objective.mask_id,
                                      objective.vocab_size, MaskingConfig(probability=0.2),
                                      torch.Generator().manual_seed(seed ^ 0x5DEECE66D))
    padded = mntp_loss(encoder, encoder.lm_head, corrupted, features["attention_mask"], labels)
    assert grouped.item() == pytest.approx(padded.item(), rel=1e-5)

    # supervised: GradCache over length-sorted chunks == one plain pass, loss and gradients
    triples = tmp_path / "triples.jsonl"
    rows = [{"query": TEXTS[i], "positive": TEXTS[(i + 1) % 10], "negative": TEXTS[(i + 5) % 10],
             "instruction": "retrieve documents that answer the question", "dataset": "x"} for i in range(10)]
    triples.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    results = {}
    for chunk in (0, 2):
        config = load_config(write_config(tmp_path / f"s{chunk}", tiny_llama_folder, "supervised", data={"train": str(triples)},
                                          batch_size=6, lora={"dropout": 0.0}, contrastive={"chunk_size": chunk}))
        torch.manual_seed(0)
        objective = load_objective(config)
        no_dropout(objective)
        for parameter in trainable_parameters(objective.encoder).values():  # LoRA B starts at zero: a non-zero output
            torch.nn.init.normal_(parameter, std=0.05)
        loss = objective.loss(objective.encoder, [objective.examples[i] for i in [4, 0, 9, 2, 7, 5]], seed=1)
        if loss.requires_grad:
            loss.backward()
        results[chunk] = (loss.item(), grads(objective.encoder))
    assert results[2][0] == pytest.approx(results[0][0], rel=1e-5)
    assert results[0][1].keys() == results[2][1].keys() and results[0][1]
    for name, gradient in results[0][1].items():
        assert torch.allclose(results[2][1][name], gradient, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize(
    "change,message",
    [
        ({"learning_rat": 1e-3}, "unknown config key 'learning_rat'"),
        ({"lora": {"rank": 4}}, "unknown config key lora.'rank'"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"stage": "pretrain"}, "stage must be one of"),
        ({"data": {"train": None}}, "data.train"),
        ({"dtype": "bf16"}, "dtype must be one of float32, bfloat16, got 'bf16'"),
        ({"dtype": "float16"}, "loss scaler"),
        ({"save_every": 0}, "save_every must be a positive integer"),
        ({"warmup_steps": -1}, "warmup_steps must be a non-negative integer"),
    ],
)
def test_bad_configs_fail_before_training(tmp_path, tiny_llama_folder, change, message):
    path = write_config(tmp_path, tiny_llama_folder, "mntp")
    values = yaml.safe_load(path.read_text())
    for key, value in change.items():
        values[key] = value
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(L2VError, match=message):
        load_config(path)


def test_bad_data_fails_before_training(tmp_path, tiny_llama_folder):
    path = write_config(tmp_path, tiny_llama_folder, "simcse")
    (tmp_path / "texts.txt").write_bytes(b"fine\nbroken \xff\n")
    result = cli("train", "simcse", "--config", path, "--no-progress")
    assert result.returncode == 2 and "line 2 is not valid UTF-8" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "texts.txt").write_text("\n\n")
    result = cli("train", "simcse", "--config", path, "--no-progress")
    assert result.returncode == 2 and "no non-empty texts" in result.stderr
    result = cli("train", "mntp", "--config", path, "--no-progress")
    assert result.returncode == 2 and "stage is 'simcse'" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_torchrun_two_processes_equal_one_process(tmp_path, tiny_llama_folder):
    """Same global batch (4): one process, or two processes of 2 with negatives gathered across them. Dropout is
    off so both see identical views; losses must agree at every step (gradients are averaged correctly)."""
    common = dict(steps=3, save_every=3, contrastive={"attention_dropout": 0.0}, lora={"dropout": 0.0})
    single = write_config(tmp_path / "one", tiny_llama_folder, "simcse", batch_size=4, **common)
    double = write_config(tmp_path / "two", tiny_llama_folder, "simcse", batch_size=2, **common)
    assert cli("train", "simcse", "--config", single, "--no-progress").returncode == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                "-m", "l2v.cli", "train", "simcse", "--config", str(double), "--no-progress"]
    result = subprocess.run(torchrun, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = losses(tmp_path / "one" / "run"), losses(tmp_path / "two" / "run")
    assert len(one) == len(two) == 3
    assert np.allclose(one, two, rtol=1e-5, atol=1e-6), (one, two)


def test_convert_chains_the_recipe_and_reports(tmp_path, tiny_llama_folder, sentences):
    from l2v.train.convert import convert, load_convert_config

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    sts = tmp_path / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{TEXTS[i]}\t{TEXTS[i + 1]}\t{i % 5}\n" for i in range(9)))
    common = {"data": {"train": str(texts)}, "batch_size": 4, "steps": 2, "save_every": 1, "max_length": 16,
              "lora": {"r": 4, "alpha": 8}}
    recipe = {"name": "tiny-l2v", "model": str(tiny_llama_folder), "output": str(tmp_path / "out"),
              "stages": {"mntp": {**common, "mntp": {"mask_token": "<unk>"}}, "simcse": common},
              "evaluate": {"files": [f"sts:{sts}"]}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    recipe["stages"]["simcse"] = {**common, "encoder_max_length": 64}
    path.write_text(yaml.safe_dump(recipe))
    final = convert(path, show_progress=False, log=lambda *_: None)
    assert np.isfinite(Encoder.from_pretrained(str(final)).encode(sentences)).all()
    assert Encoder.from_pretrained(str(final)).config.max_length == 64
    records = json.loads((tmp_path / "out" / "eval" / "results.json").read_text())
    assert len(records) == 2 and {r["task"] for r in records} == {"sts:sts.tsv"}
    # each stage trains on the merged adapters of the stages before it
    recipe["stages"]["supervised"] = common
    path.write_text(yaml.safe_dump(recipe))
    stages = load_convert_config(path)["stages"]
    out = tmp_path / "out"
    assert stages["simcse"].adapters == [str(out / "mntp" / "encoder" / "adapter")]
    assert stages["supervised"].adapters == [str(out / "mntp" / "encoder" / "adapter"), str(out / "simcse" / "encoder" / "adapter")]
    del recipe["stages"]["simcse"]
    path.write_text(yaml.safe_dump(recipe))
    assert load_convert_config(path)["stages"]["supervised"].adapters == [str(out / "mntp" / "encoder" / "adapter")]
    recipe["stages"]["simcse"] = {**common, "adapters": ["x"]}
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(L2VError, match="stages.simcse.adapters is set by convert"):
        load_convert_config(path)
    recipe["stages"] = {"mntp": common, "pretrain": common}
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(L2VError, match="unknown stage 'pretrain'"):
        load_convert_config(path)


def test_two_recipes_share_one_mntp_run_through_a_stage_output(tmp_path, tiny_llama_folder, monkeypatch):
    """The unsupervised and the supervised recipe name one MNTP folder: the second convert reuses the finished run
    (no step trained again) and trains on its adapter; a shared folder with another MNTP config is refused."""
    from l2v.train.convert import convert, load_convert_config

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    common = {"data": {"train": str(texts)}, "batch_size": 4, "steps": 2, "save_every": 1, "max_length": 16,
              "lora": {"r": 4, "alpha": 8}}
    shared = str(tmp_path / "shared-mntp")
    mntp = {**common, "mntp": {"mask_token": "<unk>"}, "output": shared}
    first = {"model": str(tiny_llama_folder), "output": str(tmp_path / "a"), "stages": {"mntp": mntp, "simcse": common}}
    second = {"model": str(tiny_llama_folder), "output": str(tmp_path / "b"), "stages": {"mntp": mntp, "simcse": common}}
    for name, recipe in (("a.yaml", first), ("b.yaml", second)):
        (tmp_path / name).write_text(yaml.safe_dump(recipe))
    convert(tmp_path / "a.yaml", show_progress=False, log=lambda *_: None)
    trained = (Path(shared) / "metrics.jsonl").read_text()
    assert load_convert_config(tmp_path / "b.yaml")["stages"]["simcse"].adapters == [str(Path(shared) / "encoder" / "adapter")]
    import l2v.train.data as data

    reads = []
    original = data.load_texts
    monkeypatch.setattr(data, "load_texts", lambda config, *a, **k: (reads.append(config.train), original(config, *a, **k))[1])
    convert(tmp_path / "b.yaml", show_progress=False, log=lambda *_: None)
    assert (Path(shared) / "metrics.jsonl").read_text() == trained  # reused, not trained again
    assert len(reads) == 2  # SimCSE's texts, checked up front and read to train; the finished MNTP's not read again
    assert not (tmp_path / "b" / "mntp").exists() and (tmp_path / "b" / "encoder").is_dir()
    second["stages"]["mntp"] = {**mntp, "learning_rate": 0.5}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(second))
    with pytest.raises(L2VError, match="different config"):
        convert(tmp_path / "b.yaml", show_progress=False, log=lambda *_: None)


def test_numbers_written_without_a_dot_are_numbers(tmp_path, tiny_llama_folder):
    path = write_config(tmp_path, tiny_llama_folder, "mntp")
    path.write_text(path.read_text().replace("learning_rate: 0.001", "learning_rate: 1e-3"))
    assert load_config(path).learning_rate == pytest.approx(1e-3)
    path.write_text(path.read_text().replace("learning_rate: 1e-3", "learning_rate: fast"))
    with pytest.raises(L2VError, match="learning_rate must be a number"):
        load_config(path)


def test_null_instruction_and_dataset_are_the_defaults(tmp_path):
    from l2v.train.config import DataConfig
    from l2v.train.data import load_triples

    path = tmp_path / "t.jsonl"
    path.write_text('{"query": "a", "positive": "b", "instruction": null, "dataset": null}\n')
    (triple,) = load_triples(DataConfig(train=str(path)))
    assert triple.instruction == "" and triple.dataset == "default"


def test_convert_checks_every_stage_before_training(tmp_path, tiny_llama_folder):
    """A missing SimCSE file, a bad later-stage value or an unknown evaluation task fails before MNTP trains."""
    from l2v.train.convert import convert

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    common = {"data": {"train": str(texts)}, "batch_size": 4, "steps": 2, "max_length": 16, "lora": {"r": 4, "alpha": 8}}
    cases = [({"simcse": {**common, "data": {"train": str(tmp_path / "missing.txt")}}}, None, "input file not found"),
             ({"simcse": {**common, "batch_size": 0}}, None, "stages.simcse.batch_size must be a positive integer"),
             ({"simcse": common}, {"tasks": ["no-such-task"], "data": str(tmp_path)}, "no-such-task")]
    for stages, evaluate, message in cases:
        recipe = {"model": str(tiny_llama_folder), "output": str(tmp_path / "out"),
                  "stages": {"mntp": {**common, "mntp": {"mask_token": "<unk>"}}, **stages}}
        if evaluate:
            recipe["evaluate"] = evaluate
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        with pytest.raises(L2VError, match=message):
            convert(path, show_progress=False, log=lambda *_: None)
        assert not (tmp_path / "out" / "mntp").exists()


def test_resume_refuses_another_process_count_or_retrained_adapters(tmp_path, tiny_llama_folder):
    import shutil

    mntp = load_config(write_config(tmp_path / "m", tiny_llama_folder, "mntp", steps=2))
    adapter = train(mntp, show_progress=False, log=lambda *_: None) / "adapter"
    config = load_config(write_config(tmp_path, tiny_llama_folder, "simcse", steps=2, adapters=[str(adapter)]))
    train(config, show_progress=False, log=lambda *_: None)
    state_path = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1] / "state.json"
    state = json.loads(state_path.read_text())
    assert state["world"] == 1
    longer = load_config(write_config(tmp_path, tiny_llama_folder, "simcse", steps=3, adapters=[str(adapter)]))
    state_path.write_text(json.dumps({**state, "world": 2}))
    with pytest.raises(L2VError, match="written by 2 process"):
        train(longer, show_progress=False, log=lambda *_: None)
    state_path.write_text(json.dumps(state))
    # the MNTP stage trained again (other weights, same folder): the SimCSE checkpoint no longer fits
    retrained = load_config(write_config(tmp_path / "m", tiny_llama_folder, "mntp", steps=2, seed=4))
    shutil.rmtree(tmp_path / "m" / "run")
    train(retrained, show_progress=False, log=lambda *_: None)
    with pytest.raises(L2VError, match="different config"):
        train(longer, show_progress=False, log=lambda *_: None)


def test_resuming_with_a_changed_config_is_refused(tmp_path, tiny_llama_folder):
    config = load_config(write_config(tmp_path, tiny_llama_folder, "simcse", steps=2))
    train(config, show_progress=False, log=lambda *_: None)
    changed = load_config(write_config(tmp_path, tiny_llama_folder, "simcse", steps=4, learning_rate=5e-4))
    with pytest.raises(L2VError, match="different config"):
        train(changed, show_progress=False, log=lambda *_: None)
    longer = load_config(write_config(tmp_path, tiny_llama_folder, "simcse", steps=4))
    train(longer, show_progress=False, log=lambda *_: None)  # more steps is fine
    assert len(losses(tmp_path / "run")) == 4


@pytest.mark.parametrize(
    "lines,message",
    [
        (['{"query": "a", "positive": "b"}', '{"query": "c", "positive": '], "line 2 is not valid JSON"),
        (['{"query": "a"}'], "line 1 has no 'positive' field"),
        (['{"query": "a", "positive": 3}'], "line 1: 'positive' must be a string, got int"),
        (['', '{"query": "a", "positive": "b", "instruction": 7}'], "line 2: 'instruction' must be a string"),
        (['{"query": null, "positive": "b"}'], "line 1: 'query' and 'positive' must be strings, got null"),
        (['{"query": "a", "positive": "b", "negative": "c"}', '{"query": "d", "positive": "e"}'], "every triple has a 'negative' or none"),
    ],
)
def test_bad_triples_are_named(tmp_path, lines, message):
    from l2v.train.config import DataConfig
    from l2v.train.data import load_triples

    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(L2VError, match=message):
        load_triples(DataConfig(train=str(path)))


@pytest.mark.parametrize("stage", ["mntp", "simcse"])
def test_gradient_checkpointing_changes_memory_not_the_losses(tmp_path, tiny_llama_folder, stage):
    """Recomputed activations replay the dropout RNG: SimCSE's two views and MNTP's losses are those of the
    plain run (and the switch may change when resuming: it is not part of the config signature)."""
    plain = train(load_config(write_config(tmp_path / "a", tiny_llama_folder, stage, steps=3)), show_progress=False,
                  log=lambda *_: None)
    checkpointed = train(load_config(write_config(tmp_path / "b", tiny_llama_folder, stage, steps=3, gradient_checkpointing=True)),
                         show_progress=False, log=lambda *_: None)
    assert losses(checkpointed.parent) == pytest.approx(losses(plain.parent), rel=1e-6, abs=1e-7)
    assert len(losses(plain.parent)) == 3
    # and it was on: the decoder layers are marked for recomputation
    from l2v.train.runner import apply_lora

    config = load_config(write_config(tmp_path / "c", tiny_llama_folder, stage, gradient_checkpointing=True))
    model = apply_lora(Encoder.from_pretrained(str(tiny_llama_folder)).model, config)
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    assert layers, "no layer has gradient checkpointing enabled"


@pytest.mark.parametrize("family, expected", [
    ("llama", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ("phi3", {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),  # fused projections, other names
])
def test_default_lora_covers_every_attention_and_mlp_projection(tmp_path, family, expected):
    from tiny_models import tiny_backbone

    from l2v.train.runner import apply_lora

    config = load_config(write_config(tmp_path, tmp_path, "simcse"))
    model = apply_lora(tiny_backbone(family), config)
    assert set(model.peft_config["default"].target_modules) == expected
    wrapped = {name.split(".lora_A")[0].split(".")[-1] for name, _ in model.named_parameters() if "lora_A" in name}
    assert wrapped == expected
    config.lora.target_modules = ["nonexistent"]
    with pytest.raises(L2VError, match=r"none of lora.target_modules .* \(its linear layers: "):
        apply_lora(tiny_backbone(family), config)


def test_a_dataset_smaller_than_one_batch_is_named(caplog):
    from l2v.train.runner import BatchPlan

    with caplog.at_level("WARNING"):
        plan = BatchPlan({"big": list(range(8)), "tiny": [8, 9]}, global_batch=4, seed=0)
    assert "tiny" in caplog.text and "not trained on" in caplog.text
    assert plan.per_epoch == 2 and all(max(plan.batch(s)) < 8 for s in range(4))


def test_gradient_accumulation_is_the_mean_of_the_micro_batches(tmp_path, tiny_llama_folder):
    """One optimizer step over 2 micro-batches: the weights equal those from averaging the two micro-batches'
    gradients by hand (same batches and seeds), and the logged loss is their mean."""
    import torch
    from safetensors.torch import load_file

    from l2v.train.runner import BatchPlan, _step_seed, load_objective, make_optimizer, trainable_parameters

    path = write_config(tmp_path, tiny_llama_folder, "simcse", steps=1, save_every=1, batch_size=3,
                        gradient_accumulation_steps=2, max_grad_norm=0.0, contrastive={"attention_dropout": 0.0})
    config = load_config(path)
    train(config, show_progress=False, log=lambda *_: None)
    trained = load_file(tmp_path / "run" / "checkpoints" / "step-00000001" / "trainable.safetensors")
    torch.manual_seed(config.seed)
    objective = load_objective(config)
    objective.encoder.train()
    parameters = trainable_parameters(objective.encoder)
    before = {name: p.detach().clone() for name, p in parameters.items()}
    plan = BatchPlan(objective.groups(), config.batch_size, config.seed)
    micro = []
    for index in range(2):
        seed = _step_seed(config, index, 0)
        torch.manual_seed(seed)
        loss = objective.loss(objective.encoder, [objective.examples[i] for i in plan.batch(index)], seed)
        loss.backward()
        micro.append(loss.item())
    for p in parameters.values():
        p.grad /= 2
    make_optimizer(list(parameters.values()), config).step()
    assert losses(tmp_path / "run") == pytest.approx([sum(micro) / 2], rel=1e-5)
    moved = [name for name in parameters if not torch.equal(parameters[name], before[name])]
    assert moved
    for name, parameter in parameters.items():
        assert torch.allclose(trained[name], parameter.detach(), atol=1e-6), name


def test_bf16_mixed_precision_autocasts_the_forward(tmp_path, tiny_llama_folder):
    exact = train(load_config(write_config(tmp_path / "a", tiny_llama_folder, "mntp", steps=2)), show_progress=False,
                  log=lambda *_: None)
    mixed = train(load_config(write_config(tmp_path / "b", tiny_llama_folder, "mntp", steps=2, mixed_precision="bf16")),
                  show_progress=False, log=lambda *_: None)
    full, half = losses(exact.parent), losses(mixed.parent)
    assert half != full  # bfloat16 arithmetic did happen
    assert half == pytest.approx(full, rel=0.02)  # and it is the same training
    path = write_config(tmp_path / "c", tiny_llama_folder, "simcse", mixed_precision="fp16")
    with pytest.raises(L2VError, match="mixed_precision must be one of no, bf16"):
        load_config(path)


def test_trackers_receive_what_metrics_jsonl_holds(tmp_path, tiny_llama_folder):
    from accelerate.tracking import GeneralTracker

    class Recorder(GeneralTracker):
        name, requires_logging_directory = "recorder", False

        def __init__(self):
            super().__init__()
            self.logged, self.config = [], None

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.config = values

        def log(self, values, step=None, **kwargs):
            self.logged.append((step, values["loss"]))

    recorder = Recorder()
    run = train(load_config(write_config(tmp_path, tiny_llama_folder, "mntp", steps=3)), show_progress=False,
                log=lambda *_: None, trackers=[recorder])
    assert [loss for _, loss in recorder.logged] == losses(run.parent) and [s for s, _ in recorder.logged] == [1, 2, 3]
    assert recorder.config["stage"] == "mntp" and recorder.config["lora.r"] == 4


def test_a_new_objective_is_one_class_and_one_registry_line(tmp_path, tiny_llama_folder):
    """A Matryoshka-style SimCSE (the loss on the first 8 dimensions too), written as a user would, trains
    through the same loop, checkpoints and encoder saving as the built-in objectives."""
    from l2v.train import objectives

    class MatryoshkaSimcse(objectives.Objective):
        name = "toy-matryoshka"
        temperature = 0.05

        def loss(self, forward, batch, seed):
            from l2v.batching import embed_in_groups
            from l2v.train.simcse import info_nce

            tokenized = self.encoder.tokenize(batch)
            first = embed_in_groups(forward, self.encoder.collate, tokenized)
            second = embed_in_groups(forward, self.encoder.collate, tokenized)
            return info_nce(first, second, self.temperature) + info_nce(first[:, :8], second[:, :8], self.temperature)

    objectives.register("toy-matryoshka", MatryoshkaSimcse)
    try:
        run = train(load_config(write_config(tmp_path, tiny_llama_folder, "toy-matryoshka", steps=2)), show_progress=False,
                    log=lambda *_: None)
    finally:
        objectives.OBJECTIVES.pop("toy-matryoshka")
    assert len(losses(run.parent)) == 2 and Encoder.from_pretrained(run).encode(["paris"]).shape == (1, 32)
    with pytest.raises(L2VError, match="stage must be one of mntp, simcse, supervised"):
        load_config(write_config(tmp_path / "gone", tiny_llama_folder, "toy-matryoshka"))


def torchrun(config: Path, stage: str, port: int, env: dict | None = None):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "l2v.cli", "train", stage, "--config", str(config), "--no-progress"]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_fsdp_shards_train_as_one_process_and_resume_from_gathered_checkpoints(tmp_path, tiny_llama_folder, sentences):
    """FSDP2 over 2 processes (each decoder layer a shard group): SimCSE and supervised GradCache give the losses and
    the encoder of 1 process with the same global batch; MNTP (its LM head kept whole) those of DDP; a checkpoint
    holds whole tensors gathered from the shards, and a run resumed from it continues exactly."""
    sts = tmp_path / "dev.tsv"
    sts.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in STS_ROWS))
    common = dict(steps=4, save_every=2, contrastive={"attention_dropout": 0.0}, lora={"dropout": 0.0},
                  dev={"sts": [str(sts)], "every": 2})
    single = write_config(tmp_path / "one", tiny_llama_folder, "simcse", batch_size=4, **common)
    sharded = write_config(tmp_path / "fsdp", tiny_llama_folder, "simcse", batch_size=2, fsdp=True, **common)
    assert cli("train", "simcse", "--config", single, "--no-progress").returncode == 0
    result = torchrun(sharded, "simcse", 29541)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = tmp_path / "one" / "run", tmp_path / "fsdp" / "run"
    assert np.allclose(losses(one), losses(two), rtol=1e-5, atol=1e-6) and len(losses(two)) == 4
    dev = lambda run: [(r["step"], r["dev"]) for r in map(json.loads, (run / "dev.jsonl").read_text().splitlines())]  # noqa: E731
    assert [s for s, _ in dev(two)] == [0, 2, 4] and np.allclose([v for _, v in dev(one)], [v for _, v in dev(two)], atol=1e-3)
    vectors = Encoder.from_pretrained(str(one / "encoder")).encode(sentences)
    assert np.abs(Encoder.from_pretrained(str(two / "encoder")).encode(sentences) - vectors).max() < 1e-5
    # resume from the step-2 checkpoint written from shards: the same losses and encoder
    import shutil

    shutil.rmtree(two / "checkpoints" / "step-00000004")
    shutil.rmtree(two / "encoder")
    first_losses = losses(two)
    resumed = torchrun(sharded, "simcse", 29542)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr and "step-00000002" in resumed.stderr
    assert np.allclose(losses(two), first_losses, rtol=1e-6, atol=1e-7)
    assert np.abs(Encoder.from_pretrained(str(two / "encoder")).encode(sentences) - vectors).max() < 1e-5

    # MNTP: masks are drawn per process, so 2 sharded processes are compared with 2 DDP processes
    mntp = dict(steps=2, save_every=2, lora={"dropout": 0.0}, batch_size=2)
    ddp_run = torchrun(write_config(tmp_path / "ddp-m", tiny_llama_folder, "mntp", **mntp), "mntp", 29543)
    fsdp_run = torchrun(write_config(tmp_path / "fsdp-m", tiny_llama_folder, "mntp", fsdp=True, **mntp), "mntp", 29544)
    assert ddp_run.returncode == 0 and fsdp_run.returncode == 0, fsdp_run.stderr[-3000:]
    assert np.allclose(losses(tmp_path / "ddp-m" / "run"), losses(tmp_path / "fsdp-m" / "run"), rtol=1e-5, atol=1e-6)

    # supervised with GradCache: the chunks' backward passes reduce the shards' gradients once
    triples = tmp_path / "triples.jsonl"
    rows = [{"query": TEXTS[i], "positive": TEXTS[(i + 1) % 10], "negative": TEXTS[(i + 5) % 10]} for i in range(10)]
    triples.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    supervised = dict(steps=2, save_every=2, lora={"dropout": 0.0}, data={"train": str(triples)},
                      contrastive={"chunk_size": 1, "attention_dropout": 0.0})
    assert cli("train", "supervised", "--config", write_config(tmp_path / "one-s", tiny_llama_folder, "supervised", batch_size=4,
                                                               **supervised), "--no-progress").returncode == 0
    result = torchrun(write_config(tmp_path / "fsdp-s", tiny_llama_folder, "supervised", batch_size=2, fsdp=True, **supervised),
                      "supervised", 29545)
    assert result.returncode == 0, result.stderr[-3000:]
    assert np.allclose(losses(tmp_path / "one-s" / "run"), losses(tmp_path / "fsdp-s" / "run"), rtol=1e-5, atol=1e-6)


def test_fsdp_version_1_is_refused_by_name(tmp_path, tiny_llama_folder, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(L2VError, match="FSDP2.*--fsdp_version 2"):
        train(load_config(write_config(tmp_path, tiny_llama_folder, "simcse", steps=1)), show_progress=False,
              log=lambda *_: None)


def test_the_fused_optimizer_makes_the_per_tensor_loops_update():
    import torch

    from l2v.train.config import TrainConfig
    from l2v.train.runner import make_optimizer

    torch.manual_seed(0)
    fused = [torch.nn.Parameter(torch.randn(16, 64)) for _ in range(6)]
    loop = [torch.nn.Parameter(p.detach().clone()) for p in fused]
    config = TrainConfig(stage="simcse", model="x", output="y", learning_rate=1e-3, weight_decay=0.01)
    first, second = make_optimizer(fused, config), torch.optim.AdamW(loop, lr=1e-3, weight_decay=0.01, foreach=False)
    assert first.defaults["fused"]
    for step in range(5):
        for a, b in zip(fused, loop):
            a.grad = torch.randn(a.shape, generator=torch.Generator().manual_seed(step))
            b.grad = a.grad.clone()
        first.step()
        second.step()
    for a, b in zip(fused, loop):
        assert torch.allclose(a, b, atol=1e-6)



def test_a_restored_step_count_sits_where_the_optimizer_kernel_reads_it():
    """A GPU run failed to resume (fused AdamW on CUDA refuses a ``step`` count left on the CPU): the count goes
    beside its parameter for fused or capturable groups, on the CPU otherwise, as torch's own load_state_dict does.
    A parameter on the meta device stands in for one on a GPU."""
    from types import SimpleNamespace

    import torch

    from l2v.train.runner import _step_device

    on_device = torch.nn.Parameter(torch.empty(2, device="meta"))
    for group, expected in (({"fused": True}, "meta"), ({"capturable": True}, "meta"), ({"fused": None}, "cpu"), ({}, "cpu")):
        optimizer = SimpleNamespace(param_groups=[{"params": [torch.nn.Parameter(torch.empty(1))]}, {"params": [on_device], **group}])
        assert _step_device(on_device, optimizer).type == expected, group


STS_ROWS = [("a man is playing a guitar", "a man plays the guitar", 4.8), ("the cat sits on the mat", "a dog runs in the park", 0.4),
            ("paris is the capital of france", "the capital of france is paris", 5.0),
            ("she plays the piano", "he is running to catch the bus", 0.2), ("two children ride bikes", "kids are riding bicycles", 4.1),
            ("the weather is cold", "it is a cold day", 3.5)]


def test_dev_scores_are_logged_and_survive_a_sigkill(tmp_path, tiny_llama_folder):
    """dev.jsonl: the dev STS score before the first step, every `dev.every` steps and after the last; a resumed run
    writes the same lines as an uninterrupted one; `seconds` is training time over every part of a run."""
    sts = tmp_path / "dev_sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in STS_ROWS))
    dev = {"sts": [str(sts)], "every": 2}
    straight = load_config(write_config(tmp_path / "a", tiny_llama_folder, "mntp", dev=dev))
    train(straight, show_progress=False, log=lambda *_: None)
    lines = [json.loads(line) for line in (tmp_path / "a" / "run" / "dev.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 2, 4, 6]
    # before the first step the LoRA is the identity: the score is the base encoder's
    from scipy.stats import spearmanr

    base = Encoder.from_pretrained(str(tiny_llama_folder))
    left, right = base.encode([r[0] for r in STS_ROWS]), base.encode([r[1] for r in STS_ROWS])
    expected = 100 * spearmanr((left * right).sum(axis=1), [r[2] for r in STS_ROWS]).statistic
    assert lines[0]["dev_sts"] == pytest.approx(expected, abs=1e-3)
    assert lines[0]["seconds"] == 0.0 and lines[-1]["seconds"] > 0
    killed = write_config(tmp_path / "b", tiny_llama_folder, "mntp", dev=dev)
    assert killed_after(killed, 3).returncode == -9
    assert cli("train", "mntp", "--config", killed, "--no-progress").returncode == 0
    resumed = [json.loads(line) for line in (tmp_path / "b" / "run" / "dev.jsonl").read_text().splitlines()]
    assert [(r["step"], r["dev_sts"]) for r in resumed] == [(r["step"], r["dev_sts"]) for r in lines]
    seconds = [json.loads(line)["seconds"] for line in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert seconds == sorted(seconds)  # the resumed part continues the first part's clock
    state = json.loads((tmp_path / "b" / "run" / "checkpoints" / "step-00000006" / "state.json").read_text())
    assert state["seconds"] == pytest.approx(seconds[-1], abs=0.01)


def test_training_texts_from_several_gzip_files_without_short_lines(tmp_path):
    import gzip

    from l2v.errors import InputFileError
    from l2v.train.config import DataConfig
    from l2v.train.data import load_texts

    first, second = tmp_path / "a.txt.gz", tmp_path / "b.jsonl.gz"
    with gzip.open(first, "wt", encoding="utf-8") as handle:
        handle.write("History.\nThe town was founded in 1820 by settlers.\n\nIt grew quickly.\n")
    with gzip.open(second, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "A second file holds this line."}) + "\n")
    config = DataConfig(train=[str(first), str(second)], min_words=3)
    assert load_texts(config) == ["The town was founded in 1820 by settlers.", "It grew quickly.",
                                  "A second file holds this line."]
    assert len(load_texts(DataConfig(train=str(first)))) == 3
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(first.read_bytes()[:20])
    with pytest.raises(InputFileError, match="broken.txt.gz: not a complete gzip file"):
        load_texts(DataConfig(train=str(broken)))
    with pytest.raises(InputFileError, match="at least 30 words"):
        load_texts(DataConfig(train=str(first), min_words=30))


@pytest.mark.parametrize("change, message", [
    ({"data": {"train": []}}, r"data.train \(a local file\)"),
    ({"data": {"train": ["x.txt", 3]}}, "data.train must be a file path or a non-empty list"),
    ({"data": {"min_words": -1}}, "data.min_words must be a non-negative integer"),
    ({"dev": {"sts": ["missing.tsv"]}}, "dev.sts: file not found: missing.tsv"),
    ({"dev": {"every": "often"}}, "dev.every must be a non-negative integer"),
    ({"pooling_options": {"skip_first": True}}, "unknown option"),
])
def test_bad_data_dev_and_pooling_settings_are_named(tmp_path, tiny_llama_folder, change, message):
    path = write_config(tmp_path, tiny_llama_folder, "simcse", **change)
    with pytest.raises(L2VError, match=message):
        train(load_config(path), show_progress=False, log=lambda *_: None)


def test_the_pooling_option_is_trained_with_and_saved(tmp_path, tiny_llama_folder, sentences):
    config = load_config(write_config(tmp_path, tiny_llama_folder, "simcse", steps=2, pooling_options={"skip_first_token": True}))
    final = train(config, show_progress=False, log=lambda *_: None)
    encoder = Encoder.from_pretrained(str(final))
    assert encoder.config.pooling_options == {"skip_first_token": True} and encoder.pooling.skip_first_token


def test_set_overrides_any_key_and_names_bad_ones(tmp_path, tiny_llama_folder):
    path = write_config(tmp_path, tiny_llama_folder, "simcse")
    config = load_config(path, settings=["lora.r=8", "data.min_words=3", "adapters=[a, b]", "fsdp=true", "learning_rate=2e-4"])
    assert (config.lora.r, config.lora.alpha, config.data.min_words, config.adapters, config.fsdp) == (8, 8, 3, ["a", "b"], True)
    assert config.learning_rate == 2e-4 and config.data.train.endswith("texts.txt")
    with pytest.raises(L2VError, match="expected KEY=VALUE"):
        load_config(path, settings=["lora.r"])
    with pytest.raises(L2VError, match="'steps' is not a section"):
        load_config(path, settings=["steps.x=1"])
    with pytest.raises(L2VError, match="unknown config key lora.'rank'"):
        load_config(path, settings=["lora.rank=8"])
    result = cli("train", "simcse", "--config", path, "--set", "batch_size=0", "--no-progress")
    assert result.returncode == 2 and "batch_size must be a positive integer" in result.stderr


def test_length_groups_by_device_and_config_give_the_same_loss(tmp_path, tiny_llama_folder):
    """A batch runs in length groups of >= 256 padded positions on a CPU and as one group (up to 65,536) on a GPU
    (kernel launches, not padding, bound a small model's GPU step); group_min_tokens overrides, is checked, and is
    not part of a run's signature. Without dropout every grouping gives the same MNTP, SimCSE and supervised loss."""
    from l2v.batching import group_min_tokens
    from l2v.train.runner import config_signature, load_objective

    assert group_min_tokens("cpu") == 256 and group_min_tokens(torch.device("cpu")) == 256
    assert group_min_tokens("cuda") == group_min_tokens("cuda:1") == group_min_tokens("mps") == 65536
    assert group_min_tokens("cuda", 7_000_000_000) == 4096 and group_min_tokens("cpu", 7_000_000_000) == 256
    with pytest.raises(L2VError, match="group_min_tokens must be a positive integer"):
        load_config(write_config(tmp_path / "bad", tiny_llama_folder, "mntp", group_min_tokens=0))
    texts = ["a b " * n + "end" for n in (1, 12, 3, 7, 2, 9)]  # lengths 3 to 26 tokens: several groups of 16+
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": t, "positive": t[::-1]}) + "\n" for t in texts))
    for stage in ("mntp", "simcse", "supervised"):
        extra = {"lora": {"dropout": 0.0}, "contrastive": {"attention_dropout": 0.0}, "max_length": 32}
        if stage == "supervised":
            extra["data"] = {"train": str(pairs)}
        configs = {tokens: load_config(write_config(tmp_path / f"{stage}{tokens}", tiny_llama_folder, stage,
                                                    group_min_tokens=tokens, **extra)) for tokens in (None, 1, 10_000)}
        assert len({config_signature(dataclasses.replace(configs[None], group_min_tokens=t)) for t in configs}) == 1
        results = {}
        for tokens, config in configs.items():
            torch.manual_seed(0)
            objective = load_objective(config)
            assert objective.group_min_tokens() == (256 if tokens is None else tokens)
            if tokens is None:  # chosen by where the steps run, not where the weights are (FSDP CPU offload)
                assert objective.compute_device is None  # loaded without a device: the weights' (the CPU)
                objective.compute_device = torch.device("cuda")
                assert objective.group_min_tokens() == 65536
                objective.compute_device = None
            calls = []

            def forward(features, *args, _encoder=objective.encoder, **kwargs):
                calls.append(features["input_ids"].shape[0])
                return _encoder(features, *args, **kwargs)

            loss = objective.loss(forward, texts if stage != "supervised" else objective.examples[:6], seed=5)
            results[tokens] = (loss.item(), len(calls))
        assert results[10_000][1] == (1 if stage != "supervised" else 2)  # one group (per role)
        assert results[1][1] > results[10_000][1]
        assert results[None][0] == pytest.approx(results[1][0], rel=1e-4)
        assert results[10_000][0] == pytest.approx(results[1][0], rel=1e-4)


def test_training_attention_auto_and_kernel_switches_resume_one_run(tmp_path, tiny_llama_folder):
    """'auto' trains bf16 on a CPU with eager attention up to 128 tokens and otherwise keeps the model's default;
    neither the attention kernel nor LoRA's product dtype is part of a run's signature (they change rounding, not
    the step), so a run resumes across them, and the bf16 run with eager attention trains like SDPA's."""
    from l2v.train.runner import config_signature, training_attention

    def config(**extra):
        return load_config(write_config(tmp_path / "c", tiny_llama_folder, "simcse", **extra))

    assert training_attention(config(dtype="bfloat16"), "cpu") == "eager"
    assert training_attention(config(mixed_precision="bf16"), None) == "eager"
    assert training_attention(config(), "cpu") is None  # float32: SDPA was as fast
    assert training_attention(config(dtype="bfloat16", max_length=256), "cpu") is None
    assert training_attention(config(dtype="bfloat16"), "cuda") is None
    assert training_attention(config(attn_implementation="sdpa", dtype="bfloat16"), "cpu") == "sdpa"
    assert config_signature(config(dtype="bfloat16")) == config_signature(
        config(dtype="bfloat16", attn_implementation="sdpa", lora={"r": 4, "alpha": 8, "compute_in_base_dtype": False}))
    with pytest.raises(L2VError, match="attn_implementation must be"):
        config(attn_implementation="")
    with pytest.raises(L2VError, match="attn_implementation must be one of auto, eager, .*sdpa.*got 'spda'"):
        config(attn_implementation="spda")
    assert config(attn_implementation="kernels-community/flash-attn").attn_implementation == "kernels-community/flash-attn"
    eager = train(load_config(write_config(tmp_path / "e", tiny_llama_folder, "mntp", steps=2, dtype="bfloat16")),
                  show_progress=False, log=lambda *_: None)
    sdpa = train(load_config(write_config(tmp_path / "s", tiny_llama_folder, "mntp", steps=2, dtype="bfloat16",
                                          attn_implementation="sdpa")), show_progress=False, log=lambda *_: None)
    assert losses(eager.parent) == pytest.approx(losses(sdpa.parent), rel=0.02)


def test_a_time_limit_stops_at_a_checkpoint_and_reruns_finish_the_same_run(tmp_path, tiny_llama_folder):
    """``time_limit`` (``--time-limit``): the run stops after the last step that leaves time for another, with a
    checkpoint there (whatever ``save_every``), and calling again resumes it; a limit shorter than one step still
    trains one step per call. Six calls with no time at all give the losses and encoder of one uninterrupted run."""
    from l2v.train.runner import TimeLimitReached

    straight = load_config(write_config(tmp_path / "a", tiny_llama_folder, "simcse", save_every=4))
    train(straight, show_progress=False, log=lambda *_: None)
    parts = load_config(write_config(tmp_path / "b", tiny_llama_folder, "simcse", save_every=4))
    stops = []
    for _ in range(5):
        with pytest.raises(TimeLimitReached) as stopped:
            train(parts, show_progress=False, log=lambda *_: None, time_limit=0)
        stops.append(stopped.value.step)
        assert (tmp_path / "b" / "run" / "checkpoints" / f"step-{stopped.value.step:08d}" / "state.json").exists()
        assert "run the same command again to resume" in str(stopped.value)
    assert stops == [1, 2, 3, 4, 5] and not (tmp_path / "b" / "run" / "encoder").exists()
    final = train(parts, show_progress=False, log=lambda *_: None, time_limit=0)  # the last step: no stop after it
    assert losses(tmp_path / "b" / "run") == losses(tmp_path / "a" / "run")
    assert np.array_equal(Encoder.from_pretrained(str(final)).encode(TEXTS[:3]),
                          Encoder.from_pretrained(str(tmp_path / "a" / "run" / "encoder")).encode(TEXTS[:3]))
    # a generous limit changes nothing; bad limits are named
    generous = load_config(write_config(tmp_path / "c", tiny_llama_folder, "simcse", save_every=4))
    train(generous, show_progress=False, log=lambda *_: None, time_limit=3600)
    assert losses(tmp_path / "c" / "run") == losses(tmp_path / "a" / "run")
    with pytest.raises(L2VError, match="time_limit must be a number of seconds"):
        train(generous, show_progress=False, log=lambda *_: None, time_limit=-1)


def test_the_cli_time_limit_exits_75_and_resumes(tmp_path, tiny_llama_folder):
    config = write_config(tmp_path / "a", tiny_llama_folder, "mntp", steps=2)
    first = cli("train", "mntp", "--config", config, "--no-progress", "--time-limit", "0s")
    assert first.returncode == 75 and "after step 1 of 2" in first.stderr and "error" not in first.stderr
    second = cli("train", "mntp", "--config", config, "--no-progress", "--time-limit", "0.5h")
    assert second.returncode == 0 and "resuming from" in second.stderr and len(losses(tmp_path / "a" / "run")) == 2
    bad = cli("train", "mntp", "--config", config, "--time-limit", "soon")
    assert bad.returncode == 2 and "--time-limit 'soon'" in bad.stderr


def test_convert_under_a_time_limit_trains_on_over_calls(tmp_path, tiny_llama_folder):
    """``convert(time_limit=...)``: each stage gets what the earlier ones left; a call that trained a stage and has
    no time left stops before the next stage; calls with no time at all still progress, one step each."""
    from l2v.train.convert import convert
    from l2v.train.runner import TimeLimitReached

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    common = {"data": {"train": str(texts)}, "batch_size": 4, "steps": 2, "save_every": 2, "max_length": 16,
              "lora": {"r": 4, "alpha": 8}}
    recipe = {"name": "tiny-l2v", "model": str(tiny_llama_folder), "output": str(tmp_path / "out"),
              "stages": {"mntp": {**common, "mntp": {"mask_token": "<unk>"}}, "simcse": common}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    seen = []
    for _ in range(3):
        with pytest.raises(TimeLimitReached) as stopped:
            convert(path, show_progress=False, log=lambda *_: None, time_limit=0)
        seen.append((stopped.value.output.name, stopped.value.step))
    # MNTP's step 1; its last step, then no time for SimCSE (not started: step 0); SimCSE's step 1 (MNTP reused)
    assert seen == [("mntp", 1), ("simcse", 0), ("simcse", 1)]
    final = convert(path, show_progress=False, log=lambda *_: None, time_limit=0)
    assert final == tmp_path / "out" / "encoder" and (final / "adapter").exists()


def test_the_time_budget_counts_a_slow_step_evaluation_and_checkpoint():
    from l2v.cli import parse_duration
    from l2v.train.runner import room_for_another_step

    assert room_for_another_step(50, 100, [10, 30, 20], save_seconds=5)  # 50 + 36 + 5 = 91
    assert not room_for_another_step(60, 100, [10, 30, 20], save_seconds=5)  # 101: the slowest step counts, +20 %
    assert not room_for_another_step(50, 100, [10, 30, 20], save_seconds=5, evaluation_seconds=10)
    assert room_for_another_step(0, 0, [], 0)
    assert [parse_duration(t) for t in ("540", "90s", "9m", "2.5h", " 1H ", None)] == [540, 90, 540, 9000, 3600, None]
    for bad in ("soon", "", "-1m", "inf", "nanm", "5d"):
        with pytest.raises(L2VError, match="--time-limit"):
            parse_duration(bad)
