"""ImageCoDe: both description layouts, the image-set checks (numeric order, ten per set), video/static, metric
bookkeeping with a planted backend, tiny random CLIP and SigLIP end to end, ContextBatch / context module / l2v
text side training (loss falls, a SIGKILLed run resumes to the same losses), the floors and the CLI's errors."""

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import require_shared_data
from tiny_models import write_tiny_tokenizer

from l2v.cli import app
from l2v.errors import L2VError
from l2v.imagecode.backends import HFDualEncoder
from l2v.imagecode.data import (Example, check_image_sets, description_stats, image_number, is_static, load_split,
                                read_descriptions, resolve_image_root, sort_image_names, source_of)
from l2v.imagecode.evaluate import ZeroShot, evaluate, load_pipeline
from l2v.imagecode.floors import compute_floors
from l2v.imagecode.report import leaderboard, summarize, write_report

runner = CliRunner()
WORDS = sorted({w.strip(".,!?").lower() for w in (Path(__file__).parent / "data" / "vocab_source.txt").read_text().split()} - {""})
VIDEO_FRAMES = [2, 9, 10, 15, 23, 31, 47, 56, 88, 120]  # text order would put img10 and img120 before img2
SETS = {  # name -> frame numbers of its ten images
    "MSR-VTT-videoTestVideo_video7763-shot2_1": VIDEO_FRAMES,
    "MSR-VTT-videoTrainValVideo_video2044-shot1_0": list(range(10)),
    "video-storytelling-videowedding_de8dLXvgV-I-shot6_0": [5 * i + 3 for i in range(10)],
    "video-storytelling-videochristmas_56Nm66j-i5Q-shot14_2": list(range(10)),
    "YouCook-video0074-shot1_1": [i * 11 for i in range(10)],
    "YouCook-video0007-shot1_5": list(range(10)),
    "open-images-1283_0f0565064ea964f8": list(range(10)),
    "open-images-1815_f91d6f546e63f20d": list(range(10)),
}


def sentence(rng, words: int = 8) -> str:
    return " ".join(rng.choice(WORDS, size=words))


@dataclass
class World:
    images: Path
    data: Path
    train: dict
    valid: dict
    test: dict


def make_set(root: Path, name: str, frames: list[int], seed: int) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for frame in frames:  # a coarse grid of random colours: images a tiny random ViT tells apart
        grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(grid).resize((48, 40), Image.NEAREST).save(folder / f"img{frame}.jpg")


def write_official(data: Path, train: dict, valid: dict, test: dict) -> None:
    data.mkdir(parents=True, exist_ok=True)
    (data / "train_data.json").write_text(json.dumps(train, indent=1))
    (data / "valid_data.json").write_text(json.dumps(valid, indent=1))
    (data / "test_data_unlabeled.json").write_text(json.dumps(test, indent=1))


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    """Eight image sets in the official layout (six video, two static) and description files for each split:
    four training descriptions per set (targets spread over 0-9), one dev description per set (one of them longer
    than CLIP's 77 tokens), two unlabeled test descriptions per set."""
    base = tmp_path_factory.mktemp("imagecode")
    images = base / "image-sets"
    for number, (name, frames) in enumerate(SETS.items()):
        make_set(images, name, frames, seed=number)
    rng = np.random.default_rng(0)
    train = {name: {str((3 * i + k) % 10): sentence(rng) for k in range(4)} for i, name in enumerate(SETS)}
    valid = {name: {str((7 * i) % 10): sentence(rng, 90 if i == 0 else 8)} for i, name in enumerate(SETS)}
    test = {name: [sentence(rng), sentence(rng)] for name in SETS}
    write_official(base / "data", train, valid, test)
    return World(images, base / "data", train, valid, test)


