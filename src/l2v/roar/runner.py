"""Run (Recursive) ROAR with every (measure, k, seed) step cached on disk, so a killed run continues.

Layout under ``OUTPUT/DATASET/seed-S``::

    base/                 the k = 0 model (shared by every measure): result.json, model.safetensors
    random/k010 ...       random masking, k = 10 .. 100 (k = 100 is shared by every measure)
    MEASURE-recursive/k010 ... k090   or   MEASURE-plain/k010 ... k090 (+ importance of the k = 0 model)

A step folder holds ``masks.npz`` (the masked sequences of every split) and, last, ``result.json``; a step is
done when its ``result.json`` exists. Recursive chains keep the model of their latest step
(``model.safetensors``) to score the next one; plain ROAR scores once, with the k = 0 model.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..errors import L2VError
from ..fileio import atomic_dir, write_json_atomic
from .data import MASK, RoarData, Split
from .importance import ALL_MEASURES
from .masking import grow_mask, masked_fraction
from .models import build_model
from .training import TrainSettings, score_split, train_model

RATIOS = list(range(0, 101, 10))


def _seed_for(seed: int, k: int, salt: int = 0) -> int:
    return seed * 1_000_003 + k * 101 + salt


def _save_masks(folder: Path, data: RoarData) -> None:
    arrays = {}
    for name, split in data.splits.items():
        arrays[f"{name}_tokens"] = np.concatenate([np.asarray(t, dtype=np.int32) for t in split.tokens])
        arrays[f"{name}_lengths"] = np.asarray([len(t) for t in split.tokens], dtype=np.int32)
    np.savez_compressed(folder / "masks.npz", **arrays)


def _load_masks(folder: Path, data: RoarData) -> RoarData:
    with np.load(folder / "masks.npz") as arrays:
        splits = {}
        for name, split in data.splits.items():
            flat, lengths = arrays[f"{name}_tokens"], arrays[f"{name}_lengths"]
            if len(lengths) != len(split) or not np.array_equal(lengths, [len(t) for t in split.tokens]):
                raise L2VError(f"{folder}: cached masks do not fit the {name} split of the data (other examples or "
                               "lengths); use a new --output for different data")
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            splits[name] = Split([flat[offsets[i]: offsets[i + 1]].tolist() for i in range(len(lengths))], split.labels, split.questions)
    return RoarData(data.name, data.vocabulary, data.classes, splits)


def _masked(data: RoarData, scores: dict[str, list[np.ndarray]], k: int, mask_id: int = MASK) -> RoarData:
    splits = {name: Split([grow_mask(tokens, scores[name][i], k, mask_id) for i, tokens in enumerate(split.tokens)],
                          split.labels, split.questions) for name, split in data.splits.items()}
    return RoarData(data.name, data.vocabulary, data.classes, splits)


class BiLSTMBackend:
    """The paper's models: a fresh BiLSTM-attention model per step, trained from scratch."""

    name = "bilstm"
    mask_id = MASK

    def __init__(self, settings: TrainSettings, device, ig_steps: int = 50, ig_variant: str = "official"):
        self.settings, self.device, self.ig_steps, self.ig_variant = settings, device, ig_steps, ig_variant

    def describe(self) -> dict:
        return {"backend": self.name, "settings": asdict(self.settings), "ig_steps": self.ig_steps, "ig_variant": self.ig_variant}

    def train(self, data: RoarData, seed: int):
        return train_model(data, self.settings, seed, self.device)

    def state(self, model) -> dict:
        return model.state_dict()

    def load(self, state: dict, data: RoarData):
        model = build_model(data).to(self.device)
        model.load_state_dict(state)
        return model.eval()

    def score(self, model, split: Split, measure: str, seed: int) -> list[np.ndarray]:
        return score_split(model, split, measure, seed, self.device, ig_steps=self.ig_steps, ig_variant=self.ig_variant)


