"""Write provenance.json for a shipped encoder: the recipe, each stage's steps, batch, data, wall time, device.

    python scripts/provenance.py configs/smollm2-l2v-unsup.yaml runs/smollm2-l2v-unsup OUT.json
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def main() -> None:
    recipe, run, out = sys.argv[1:4]
    stages = {}
    for stage_dir in sorted(Path(run).iterdir()):
        config_file, metrics_file = stage_dir / "config.json", stage_dir / "metrics.jsonl"
        if not config_file.exists() or not metrics_file.exists():
            continue
        config = json.loads(config_file.read_text())
        rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        stages[stage_dir.name] = {
            "steps": config["steps"], "batch_size": config["batch_size"], "max_length": config["max_length"],
            "learning_rate": config["learning_rate"], "dtype": config["dtype"], "data": config["data"],
            "lora": config["lora"], "final_loss": rows[-1]["loss"] if rows else None,
            "train_seconds_last_session": rows[-1]["seconds"] if rows else None,
        }
    record = {"recipe": recipe, "stages": stages, "device": f"CPU: {platform.processor() or platform.machine()}, 2 cores, no GPU",
              "note": "train_seconds_last_session counts from the last (re)start of the stage; see the README for wall times"}
    Path(out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