def save_tiny_dual_encoder(folder: Path, kind: str, seed: int = 0) -> Path:
    """A tiny random CLIP or SigLIP model with a word-level tokenizer and a 32-pixel image processor."""
    torch.manual_seed(seed)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    if kind == "clip":
        config = transformers.CLIPConfig(
            text_config=dict(vocab_size=320, max_position_embeddings=77, pad_token_id=0, bos_token_id=1, eos_token_id=2, **common),
            vision_config=dict(image_size=32, patch_size=8, **common), projection_dim=16)
        model = transformers.CLIPModel(config)
        processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        config = transformers.SiglipConfig(text_config=dict(vocab_size=320, max_position_embeddings=64, **common),
                                           vision_config=dict(image_size=32, patch_size=8, **common))
        model = transformers.SiglipModel(config)
        processor = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    write_tiny_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return save_tiny_dual_encoder(tmp_path_factory.mktemp("models") / "tiny-clip", "clip")


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory) -> Path:
    return save_tiny_dual_encoder(tmp_path_factory.mktemp("models") / "tiny-siglip", "siglip")


def official_order(folder: Path) -> list[Path]:
    """The official scripts' order, written out independently: by int(name[3:]) of the file stem."""
    return sorted(folder.glob("*.jpg"), key=lambda p: int(p.stem[3:]))


# ---------------------------------------------------------------------- data
def test_both_layouts_read_the_same_descriptions(world, tmp_path):
    official = read_descriptions(world.data / "valid_data.json")
    rows = tmp_path / "valid_data.jsonl"
    rows.write_text("".join(json.dumps({"image_set": s, "image_index": i, "description": d}) + "\n"
                            for s, entry in world.valid.items() for i, d in entry.items()))
    assert [(e.set_name, e.description, e.target) for e in read_descriptions(rows)] == \
           [(e.set_name, e.description, e.target) for e in official]
    assert all(isinstance(e.target, int) for e in official) and len(official) == len(SETS)
    # unlabeled: the official list layout, and Hugging Face rows without (or with an empty) image_index
    test = read_descriptions(world.data / "test_data_unlabeled.json")
    assert [e.description for e in test] == [d for entry in world.test.values() for d in entry]
    assert all(e.target is None for e in test)
    unlabeled = tmp_path / "test_data_unlabeled.jsonl"
    unlabeled.write_text(json.dumps({"image_set": "a", "description": "x"}) + "\n"
                         + json.dumps({"image_set": "b", "description": "y", "image_index": ""}) + "\n")
    assert [e.target for e in read_descriptions(unlabeled)] == [None, None]
    # the split's file is found in either layout
    (tmp_path / "data").mkdir()
    rows.rename(tmp_path / "data" / "valid_data.jsonl")
    assert len(load_split(tmp_path / "data", "validation")) == len(official)


@pytest.mark.parametrize("content, message", [
    ({"set": {"10": "too far"}}, "target index must be 0-9"),
    ({"set": {"x": "not a number"}}, "target index must be 0-9"),
    ({"set": {"1": 5}}, "the description must be a string"),
    ({"set": "text"}, "must map to {index: description}"),
    ({"a": {"1": "x"}, "b": ["y"]}, "all labelled or all unlabeled"),
    ([1, 2], "expected an object"),
])
def test_bad_description_files_are_named(tmp_path, content, message):
    path = tmp_path / "valid_data.json"
    path.write_text(json.dumps(content))
    with pytest.raises(L2VError, match=message) as error:
        read_descriptions(path)
    assert str(path) in str(error.value)


def test_bad_rows_name_the_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"image_set": "a", "description": "x", "image_index": "3"}) + "\n" + json.dumps({"description": "y"}) + "\n")
    with pytest.raises(L2VError, match="line 2 has no 'image_set'"):
        read_descriptions(path)


def test_the_real_description_files():
    folder = require_shared_data("imagecode")
    sizes = {split: len(load_split(folder, split)) for split in ("train", "valid", "test")}
    assert sizes == {"train": 16594, "valid": 2302, "test": 2306}  # the dataset card's split sizes
    valid = load_split(folder, "valid")
    stats = description_stats(valid)
    assert stats["video"] + stats["static"] == 2302 and stats["static"] == sum("open-images" in e.set_name for e in valid)
    assert set(stats["per_source"]) == {"MSR-VTT", "YouCook", "open-images", "video-storytelling"}
    assert sum(stats["target_counts"].values()) == 2302
    assert all(e.target is None for e in load_split(folder, "test"))


