"""Write provenance.json for a shipped encoder: the recipe, each stage's steps, batch, data, LoRA, final loss, last
dev scores and training time, the machine, the code's commit.

    python scripts/provenance.py configs/smollm2-l2v-unsup.yaml OUT.json

Each stage's run folder is the recipe's: the stage's own ``output`` (a stage shared by several recipes) or
``OUTPUT/STAGE``. ``train_seconds`` is training time over every part of a resumed run (dev evaluations excluded).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stage_record(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    dev_file = folder / "dev.jsonl"
    dev = [json.loads(line) for line in dev_file.read_text().splitlines() if line.strip()] if dev_file.exists() else []
    return {
        "folder": str(folder), "steps": config["steps"], "batch_size": config["batch_size"],
        "max_length": config["max_length"], "learning_rate": config["learning_rate"], "dtype": config["dtype"],
        "data": config["data"], "lora": config["lora"], "final_loss": rows[-1]["loss"] if rows else None,
        "train_seconds": rows[-1]["seconds"] if rows else None, "dev_first": dev[0] if dev else None,
        "dev_last": dev[-1] if dev else None,
    }


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    recipe_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    recipe = yaml.safe_load(recipe_path.read_text())
    stages = {}
    for name, settings in (recipe.get("stages") or {}).items():
        folder = Path((settings or {}).get("output") or Path(recipe["output"]) / name)
        if not (folder / "config.json").exists() or not (folder / "metrics.jsonl").exists() or not (folder / "encoder").is_dir():
            sys.exit(f"{folder}: no finished run of stage {name!r} (config.json, metrics.jsonl, encoder/)")
        stages[name] = stage_record(folder)
        last = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])["step"]
        if last != stages[name]["steps"]:
            sys.exit(f"{folder}: stage {name!r} stopped at step {last} of {stages[name]['steps']}")
    record = {
        "recipe": str(recipe_path), "name": recipe.get("name"), "stages": stages,
        "device": f"CPU: {_cpu()}, {os.cpu_count()} cores, no GPU", "commit": _commit(),
        "date": datetime.date.today().isoformat(),
        "reproduce": f"l2v convert --config {recipe_path}",
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
