"""results.json, a markdown table and a PNG chart, for one model or several side by side."""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_path, write_json_atomic


def markdown_table(records: list[dict]) -> str:
    models = list(dict.fromkeys(r["model"] for r in records))
    tasks = list(dict.fromkeys((r["family"], r["task"], r["metric"]) for r in records))
    value = {(r["model"], r["task"]): r["value"] for r in records}
    lines = ["| family | task | metric | " + " | ".join(models) + " |", "|---|---|---|" + "---|" * len(models)]
    for family, task, metric in tasks:
        cells = [f"{value[(m, task)]:.1f}" if (m, task) in value else "" for m in models]
        lines.append(f"| {family} | {task} | {metric} | " + " | ".join(cells) + " |")
    families = list(dict.fromkeys(r["family"] for r in records))
    for family in families:
        cells = []
        for m in models:
            values = [r["value"] for r in records if r["model"] == m and r["family"] == family]
            cells.append(f"{sum(values) / len(values):.1f}" if values else "")
        lines.append(f"| **{family}** | *average* | | " + " | ".join(cells) + " |")
    seconds = {m: sum(r["seconds"] for r in records if r["model"] == m) for m in models}
    lines.append("| | *wall time (s)* | | " + " | ".join(f"{seconds[m]:.0f}" for m in models) + " |")
    return "\n".join(lines) + "\n"


def chart(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(dict.fromkeys(r["model"] for r in records))
    tasks = list(dict.fromkeys(r["task"] for r in records))
    value = {(r["model"], r["task"]): r["value"] for r in records}
    width = 0.8 / max(len(models), 1)
    figure, axis = plt.subplots(figsize=(min(16.0, max(6.0, 0.35 * len(tasks) * len(models) + 2)), 5))
    positions = np.arange(len(tasks))
    for k, model in enumerate(models):
        heights = [value.get((model, t), 0.0) for t in tasks]
        axis.bar(positions + (k - (len(models) - 1) / 2) * width, heights, width, label=model)
    axis.set_xticks(positions)
    axis.set_xticklabels(tasks, rotation=35, ha="right")
    axis.set_ylabel("score (main metric, x100)")
    axis.set_ylim(0, 100)
    axis.legend(fontsize=8)
    axis.set_title("l2v eval")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def write_report(records: list[dict], output: Path, kept: list[dict] = ()) -> dict[str, Path]:
    """``results.json`` gets ``records`` plus ``kept`` (earlier results this run does not redo, so nothing computed
    is lost); the markdown table and the chart show ``records``, this run's selection."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = {"json": output / "results.json", "markdown": output / "results.md", "chart": output / "results.png"}
    write_json_atomic([*records, *kept], paths["json"])
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(markdown_table(records), encoding="utf-8")
    chart(records, paths["chart"])
    return paths