def test_numeric_order_of_image_names():
    assert sort_image_names(["img10.jpg", "img2.jpg", "img9.jpg", "img0.jpg", "img120.jpg"]) == \
           ["img0.jpg", "img2.jpg", "img9.jpg", "img10.jpg", "img120.jpg"]
    assert image_number("img07.JPG") == 7 and image_number("thumb.jpg") is None and image_number("img3.txt") is None
    with pytest.raises(L2VError, match="same number: img01.jpg, img1.jpg"):
        sort_image_names(["img1.jpg", "img01.jpg"])
    with pytest.raises(L2VError, match="not ImageCoDe image names"):
        sort_image_names(["img1.jpg", "cover.jpg"])


def test_image_sets_are_checked_and_ordered(world, tmp_path):
    examples = load_split(world.data, "valid")
    sets = check_image_sets(world.images, examples)
    video = "MSR-VTT-videoTestVideo_video7763-shot2_1"
    assert [p.name for p in sets[video]] == [f"img{n}.jpg" for n in VIDEO_FRAMES]
    assert sets[video] == official_order(world.images / video)
    # the zip's parent folder works too (it holds image-sets/)
    assert resolve_image_root(world.images.parent) == world.images
    # eleven images, nine images, a missing set: errors naming the set
    root = tmp_path / "image-sets"
    make_set(root, "open-images-eleven", list(range(11)), seed=1)
    make_set(root, "MSR-VTT-nine", list(range(9)), seed=2)
    for name, count in (("open-images-eleven", 11), ("MSR-VTT-nine", 9)):
        example = Example(name, "x", 0, 0)
        with pytest.raises(L2VError, match=f"image set '{name}' .* has {count} images"):
            check_image_sets(root, [example])
    with pytest.raises(L2VError, match="1 of 1 image sets are not in .*'MSR-VTT-videoTestVideo"):
        check_image_sets(root, examples[:1])
    with pytest.raises(L2VError, match="image folder not found: .*zenodo.org/record/6518944"):
        check_image_sets(tmp_path / "nowhere", examples)


def test_video_static_and_sources():
    assert is_static("open-images-1283_0f0565064ea964f8") and not is_static("MSR-VTT-videoTestVideo_video7763-shot2_1")
    assert [source_of(n) for n in SETS] == ["MSR-VTT", "MSR-VTT", "video-storytelling", "video-storytelling", "YouCook",
                                             "YouCook", "open-images", "open-images"]
    assert source_of("somewhere-else") == "other"


# ---------------------------------------------------------------------- metrics with a planted backend
class PlantedBackend:
    """Image embeddings are one-hot of each file's place in the official order; each description's embedding
    ranks its target image at a planted rank (or picks a planted image, for unlabeled descriptions)."""

    name, text_limit, dimension = "planted", 77, 10

    def __init__(self, images: Path, texts: dict[str, np.ndarray]):
        self.vectors = {str(p): np.eye(10)[k] for folder in images.iterdir() for k, p in enumerate(official_order(folder))}
        self.texts = texts

    def encode_images(self, images, batch_size=64):
        return torch.tensor(np.stack([self.vectors[str(p)] for p in images]), dtype=torch.float32)

    def encode_texts(self, texts, batch_size=256):
        return torch.tensor(np.stack([self.texts[t] for t in texts]), dtype=torch.float32)

    def count_truncated(self, texts):
        return 0


def ranked_at(target: int, rank: int) -> np.ndarray:
    others = [p for p in range(10) if p != target]
    order = others[:rank - 1] + [target] + others[rank - 1:]
    weights = np.zeros(10)
    weights[order] = np.arange(10, 0, -1)
    return weights


