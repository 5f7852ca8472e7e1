"""Write provenance.json for a shipped encoder: the recipe, each stage's steps, batch, data, LoRA, final loss, last
dev scores and training time, the machine, the code's commit.

    python scripts/provenance.py configs/smollm2-l2v-unsup.yaml OUT.json [--stage NAME=FOLDER ...] [--shipped DIR]

``--stage`` names the folder a stage actually ran in when it is not the recipe's. A stage whose folder is gone is
taken from the shipped encoder provenance that recorded it (marked ``record_from``).

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


def shipped_record(folder: Path, shipped: Path) -> dict | None:
    """The record of a stage run in ``folder`` as a shipped encoder's provenance.json kept it (the run folder itself
    may be gone: run folders are not kept between sessions), marked with the file it came from."""
    for path in sorted(shipped.glob("*/provenance.json")):
        for stage in json.loads(path.read_text()).get("stages", {}).values():
            if Path(stage.get("folder", "")) == folder:
                return {**stage, "record_from": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)}
    return None


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--stage", action="append", default=[], metavar="NAME=FOLDER",
                        help="the folder a stage ran in when it is not the recipe's (e.g. a pilot continued to the end)")
    parser.add_argument("--shipped", type=Path, default=ROOT / "src" / "l2v" / "encoders",
                        help="where shipped encoders' provenance.json files are looked up")
    args = parser.parse_args()
    overrides = {}
    for value in args.stage:
        name, sign, folder = value.partition("=")
        if not sign:
            parser.error(f"--stage {value!r}: expected NAME=FOLDER")
        overrides[name] = Path(folder)
    recipe_path, out, shipped = args.recipe, args.out, args.shipped
    recipe = yaml.safe_load(recipe_path.read_text())
    stages = {}
    for name, settings in (recipe.get("stages") or {}).items():
        folder = overrides.get(name) or Path((settings or {}).get("output") or Path(recipe["output"]) / name)
        if not (folder / "config.json").exists() or not (folder / "metrics.jsonl").exists() or not (folder / "encoder").is_dir():
            kept = shipped_record(folder, shipped)
            if kept is None:
                sys.exit(f"{folder}: no finished run of stage {name!r} (config.json, metrics.jsonl, encoder/), and no "
                         "shipped encoder's provenance.json records it")
            stages[name] = kept
            continue
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
