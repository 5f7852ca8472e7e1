"""``l2v roar report``: the performance curves (PNG) and the RACU table with 95 % bootstrap CIs."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..errors import L2VError
from ..fileio import atomic_path, write_json_atomic
from .racu import mean_with_ci, racu

# The paper's LSTM RACU (%, Recursive ROAR), Madsen et al. (2022), for the table's comparison column.
PAPER_RACU = {
    "sst": {"attention": 15.7, "gradient": 7.6, "input_x_gradient": 28.0, "integrated_gradient": 37.8},
    "babi-1": {"attention": 66.5, "gradient": 66.1, "input_x_gradient": 71.2, "integrated_gradient": 59.1},
}


def collect(folder: str | Path) -> list[dict]:
    """Every finished step under ``folder``, each with ``run``: the run folder (the one holding ``run.json``) it
    belongs to, so results of different runs (other settings, a micro run kept beside the full one) never mix."""
    folder = Path(folder)
    results = []
    for path in sorted(folder.rglob("result.json")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue  # leftovers of killed writes
        run = next((p for p in path.parents if (p / "run.json").exists() and (p == folder or folder in p.parents)), folder)
        results.append({**json.loads(path.read_text()), "run": str(run.relative_to(folder))})
    if not results:
        raise L2VError(f"{folder}: no ROAR results (run `l2v roar run` first)")
    return results


def _labels(results: list[dict]) -> dict[str, str]:
    """{run folder: table label}: the dataset (and backend, for an l2v encoder); the run folder too where several
    runs share that label."""
    plain = {}
    for r in results:
        backend = r.get("backend", "bilstm")
        plain[r["run"]] = r["dataset"] if backend == "bilstm" else f"{r['dataset']} ({backend})"
    counts = Counter(plain.values())
    return {run: label if counts[label] == 1 else f"{label} [{run}]" for run, label in plain.items()}


def curves(results: list[dict]) -> dict:
    """{label: {seed: {curve name: {k: performance}}}} per run folder (see ``_labels``); base (k=0) and random
    k=100 join every curve."""
    labels = _labels(results)
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for r in results:
        name = r["measure"] if r["recursive"] is None else f"{r['measure']}-{'recursive' if r['recursive'] else 'plain'}"
        table[labels[r["run"]]][r["seed"]][name][r["k"]] = r["performance"]
    for dataset, seeds in table.items():
        for seed, named in seeds.items():
            base = named.pop("base", {}).get(0)
            final = named.get("random", {}).get(100)
            for curve in named.values():
                if base is not None:
                    curve.setdefault(0, base)
                if final is not None:
                    curve.setdefault(100, final)
    return table


def _complete(curve: dict, random: dict) -> bool:
    ks = sorted(curve)
    return bool(ks) and ks[0] == 0 and ks[-1] == 100 and sorted(random) == ks


def racu_table(results: list[dict]) -> list[dict]:
    rows = []
    labels = _labels(results)
    paper_keys = {labels[r["run"]]: r["dataset"] for r in results if r.get("backend", "bilstm") == "bilstm"}
    for dataset, seeds in curves(results).items():
        names = sorted({n for s in seeds.values() for n in s if n != "random"})
        for name in names:
            values, complete_seeds, undefined = [], [], []
            for seed, named in sorted(seeds.items()):
                curve, random = named.get(name, {}), named.get("random", {})
                if not _complete(curve, random):
                    continue  # an unfinished curve is not summarised
                ks = sorted(curve)
                value = racu(ks, [curve[k] for k in ks], [random[k] for k in ks])
                if np.isnan(value):
                    undefined.append(seed)  # random masking lost nothing on this seed: RACU is undefined there
                    continue
                values.append(value)
                complete_seeds.append(seed)
            if not values and not undefined:
                continue
            mean, low, high = mean_with_ci(values) if values else (None, None, None)
            measure = name.rsplit("-", 1)[0]
            rows.append({"dataset": dataset, "measure": measure, "recursive": name.endswith("-recursive"),
                         "seeds": complete_seeds, "undefined_seeds": undefined, "racu": values, "mean": mean,
                         "ci_low": low, "ci_high": high,
                         "paper": PAPER_RACU.get(paper_keys.get(dataset), {}).get(measure) if name.endswith("-recursive") else None})
    return rows


def write_report(folder: str | Path, output: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = collect(folder)
    output = Path(output or folder)
    rows = racu_table(results)
    lines = ["| dataset | measure | ROAR | seeds | RACU (%) | 95 % CI | paper (LSTM, recursive) |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        paper = "" if row["paper"] is None else f"{row['paper']:.1f}"
        if row["mean"] is None:
            value, interval = "n/a", "random masking lost nothing"
        else:
            value, interval = f"{100 * row['mean']:.1f}", f"[{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"
        lines.append(f"| {row['dataset']} | {row['measure']} | {'recursive' if row['recursive'] else 'plain'} | {len(row['seeds'])} | "
                     f"{value} | {interval} | {paper} |")
    with atomic_path(output / "racu.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    write_json_atomic({"racu": rows, "steps": results}, output / "racu.json")
    table = curves(results)
    figure, axes = plt.subplots(1, len(table), figsize=(6 * len(table), 4), squeeze=False)
    for axis, (dataset, seeds) in zip(axes[0], sorted(table.items())):
        names = sorted({n for s in seeds.values() for n in s})
        for name in names:
            # only complete curves, so every point of a line is the mean over the same seeds
            complete = [s for s in seeds.values() if _complete(s.get(name, {}), s.get("random", {}))]
            if not complete:
                continue
            ks = sorted(complete[0][name])
            means = [np.mean([s[name][k] for s in complete]) for k in ks]
            axis.plot(ks, means, marker="o", markersize=3, label=f"{name} ({len(complete)} seed{'' if len(complete) == 1 else 's'})",
                      linestyle="--" if name == "random" else "-", color="black" if name == "random" else None)
        axis.set_title(f"{dataset}: mean over complete seeds")
        axis.set_xlabel("% of tokens masked")
        axis.set_ylabel("macro-F1" if dataset.startswith("sst") else "accuracy")
        axis.legend(fontsize=7)
    figure.tight_layout()
    with atomic_path(output / "curves.png") as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return output / "racu.md"