def test_accuracy_mrr_and_ranks_from_a_planted_backend(world, tmp_path):
    examples = load_split(world.data, "train")
    rng = np.random.default_rng(1)
    ranks = {e.position: int(rng.choice([1, 1, 2, 5, 10])) for e in examples}
    texts = {e.description.strip(): ranked_at(e.target, ranks[e.position]) for e in examples}
    records = evaluate(ZeroShot(PlantedBackend(world.images, texts)), examples, check_image_sets(world.images, examples))
    assert [r.rank for r in records] == [ranks[e.position] for e in examples]
    summary = write_report(tmp_path, records, {"split": "train", "model": "planted"})

    def expected(selected):
        chosen = [ranks[e.position] for e in selected]
        return round(100 * sum(r == 1 for r in chosen) / len(chosen), 2), round(sum(1 / r for r in chosen) / len(chosen), 4)

    video = [e for e in examples if not e.static]
    static = [e for e in examples if e.static]
    assert (summary["accuracy"]["all"], summary["mrr"]["all"]) == expected(examples)
    assert (summary["accuracy"]["video"], summary["mrr"]["video"]) == expected(video)
    assert (summary["accuracy"]["static"], summary["mrr"]["static"]) == expected(static)
    assert summary["counts"] == {"all": 32, "video": 24, "static": 8}
    youcook = [e for e in examples if e.set_name.startswith("YouCook")]
    assert summary["per_source"]["YouCook"]["accuracy"] == expected(youcook)[0]
    assert summary["rank_histogram"] == [sum(r == k for r in ranks.values()) for k in range(1, 11)]
    assert json.loads((tmp_path / "results.json").read_text())["accuracy"] == summary["accuracy"]
    assert "| accuracy (%) |" in (tmp_path / "results.md").read_text()
    lines = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [line["rank"] for line in lines] == [ranks[e.position] for e in examples]


def test_leaderboard_file_lists_each_sets_predictions_in_file_order(world, tmp_path):
    examples = load_split(world.data, "test")
    picks = {e.description.strip(): (e.position * 3) % 10 for e in examples}
    texts = {t: np.eye(10)[k] for t, k in picks.items()}
    records = evaluate(ZeroShot(PlantedBackend(world.images, texts)), examples, check_image_sets(world.images, examples))
    summary = write_report(tmp_path, records, {"split": "test", "model": "planted"})
    assert summary["labelled"] is False and "accuracy" not in summary
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    assert list(predictions) == list(world.test)  # the sets in the file's order
    assert predictions == {name: [picks[d] for d in descriptions] for name, descriptions in world.test.items()}
    assert all(isinstance(i, int) and 0 <= i <= 9 for values in predictions.values() for i in values)
    assert leaderboard(records) == predictions
    assert "Labels withheld" in (tmp_path / "results.md").read_text()


def test_ties_rank_the_lower_index_first():
    from l2v.imagecode.evaluate import Record

    record = Record("open-images-x", 0, 3, [1.0, 0.0, 0.0, 1.0] + [0.0] * 6)
    assert record.prediction == 0 and record.rank == 2
    assert summarize([record])["accuracy"]["all"] == 0.0


