"""Accuracy overall / video / static, per source, the gold image's rank histogram and MRR; JSON, markdown and the
leaderboard prediction file (``{set_name: [predicted index, ...]}``, each set's descriptions in file order)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ..fileio import atomic_path, write_json_atomic
from .data import CANDIDATES, is_static, source_of
from .evaluate import Record


def _percent(hits: int, total: int) -> float | None:
    return round(100.0 * hits / total, 2) if total else None


def summarize(records: list[Record]) -> dict:
    """The metrics of labelled records (an unlabeled split gives counts only: its labels are withheld)."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        groups["all"].append(record)
        groups["static" if is_static(record.set_name) else "video"].append(record)
    summary: dict = {"counts": {k: len(groups[k]) for k in ("all", "video", "static")}}
    labelled = [r for r in records if r.target is not None]
    summary["labelled"] = bool(records) and len(labelled) == len(records)
    if not summary["labelled"]:
        return summary
    summary["accuracy"] = {k: _percent(sum(r.rank == 1 for r in groups[k]), len(groups[k])) for k in ("all", "video", "static")}
    summary["mrr"] = {k: round(sum(1.0 / r.rank for r in groups[k]) / len(groups[k]), 4) if groups[k] else None
                      for k in ("all", "video", "static")}
    by_source: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_source[source_of(record.set_name)].append(record)
    summary["per_source"] = {
        source: {"count": len(rows), "accuracy": _percent(sum(r.rank == 1 for r in rows), len(rows)),
                 "mrr": round(sum(1.0 / r.rank for r in rows) / len(rows), 4)}
        for source, rows in sorted(by_source.items())
    }
    histogram = [0] * CANDIDATES
    for record in records:
        histogram[record.rank - 1] += 1
    summary["rank_histogram"] = histogram  # descriptions whose target image ranked 1st, 2nd, ... 10th
    return summary


def leaderboard(records: list[Record]) -> dict[str, list[int]]:
    """The leaderboard submission: every set's predicted indices, its descriptions in file order."""
    predictions: dict[str, list[int]] = {}
    for record in sorted(records, key=lambda r: r.position):
        predictions.setdefault(record.set_name, []).append(record.prediction)
    return predictions


def markdown(summary: dict, meta: dict) -> str:
    lines = [f"# ImageCoDe {meta.get('split', '')}: {meta.get('model', '')}", ""]
    counts = summary["counts"]
    lines.append(f"{counts['all']} descriptions ({counts['video']} video, {counts['static']} static)"
                 + (f"; {meta['truncated']} of them longer than the text tower's {meta['text_limit']} tokens (truncated)"
                    if meta.get("truncated") is not None else ""))
    lines.append("")
    if not summary["labelled"]:
        lines.append("Labels withheld (test split): predictions written for the leaderboard, no accuracy computed here.")
        return "\n".join(lines) + "\n"
    accuracy, mrr = summary["accuracy"], summary["mrr"]
    lines += ["| | all | video | static |", "|---|---|---|---|",
              "| accuracy (%) | " + " | ".join(_cell(accuracy[k]) for k in ("all", "video", "static")) + " |",
              "| MRR | " + " | ".join(_cell(mrr[k]) for k in ("all", "video", "static")) + " |", ""]
    lines += ["| source | descriptions | accuracy (%) | MRR |", "|---|---|---|---|"]
    for source, row in summary["per_source"].items():
        lines.append(f"| {source} | {row['count']} | {_cell(row['accuracy'])} | {_cell(row['mrr'])} |")
    lines += ["", "Rank of the target image among the ten (1 = predicted):", "",
              "| rank | " + " | ".join(str(rank) for rank in range(1, CANDIDATES + 1)) + " |",
              "|---" * (CANDIDATES + 1) + "|",
              "| descriptions | " + " | ".join(str(v) for v in summary["rank_histogram"]) + " |"]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    return "-" if value is None else f"{value}"


def write_report(output: str | Path, records: list[Record], meta: dict) -> dict:
    """results.json (metrics + meta), results.md, predictions.json (leaderboard format) and scores.jsonl (each
    description's ten scores, prediction and rank), written atomically; returns the metrics."""
    output = Path(output)
    summary = summarize(records)
    write_json_atomic({**meta, **summary}, output / "results.json")
    with atomic_path(output / "results.md") as tmp:
        tmp.write_text(markdown(summary, meta), encoding="utf-8")
    with atomic_path(output / "predictions.json") as tmp:  # sets in file order, as the description file lists them
        tmp.write_text(json.dumps(leaderboard(records), indent=2) + "\n", encoding="utf-8")
    with atomic_path(output / "scores.jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for r in sorted(records, key=lambda r: r.position):
                handle.write(json.dumps({"set": r.set_name, "position": r.position, "target": r.target,
                                         "prediction": r.prediction, "rank": r.rank,
                                         "scores": [round(s, 6) for s in r.scores]}) + "\n")
    return summary
