"""Learning curves of training runs: the dev scores each run wrote to RUN/dev.jsonl (``dev:`` in its config),
against steps and against training hours on this machine, with a log-linear extrapolation of each curve.

    .venv/bin/python benchmarks/curves.py runs/pilots/simcse-a runs/pilots/simcse-b --output benchmarks/results/pilots

Writes OUTPUT/curves.png, OUTPUT/curves.json and OUTPUT/curves.md (a table: per run and dev set, the best score,
its step, the hours it took, the fitted plateau and the fitted score at --extrapolate-hours). The fit is a
saturating curve, score = plateau - (plateau - start) * exp(-hours / tau), over every evaluation: a rough guide to
what more of the same training would give (few points early in a run bound the plateau loosely), not a promise.
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


def fit(points: list[tuple[float, float]]) -> tuple[float, float, float] | None:
    """Least squares of a saturating curve, score = plateau - (plateau - start) * exp(-hours / tau), over every
    point (step 0 included); None with fewer than 3 points, no fit, or no bend in the points yet (the fitted
    plateau runs to 100: nothing to extrapolate from)."""
    if len(points) < 3:
        return None
    import numpy as np
    from scipy.optimize import curve_fit

    hours = np.array([h for h, _ in points], dtype=float)
    scores = np.array([s for _, s in points], dtype=float)
    span = max(hours.max(), 1e-6)

    def curve(h, plateau, start, tau):
        return plateau - (plateau - start) * np.exp(-h / tau)

    low = [scores.max() - 1e-6, -100.0, span / 100]
    high = [100.0, 100.0, span * 100]
    guess = [min(max(scores.max() + 5, low[0] + 1e-3), 99.9), scores[0], span]
    try:
        (plateau, start, tau), _ = curve_fit(curve, hours, scores, p0=guess, bounds=(low, high), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    if plateau >= 99.0 or tau >= span * 50:  # no bend yet: the curve is still rising about linearly
        return None
    return float(plateau), float(start), float(tau)


def predict(line: tuple[float, float, float], hours: float) -> float:
    plateau, start, tau = line
    return plateau - (plateau - start) * math.exp(-hours / tau)


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
            line = fit([(h, s) for _, h, s in points])
            predicted = None
            if line is not None:
                predicted = predict(line, args.extrapolate_hours)
                grid = [args.extrapolate_hours * i / 40 for i in range(41)]
                axes[row][1].plot(grid, [predict(line, g) for g in grid], linestyle=":", linewidth=1,
                                  color=axes[row][1].lines[-1].get_color())
            rows.append({"run": run["name"], "dev_set": name, "start": scores[0], "best": scores[best],
                         "best_step": steps[best], "best_hours": round(hours[best], 3), "last": scores[-1],
                         "last_step": steps[-1], "hours": round(hours[-1], 3),
                         "fit": None if line is None else {"plateau": line[0], "start": line[1], "tau_hours": line[2]},
                         f"fitted_at_{args.extrapolate_hours:g}h": predicted, "config": run["config"]})
        axes[row][0].set_xlabel("step")
        axes[row][1].set_xlabel("training hours (dotted: saturating fit)")
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
    table = ["| run | dev set | step 0 | best (step, hours) | last (step, hours) | fitted plateau | fitted at %gh |" % args.extrapolate_hours,
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        fitted = "" if r[key] is None else f"{r[key]:.1f}"
        plateau = "still rising (no bend to fit)" if r["fit"] is None else f"{r['fit']['plateau']:.1f}"
        table.append(f"| {r['run']} | {r['dev_set']} | {r['start']:.1f} | {r['best']:.1f} ({r['best_step']}, {r['best_hours']:.2f}) "
                     f"| {r['last']:.1f} ({r['last_step']}, {r['hours']:.2f}) | {plateau} | {fitted} |")
    (args.output / "curves.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