# ---------------------------------------------------------------------- tiny CLIP and SigLIP
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_zero_shot_cli_on_tiny_models(world, tmp_path, request, kind):
    folder = request.getfixturevalue(f"tiny_{kind}")
    out = tmp_path / "eval"
    result = runner.invoke(app, ["imagecode", "eval", "--images", str(world.images), "--model", str(folder), "--split", "valid",
                                 "--data", str(world.data), "--output", str(out), "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["counts"] == {"all": 8, "video": 6, "static": 2}
    assert results["text_limit"] == (77 if kind == "clip" else 64)
    assert results["truncated"] == 1  # the one 90-word dev description
    assert sum(results["rank_histogram"]) == 8
    # every score is the model's own cosine of the description with the image in the official order
    backend = HFDualEncoder.from_pretrained(str(folder), device="cpu")
    first = load_split(world.data, "valid")[0]
    images = torch.nn.functional.normalize(backend.encode_images(official_order(world.images / first.set_name)), dim=-1)
    text = torch.nn.functional.normalize(backend.encode_texts([first.description]), dim=-1)
    line = json.loads((out / "scores.jsonl").read_text().splitlines()[0])
    assert np.allclose(line["scores"], (images @ text[0]).numpy(), atol=1e-5)
    assert line["prediction"] == int(np.argmax(line["scores"]))
    # a second run reads the cached image embeddings: the same scores
    again = runner.invoke(app, ["imagecode", "eval", "--images", str(world.images), "--model", str(folder), "--data",
                                str(world.data), "--output", str(tmp_path / "again"), "--cache", str(tmp_path / "cache")])
    assert again.exit_code == 0 and len(list((tmp_path / "cache").iterdir())) == 1
    assert (tmp_path / "again" / "scores.jsonl").read_text() == (out / "scores.jsonl").read_text()


def test_test_split_writes_the_leaderboard_file(world, tmp_path, tiny_clip):
    out = tmp_path / "test"
    result = runner.invoke(app, ["imagecode", "eval", "--images", str(world.images), "--model", str(tiny_clip), "--split",
                                 "test", "--data", str(world.data), "--output", str(out), "--no-cache"])
    assert result.exit_code == 0, result.output
    predictions = json.loads((out / "predictions.json").read_text())
    assert {k: len(v) for k, v in predictions.items()} == {k: len(v) for k, v in world.test.items()}


def test_cli_missing_image_folder_is_one_line_saying_where_to_get_them(world, tmp_path):
    result = runner.invoke(app, ["imagecode", "eval", "--images", str(tmp_path / "no-images"), "--data", str(world.data)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ImageCoDe image folder not found")
    assert "https://zenodo.org/record/6518944/files/image-sets.zip" in lines[0] and "Traceback" not in result.output
    trained = runner.invoke(app, ["imagecode", "train", "--mode", "context", "--images", str(tmp_path / "no-images"),
                                  "--output", str(tmp_path / "run"), "--data", str(world.data)])
    assert trained.exit_code == 2 and "image-sets.zip" in trained.output


def test_a_non_clip_model_is_refused_by_name(world, tmp_path, tiny_llama_folder):
    result = runner.invoke(app, ["imagecode", "eval", "--images", str(world.images), "--model", str(tiny_llama_folder),
                                 "--data", str(world.data), "--no-cache"])
    assert result.exit_code == 2 and "'llama' model" in result.output


# ---------------------------------------------------------------------- training
def train_config(folder: Path, world: World, model: Path, mode: str, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"mode": mode, "images": str(world.images), "data": str(world.data), "output": str(folder / "run"),
              "model": str(model), "batch_size": 8, "epochs": 3, "save_every": 2, "learning_rate": 1e-3,
              "context": {"ffn_dim": 32, "heads": 4}, "device": "cpu", **extra}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


KILL_AFTER = """
import os, signal, sys
from l2v.imagecode.train import load_config, train
kill_after = int(sys.argv[2])
train(load_config(sys.argv[1]), show_progress=False,
      on_step_end=lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == kill_after else None)
"""


def test_contextbatch_loss_falls_and_a_sigkilled_run_resumes_to_the_same_losses(world, tmp_path, tiny_clip):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = train_config(tmp_path / "a", world, tiny_clip, "contextbatch", epochs=6)
    done = subprocess.run([sys.executable, "-m", "l2v.cli", "imagecode", "train", "--config", str(straight), "--no-progress"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    full = losses(tmp_path / "a" / "run")
    assert len(full) == 24  # 32 descriptions, 4 steps of 8 an epoch, 6 epochs
    assert np.mean(full[-4:]) < 0.7 * np.mean(full[:4])  # the last epoch's loss well under the first's
    killed = train_config(tmp_path / "b", world, tiny_clip, "contextbatch", epochs=6)
    crashed = subprocess.run([sys.executable, "-c", KILL_AFTER, str(killed), "7"], capture_output=True, text=True, env=env)
    assert crashed.returncode == -signal.SIGKILL
    assert len(losses(tmp_path / "b" / "run")) == 7 and not (tmp_path / "b" / "run" / "final").exists()
    resumed = subprocess.run([sys.executable, "-m", "l2v.cli", "imagecode", "train", "--config", str(killed), "--no-progress"],
                             capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "step-00000006" in resumed.stderr
    assert losses(tmp_path / "b" / "run") == full
    dev = [json.loads(line) for line in (tmp_path / "b" / "run" / "dev.jsonl").read_text().splitlines()]
    assert [d["epoch"] for d in dev] == [1, 2, 3, 4, 5, 6]
    # the fine-tuned model is a CLIP folder: evaluate it by its run folder (final/) or best/
    pipeline = load_pipeline(str(tmp_path / "b" / "run"), device="cpu")
    assert pipeline.name.startswith("ContextBatch")
    best = json.loads((tmp_path / "b" / "run" / "best" / "imagecode.json").read_text())
    assert best["dev_accuracy"]["all"] == max(d["accuracy"]["all"] for d in dev)


class Crash(Exception):
    pass


def test_context_module_trains_and_resumes_after_a_crash(world, tmp_path, tiny_clip):
    from l2v.imagecode.train import load_config, train

    straight = load_config(train_config(tmp_path / "a", world, tiny_clip, "context", epochs=8, learning_rate=3e-3))
    train(straight, show_progress=False, log=lambda line: None)
    full = losses(tmp_path / "a" / "run")
    assert len(full) == 32 and np.mean(full[-4:]) < 0.75 * np.mean(full[:4])
    config = load_config(train_config(tmp_path / "b", world, tiny_clip, "context", epochs=8, learning_rate=3e-3))

    def crash(step):
        if step == 9:
            raise Crash

    with pytest.raises(Crash):
        train(config, show_progress=False, log=lambda line: None, on_step_end=crash)
    said = []
    train(config, show_progress=False, log=said.append)
    assert any("resuming from" in line and "step-00000008" in line for line in said)
    assert losses(tmp_path / "b" / "run") == full  # dropout is drawn per step: the same losses
    info = json.loads((tmp_path / "b" / "run" / "final" / "imagecode.json").read_text())
    assert info["mode"] == "context" and info["options"]["positional"] is True
    pipeline = load_pipeline(str(tmp_path / "b" / "run" / "final"), device="cpu")
    examples = load_split(world.data, "valid")
    records = evaluate(pipeline, examples, check_image_sets(world.images, examples))
    assert len(records) == 8
    # a changed config is refused instead of mixing two runs
    changed = load_config(train_config(tmp_path / "b", world, tiny_clip, "context", epochs=8, learning_rate=1e-2))
    with pytest.raises(L2VError, match="different config"):
        train(changed, show_progress=False, log=lambda line: None)


def without_seconds(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in path.read_text().splitlines()]


def head_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {name: tensor.numpy() for name, tensor in load_file(str(folder / "head.safetensors")).items()}


@pytest.mark.parametrize("mode", ["context", "lit"])
def test_frozen_feature_heads_resume_after_sigkill_to_the_same_run(world, tmp_path, tiny_clip, tiny_llama_folder, mode):
    """The context module and the l2v text projection, killed by SIGKILL just after step 7 (the last checkpoint is
    step 6, after the dev evaluation of epoch 1 and before that of epoch 2), rerun with the same command: every
    logged loss, every dev line, best/ and final/ equal an uninterrupted run's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    extra = {"epochs": 3, "learning_rate": 3e-3} if mode == "context" else \
        {"epochs": 3, "learning_rate": 1e-2, "lit": {"text_encoder": str(tiny_llama_folder), "max_length": 32}}
    command = [sys.executable, "-m", "l2v.cli", "imagecode", "train", "--no-progress", "--config"]
    straight = train_config(tmp_path / "a", world, tiny_clip, mode, **extra)
    done = subprocess.run(command + [str(straight)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    killed = train_config(tmp_path / "b", world, tiny_clip, mode, **extra)
    crashed = subprocess.run([sys.executable, "-c", KILL_AFTER, str(killed), "7"], capture_output=True, text=True, env=env)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    assert len(losses(b)) == 7 and not (b / "final").exists()
    assert [d["step"] for d in without_seconds(b / "dev.jsonl")] == [4]
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ["step-00000004", "step-00000006"]
    resumed = subprocess.run(command + [str(killed)], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "step-00000006" in resumed.stderr
    assert len(losses(a)) == 12 and losses(b) == losses(a)
    assert without_seconds(b / "metrics.jsonl") == without_seconds(a / "metrics.jsonl")
    assert without_seconds(b / "dev.jsonl") == without_seconds(a / "dev.jsonl")
    assert [d["epoch"] for d in without_seconds(b / "dev.jsonl")] == [1, 2, 3]
    for folder in ("best", "final"):
        info_a, info_b = (json.loads((run / folder / "imagecode.json").read_text()) for run in (a, b))
        assert info_a["mode"] == info_b["mode"] == mode and info_a.get("step") == info_b.get("step")
        assert info_a.get("dev_accuracy") == info_b.get("dev_accuracy")
        weights_a, weights_b = head_weights(a / folder), head_weights(b / folder)
        assert set(weights_a) == set(weights_b) and all(np.array_equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_the_context_module_sees_position_only_in_video_sets():
    from l2v.imagecode.models import ContextModule, ContextOptions

    torch.manual_seed(0)
    module = ContextModule(16, ContextOptions(heads=4, ffn_dim=32, dropout=0.0)).eval()
    images, text = torch.randn(1, 10, 16), torch.randn(1, 16)
    shuffle = torch.randperm(10)
    with torch.no_grad():
        static = module(images, text, torch.tensor([False]))
        static_shuffled = module(images[:, shuffle], text, torch.tensor([False]))
        video = module(images, text, torch.tensor([True]))
        video_shuffled = module(images[:, shuffle], text, torch.tensor([True]))
    assert torch.allclose(static[0, shuffle], static_shuffled[0], atol=1e-4)  # a set of pictures: order-free
    assert not torch.allclose(video[0, shuffle], video_shuffled[0], atol=1e-3)  # frames: order matters


def test_l2v_text_side_trains_a_projection(world, tmp_path, tiny_clip, tiny_llama_folder):
    from l2v.imagecode.train import load_config, train

    config = load_config(train_config(tmp_path, world, tiny_clip, "lit", epochs=5, learning_rate=1e-2,
                                      lit={"text_encoder": str(tiny_llama_folder), "max_length": 32}))
    final = train(config, show_progress=False, log=lambda line: None)
    full = losses(tmp_path / "run")
    assert np.mean(full[-4:]) < np.mean(full[:4])
    info = json.loads((final / "imagecode.json").read_text())
    assert info["mode"] == "lit" and info["text_encoder"] == str(tiny_llama_folder)
    out = tmp_path / "eval"
    result = runner.invoke(app, ["imagecode", "eval", "--images", str(world.images), "--model", str(final), "--data",
                                 str(world.data), "--output", str(out), "--no-cache"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text())["pipeline"].startswith("l2v text tower")


def test_bad_training_configs_are_named(world, tmp_path, tiny_clip):
    from l2v.imagecode.train import load_config

    path = train_config(tmp_path, world, tiny_clip, "context")
    with pytest.raises(L2VError, match="unknown config key 'epoch'"):
        load_config(path, settings=["epoch=3"])
    with pytest.raises(L2VError, match="mode must be one of contextbatch, context, lit"):
        load_config(path, {"mode": "clip"})
    with pytest.raises(L2VError, match="context.layers must be a positive integer"):
        load_config(path, settings=["context.layers=0"])
    assert load_config(path, settings=["learning_rate=4e-6"]).lr == 4e-6  # YAML's 4e-6 is a string: read as a number


# ---------------------------------------------------------------------- floors
def test_floors_random_majority_and_text_only(world, tmp_path, tiny_llama_folder):
    result = compute_floors(world.data, str(tiny_llama_folder), max_length=32, log=lambda line: None)
    assert result["random"]["accuracy"]["all"] == 10.0
    train = load_split(world.data, "train")
    valid = load_split(world.data, "valid")
    counts = np.bincount([e.target for e in train], minlength=10)
    majority = int(np.argmax(counts))  # the lowest of the most frequent
    assert result["majority"]["index"] == majority
    assert result["majority"]["accuracy"]["all"] == round(100 * sum(e.target == majority for e in valid) / len(valid), 2)
    text = result["text_only"]
    assert text["train_descriptions_used"] == len(train) and 0 <= text["accuracy"]["all"] <= 100
    assert text["dev_truncated"] == 1
    cli = runner.invoke(app, ["imagecode", "floors", "--data", str(world.data), "--no-text", "--output", str(tmp_path / "f.json")])
    assert cli.exit_code == 0, cli.output
    written = json.loads((tmp_path / "f.json").read_text())
    assert "text_only" not in written and written["majority"] == result["majority"]
    assert "majority target index" in (tmp_path / "f.md").read_text()
