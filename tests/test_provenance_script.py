"""scripts/provenance.py: each stage's record from its run folder, from another folder named by --stage, or from the
shipped provenance that recorded it when the folder is gone; an unfinished or unknown stage is refused."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "provenance.py"


def _run_folder(folder: Path, steps: int, last_step: int) -> Path:
    (folder / "encoder").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"steps": steps, "batch_size": 4, "max_length": 16, "learning_rate": 1e-3,
                                                    "dtype": "float32", "data": {"train": "x.txt"}, "lora": {"r": 2}}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "seconds": 2.0 * s}) + "\n"
                                                  for s in range(1, last_step + 1)))
    (folder / "dev.jsonl").write_text(json.dumps({"step": 0, "stsb_dev": 10.0}) + "\n" + json.dumps({"step": steps, "stsb_dev": 50.0}) + "\n")
    return folder


def _provenance(tmp_path: Path, stages: dict, *extra: str) -> subprocess.CompletedProcess:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "model": "smollm2-135m", "output": str(tmp_path / "run"), "stages": stages}))
    return subprocess.run([sys.executable, str(SCRIPT), str(recipe), str(tmp_path / "out.json"), *extra], cwd=ROOT,
                          capture_output=True, text=True)


def test_records_run_folders_overrides_and_shipped_records(tmp_path):
    _run_folder(tmp_path / "run" / "mntp", steps=3, last_step=3)
    _run_folder(tmp_path / "elsewhere", steps=5, last_step=5)
    gone = str(tmp_path / "run" / "simcse")  # a stage folder lost since, kept in a shipped encoder's provenance
    shipped = {"folder": gone, "steps": 7, "dev_last": {"step": 7, "stsb_dev": 60.0}}
    (tmp_path / "shipped" / "enc").mkdir(parents=True)
    (tmp_path / "shipped" / "enc" / "provenance.json").write_text(json.dumps({"stages": {"simcse": shipped}}))
    done = _provenance(tmp_path, {"mntp": {}, "simcse": {}, "supervised": {}},
                       "--stage", f"supervised={tmp_path / 'elsewhere'}", "--shipped", str(tmp_path / "shipped"))
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "out.json").read_text())["stages"]
    assert record["mntp"]["steps"] == 3 and record["mntp"]["final_loss"] == 1 / 3 and record["mntp"]["train_seconds"] == 6.0
    assert record["supervised"]["folder"] == str(tmp_path / "elsewhere") and record["supervised"]["dev_last"]["stsb_dev"] == 50.0
    assert record["simcse"] == {**shipped, "record_from": str(tmp_path / "shipped" / "enc" / "provenance.json")}


def test_refuses_an_unfinished_or_unrecorded_stage(tmp_path):
    _run_folder(tmp_path / "run" / "mntp", steps=3, last_step=2)
    done = _provenance(tmp_path, {"mntp": {}})
    assert done.returncode != 0 and "stopped at step 2 of 3" in done.stderr
    done = _provenance(tmp_path, {"simcse": {"output": str(tmp_path / "gone")}}, "--shipped", str(tmp_path))
    assert done.returncode != 0 and "no shipped encoder's provenance.json records it" in done.stderr