class RoarRun:
    def __init__(self, data: RoarData, output: str | Path, settings: TrainSettings | None = None, device=None,
                 ig_steps: int = 50, ig_variant: str = "official", ratios: list[int] | None = None, log=print,
                 backend=None):
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.backend = backend or BiLSTMBackend(settings or TrainSettings.for_dataset(data.name), device, ig_steps, ig_variant)
        self.data = data
        self.output = Path(output) / (data.name if self.backend.name == "bilstm" else f"{data.name}-{self.backend.name}")
        self.ratios = RATIOS if ratios is None else list(ratios)
        if not self.ratios or self.ratios[0] != 0 or self.ratios[-1] != 100 or sorted(set(self.ratios)) != self.ratios:
            raise L2VError(f"ratios must rise from 0 to 100, got {self.ratios}")
        self.log = log
        self._check_settings()

    def _check_settings(self) -> None:
        record = {**self.backend.describe(), "ratios": self.ratios,
                  "sizes": {name: len(split) for name, split in self.data.splits.items()}, "data": self.data.signature()}
        path = self.output / "run.json"
        if path.exists():
            existing = json.loads(path.read_text())
            for key, value in record.items():
                if existing.get(key) != value:
                    raise L2VError(f"{path}: this folder holds a run with other {key} ({existing.get(key)!r} vs {value!r}); "
                                   "use another --output")
        else:
            write_json_atomic(record, path)

    # ------------------------------------------------------------------ one step
    def _step(self, folder: Path, data: RoarData, seed: int, k: int, measure: str, recursive: bool | None,
              keep_model: bool) -> dict:
        if (folder / "result.json").exists():
            return json.loads((folder / "result.json").read_text())
        begin = time.perf_counter()
        model, report = self.backend.train(data, _seed_for(seed, k))
        result = {"dataset": self.data.name, "backend": self.backend.name, "measure": measure, "recursive": recursive, "seed": seed, "k": k,
                  "performance": report["test"]["performance"], "test": report["test"], "validation": report["validation"],
                  "best_epoch": report.get("best_epoch"), "masked_fraction": masked_fraction(data.splits["test"].tokens, self.backend.mask_id),
                  "seconds": round(time.perf_counter() - begin, 2)}
        with atomic_dir(folder, overwrite=True) as tmp:
            _save_masks(tmp, data)
            if keep_model:
                from safetensors.torch import save_file

                state = {k: v.detach().cpu().contiguous() for k, v in self.backend.state(model).items()}
                save_file(state, str(tmp / "model.safetensors"))
            (tmp / "result.json").write_text(json.dumps(result, indent=1))
        self.log(f"{self.data.name} seed {seed} {measure}{'' if recursive is None else '-recursive' if recursive else '-plain'} "
                 f"k={k}: {result['performance']:.4f} ({result['seconds']:.0f} s)")
        return result

    def _scores(self, model, data: RoarData, measure: str, seed: int, k: int) -> dict[str, list[np.ndarray]]:
        return {name: self.backend.score(model, split, measure, _seed_for(seed, k, salt=7)) for name, split in data.splits.items()}

    def _load_model(self, folder: Path):
        from safetensors.torch import load_file

        if not (folder / "model.safetensors").exists():
            raise L2VError(f"{folder} has no model to score the next step with (a recursive chain keeps only its latest "
                           f"model); delete {folder.parent} from this step on to recompute it")
        return self.backend.load(load_file(str(folder / "model.safetensors")), self.data)

    # ------------------------------------------------------------------ chains
    def base(self, seed: int) -> dict:
        return self._step(self.output / f"seed-{seed}" / "base", self.data, seed, 0, "base", None, keep_model=True)

    def random(self, seed: int) -> list[dict]:
        results = [self.base(seed)]
        data = self.data
        for previous, k in zip(self.ratios, self.ratios[1:]):
            folder = self.output / f"seed-{seed}" / "random" / f"k{k:03d}"
            if not (folder / "result.json").exists():
                if previous:
                    data = _load_masks(self.output / f"seed-{seed}" / "random" / f"k{previous:03d}", self.data)
                scores = {name: [np.random.default_rng([seed, k, split_index, i]).random(len(t)) for i, t in enumerate(split.tokens)]
                          for split_index, (name, split) in enumerate(data.splits.items())}
                data = _masked(data, scores, k, self.backend.mask_id)
            results.append(self._step(folder, data, seed, k, "random", None, keep_model=False))
        return results

    def measure(self, seed: int, measure: str, recursive: bool) -> list[dict]:
        if measure not in ALL_MEASURES or measure == "random":
            raise L2VError(f"unknown measure {measure!r}; choose from: {', '.join(m for m in ALL_MEASURES if m != 'random')}")
        results = [self.base(seed)]
        chain = self.output / f"seed-{seed}" / f"{measure}-{'recursive' if recursive else 'plain'}"
        base_folder = self.output / f"seed-{seed}" / "base"
        plain_scores = None
        previous_folder = base_folder
        for previous, k in zip(self.ratios, self.ratios[1:]):
            if k == 100:  # everything eligible is masked whatever the measure: shared with random
                results.append(self.random(seed)[-1])
                break
            folder = chain / f"k{k:03d}"
            if not (folder / "result.json").exists():
                data = self.data if previous == 0 else _load_masks(previous_folder, self.data)
                if recursive:
                    model = self._load_model(previous_folder)
                    scores = self._scores(model, data, measure, seed, k)
                else:
                    if plain_scores is None:
                        plain_scores = self._plain_scores(base_folder, chain, measure, seed)
                    scores = plain_scores
                results.append(self._step(folder, _masked(data, scores, k, self.backend.mask_id), seed, k, measure, recursive,
                                          keep_model=recursive))
                if recursive and previous_folder != base_folder:
                    (previous_folder / "model.safetensors").unlink(missing_ok=True)  # only the chain's latest model is needed
            else:
                results.append(json.loads((folder / "result.json").read_text()))
            previous_folder = folder
        return results

    def _plain_scores(self, base_folder: Path, chain: Path, measure: str, seed: int) -> dict[str, list[np.ndarray]]:
        from ..fileio import atomic_path, sha256_file

        path = chain / "importance.npz"
        base_model = sha256_file(base_folder / "model.safetensors") if (base_folder / "model.safetensors").exists() else ""
        if path.exists():
            with np.load(path) as arrays:
                if "base_model_sha256" in arrays.files and str(arrays["base_model_sha256"]) == base_model:  # this k=0 model's
                    return {name: [arrays[f"{name}_{i}"] for i in range(len(split))] for name, split in self.data.splits.items()}
        model = self._load_model(base_folder)
        scores = self._scores(model, self.data, measure, seed, 0)
        chain.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, base_model_sha256=np.asarray(base_model),
                                    **{f"{name}_{i}": values for name, rows in scores.items() for i, values in enumerate(rows)})
        return scores


@contextlib.contextmanager
def seed_lock(folder: Path):
    """Hold ``folder/.lock`` while a process computes this seed: two processes on one seed would race on its step
    folders and chain models, so the second one is refused."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise L2VError(f"{folder} is being computed by another process; wait for it or stop it first") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run(data: RoarData, output, measures: list[str], seeds: list[int], recursive: bool = True, **kwargs) -> list[dict]:
    """Every curve for ``measures`` (and random) over ``seeds``; returns all step results."""
    roar = RoarRun(data, output, **kwargs)
    results = []
    for seed in seeds:
        with seed_lock(roar.output / f"seed-{seed}"):
            results += roar.random(seed)
            for measure in measures:
                results += roar.measure(seed, measure, recursive)
    return results
