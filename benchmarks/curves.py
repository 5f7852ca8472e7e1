"""Learning curves of training runs: the dev scores each run wrote to RUN/dev.jsonl (``dev:`` in its config),
against steps and against training hours on this machine, with a log-linear extrapolation of each curve.

    .venv/bin/python benchmarks/curves.py runs/pilots/simcse-a runs/pilots/simcse-b --output benchmarks/results/pilots

Writes OUTPUT/curves.png, OUTPUT/curves.json and OUTPUT/curves.md (a table: per run and dev set, the best score,
its step, the hours it took, and the fitted score at --extrapolate-hours). The fit is score = a + b * ln(hours) over
the points after the first evaluation past step 0, a rough guide to what more of the same training would give, not
a promise: curves of contrastive training usually flatten or turn down earlier than a log law says.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def read_run(folder: Path) -> dict:
    lines = [json.loads(line) for line in (folder / "dev.jsonl").read_text().splitlines() if line.strip()]
    if not lines:
        raise SystemExit(f"{folder}/dev.jsonl has no evaluations")
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    sets = [k for k in lines[0] if k not in ("step", "seconds")]
    return {"name": folder.name, "folder": str(folder), "stage": config.get("stage"), "lines": lines, "sets": sets,
            "config": {k: config.get(k) for k in ("stage", "steps", "batch_size", "max_length", "learning_rate",
                                                   "pooling", "pooling_options", "adapters")}}


def fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares of y = a + b ln(x) over points with x > 0; None with fewer than 2 of them."""
    usable = [(math.log(x), y) for x, y in points if x > 0]
    if len(usable) < 2:
        return None
    n = len(usable)
    mean_x = sum(x for x, _ in usable) / n
    mean_y = sum(y for _, y in usable) / n
    spread = sum((x - mean_x) ** 2 for x, _ in usable)
    if spread == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in usable) / spread
    return mean_y - slope * mean_x, slope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--extrapolate-hours", type=float, default=4.0)
    parser.add_argument("--title", default="dev score during training")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_run(folder) for folder in args.runs]
    sets = sorted({s for run in runs for s in run["sets"]})
    figure, axes = plt.subplots(len(sets), 2, figsize=(11, 3.6 * len(sets)), squeeze=False)
    rows = []
    for row, name in enumerate(sets):
        for run in runs:
            points = [(line["step"], line["seconds"] / 3600, line[name]) for line in run["lines"] if name in line]
            if not points:
                continue
            steps, hours, scores = zip(*points)
            axes[row][0].plot(steps, scores, marker="o", markersize=3, label=run["name"])
            axes[row][1].plot(hours, scores, marker="o", markersize=3, label=run["name"])
            best = max(range(len(scores)), key=scores.__getitem__)
            trained = [(h, s) for st, h, s in points if st > 0]
            line = fit(trained)
            predicted = None
            if line is not None:
                predicted = line[0] + line[1] * math.log(args.extrapolate_hours)
                grid = [hours[1] * (args.extrapolate_hours / hours[1]) ** (i / 20) for i in range(21)] if len(hours) > 1 and hours[1] > 0 else []
                axes[row][1].plot(grid, [line[0] + line[1] * math.log(g) for g in grid], linestyle=":", linewidth=1,
                                  color=axes[row][1].lines[-1].get_color())
            rows.append({"run": run["name"], "dev_set": name, "start": scores[0], "best": scores[best],
                         "best_step": steps[best], "best_hours": round(hours[best], 3), "last": scores[-1],
                         "last_step": steps[-1], "hours": round(hours[-1], 3),
                         "fit": None if line is None else {"a": line[0], "b_per_ln_hour": line[1]},
                         f"fitted_at_{args.extrapolate_hours:g}h": predicted, "config": run["config"]})
        axes[row][0].set_xlabel("step")
        axes[row][1].set_xlabel("training hours (dotted: log-linear fit)")
        for axis in axes[row]:
            axis.set_ylabel(f"{name} (Spearman x100)")
            axis.grid(alpha=0.3)
        axes[row][0].legend(fontsize=7)
    figure.suptitle(args.title)
    figure.tight_layout()
    args.output.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output / "curves.png", dpi=100)
    (args.output / "curves.json").write_text(json.dumps(rows, indent=1) + "\n")
    key = f"fitted_at_{args.extrapolate_hours:g}h"
    table = ["| run | dev set | step 0 | best (step, hours) | last (step, hours) | fitted at %gh |" % args.extrapolate_hours,
             "|---|---|---|---|---|---|"]
    for r in rows:
        fitted = "" if r[key] is None else f"{r[key]:.1f}"
        table.append(f"| {r['run']} | {r['dev_set']} | {r['start']:.1f} | {r['best']:.1f} ({r['best_step']}, {r['best_hours']:.2f}) "
                     f"| {r['last']:.1f} ({r['last_step']}, {r['hours']:.2f}) | {fitted} |")
    (args.output / "curves.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
