"""Run tasks for one or more models, writing results after every task so an interrupted run keeps what it did
and a rerun continues (finished (model, task) pairs are skipped; encoded texts come from the cache)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import L2VError
from .models import EvalModel
from .report import write_report
from .tasks import Task


def parse_model_spec(spec: str) -> tuple[str, dict]:
    """``NAME[@option,option=value]``: options causal, bidirectional, pooling=P,
    skip_first_token (mean pooling without the first position), max_length=N, adapters=A (repeatable)."""
    name, _, options = spec.partition("@")
    kwargs: dict = {}
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key == "causal" and not value:
            kwargs["bidirectional"] = False
        elif key == "bidirectional" and not value:
            kwargs["bidirectional"] = True
        elif key == "pooling" and value:
            kwargs["pooling"] = value
        elif key == "skip_first_token" and not value:
            kwargs["pooling_options"] = {"skip_first_token": True}
        elif key == "max_length" and value.isdigit():
            kwargs["max_length"] = int(value)
        elif key == "adapters" and value:
            kwargs.setdefault("adapters", []).append(value)
        else:
            raise L2VError(f"model {spec!r}: unknown option {option!r} (use causal, bidirectional, pooling=P, skip_first_token, "
                           "max_length=N, "
                           "adapters=FOLDER_OR_HUB_ID)")
    return name, kwargs


def run_evaluation(models: list[str], tasks: list[Task], output: Path, cache_dir: Path | None = None,
                   instructions: bool = False, batch_size: int = 32, log=print, **encoder_kwargs) -> list[dict]:
    output = Path(output)
    previous: list[dict] = []
    if (output / "results.json").exists():
        try:
            previous = json.loads((output / "results.json").read_text())
        except json.JSONDecodeError:
            previous = []
    records: list[dict] = []
    loaded = []
    for spec in models:
        name, spec_kwargs = parse_model_spec(spec)
        kwargs = {**encoder_kwargs, **spec_kwargs}
        if "adapters" in encoder_kwargs and "adapters" in spec_kwargs:
            kwargs["adapters"] = list(encoder_kwargs["adapters"]) + list(spec_kwargs["adapters"])
        loaded.append((spec, EvalModel.load(name, cache_dir=cache_dir, batch_size=batch_size, **kwargs)))
    # task-major: with several models, every model finishes a task before the next task starts
    for task in tasks:
        for spec, model in loaded:
            signature = task.signature()
            done = [r for r in previous if r.get("model") == spec and r.get("task") == task.name
                    and r.get("fingerprint") == model.fingerprint and r.get("instructions") == instructions
                    and r.get("task_signature") == signature]
            if done:
                records.append(done[0])
                log(f"{spec:28s} {task.name:18s} {done[0]['metric']} {done[0]['value']:.2f} (from {output / 'results.json'})")
                continue
            start = time.perf_counter()
            encoded_before = model.encoded_texts
            metrics = task.run(model, task.instruction(instructions))
            seconds = time.perf_counter() - start
            metric = metrics.pop("main_metric")
            record = {
                "model": spec, "fingerprint": model.fingerprint, "task": task.name, "family": task.family,
                "split": task.split, "metric": metric, "value": metrics[metric], "n_examples": metrics.get("n_examples"),
                "seconds": round(seconds, 2), "texts_encoded": model.encoded_texts - encoded_before,
                "instructions": instructions, "task_signature": signature, "details": metrics,
            }
            records.append(record)
            log(f"{spec:28s} {task.name:18s} {metric} {record['value']:.2f} ({seconds:.0f} s)")
            write_report(records, output, _kept(previous, records))
    write_report(records, output, _kept(previous, records))
    return records


def _kept(previous: list[dict], records: list[dict]) -> list[dict]:
    """Earlier results for (model, task) pairs this run has not (yet) redone: other models or tasks than this
    command's, and, while a run is under way or after it was interrupted, the pairs it has not reached."""
    done = {(r["model"], r["task"]) for r in records}
    return [r for r in previous if (r.get("model"), r.get("task")) not in done]
