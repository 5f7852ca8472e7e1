"""Scoring descriptions against their ten candidates: embeddings (cached), the pipelines, per-description records.

A pipeline gives text embeddings and turns (ten image embeddings, one text embedding, video flag) into ten logits;
the prediction is the argmax, the gold image's rank its place when the ten are sorted by logit (ties keep the
lower index first, so rank 1 means exactly "predicted").
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import L2VError
from ..fileio import atomic_path, weights_signature
from .backends import HFDualEncoder, L2VTextTower
from .data import CANDIDATES, Example
from .models import ContextModule, ContextOptions, TextProjection, cosine_logits

logger = logging.getLogger(__name__)

HEAD_FILE = "imagecode.json"  # what a trained folder is: its mode, backbone and options


@dataclass
class Record:
    set_name: str
    position: int
    target: int | None
    scores: list[float]

    @property
    def prediction(self) -> int:
        return int(np.argmax(self.scores))

    @property
    def rank(self) -> int | None:
        if self.target is None:
            return None
        order = np.argsort(-np.asarray(self.scores, dtype=np.float64), kind="stable")
        return int(np.where(order == self.target)[0][0]) + 1


# ---------------------------------------------------------------------- embeddings
def _set_signature(sets: dict[str, list[Path]]) -> list:
    return [[name, [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]] for name, files in sets.items()]


def image_embeddings(backend: HFDualEncoder, sets: dict[str, list[Path]], cache: Path | None = None,
                     batch_size: int = 64, log: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """Each set's ten image embeddings [10, D] (not normalised), from ``cache`` when it holds this model's
    embeddings of exactly these files (names, sizes, times), else computed and written there."""
    from safetensors.torch import load_file, save_file

    path = None
    if cache is not None:
        key = json.dumps([backend.name, weights_signature(backend.name), _set_signature(sets)])
        path = Path(cache) / f"images-{hashlib.sha256(key.encode()).hexdigest()[:20]}.safetensors"
        if path.exists():
            stored = load_file(str(path))
            if set(stored) == set(sets):
                return stored
    names = list(sets)
    files = [f for name in names for f in sets[name]]
    rows = []
    for start in range(0, len(files), batch_size):
        rows.append(backend.encode_images(files[start:start + batch_size], batch_size=batch_size))
        if log and (start // batch_size) % 50 == 49:
            log(f"encoded {start + batch_size} of {len(files)} images")
    stacked = torch.cat(rows).reshape(len(names), CANDIDATES, -1)
    result = {name: stacked[i].contiguous() for i, name in enumerate(names)}
    if path is not None:
        with atomic_path(path) as tmp:
            save_file(result, str(tmp))
    return result


def stack_sets(examples: list[Example], embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([embeddings[e.set_name] for e in examples])


def texts_of(examples: list[Example]) -> list[str]:
    return [e.description.strip() for e in examples]  # as the official zero-shot script (text.strip())


# ---------------------------------------------------------------------- pipelines
class Pipeline:
    """Text embeddings and the ten logits of one variant."""

    name: str
    backend: HFDualEncoder
    text_limit: int | None = None
    truncated: int | None = None

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, images: torch.Tensor, texts: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ZeroShot(Pipeline):
    """Cosine of the text and image embeddings of one CLIP/SigLIP model (zero-shot, or after ContextBatch)."""

    def __init__(self, backend: HFDualEncoder, name: str | None = None):
        self.backend, self.name, self.text_limit = backend, name or f"zero-shot {backend.name}", backend.text_limit

    def text_embeddings(self, texts):
        self.truncated = self.backend.count_truncated(texts)
        return self.backend.encode_texts(texts)

    def logits(self, images, texts, video):
        return cosine_logits(images, texts)


class ContextPipeline(ZeroShot):
    def __init__(self, backend: HFDualEncoder, module: ContextModule, name: str):
        super().__init__(backend, name)
        self.module = module.eval()

    def logits(self, images, texts, video):
        with torch.no_grad():
            return self.module(images, texts, video)


class LitPipeline(Pipeline):
    def __init__(self, backend: HFDualEncoder, tower: L2VTextTower, projection: TextProjection, name: str):
        self.backend, self.tower, self.projection, self.name = backend, tower, projection.eval(), name
        self.text_limit = tower.encoder.config.max_length

    def text_embeddings(self, texts):
        embeddings = self.tower.encode_texts(texts)
        self.truncated = self.tower.truncated
        return embeddings

    def logits(self, images, texts, video):
        with torch.no_grad():
            return self.projection(images, texts)


def trained_folder(model: str) -> Path | None:
    """The folder of a trained ImageCoDe model named by ``model``: itself, or its ``final/`` (a training output)."""
    folder = Path(model)
    for candidate in (folder, folder / "final"):
        if (candidate / HEAD_FILE).is_file():
            return candidate
    return None


def load_pipeline(model: str, device: str | None = None, text_batch_size: int = 32) -> Pipeline:
    """Zero-shot for a CLIP/SigLIP hub id or folder; the trained variant for a folder ``l2v imagecode train`` wrote
    (its ``final/`` or ``best/``, or the output folder itself, meaning ``final/``)."""
    folder = trained_folder(model)
    if folder is None:
        if Path(model).is_dir() and (Path(model) / "checkpoints").is_dir():
            raise L2VError(f"{model} is an unfinished training run (no final/ yet): rerun the same `l2v imagecode train` "
                           "command to resume it, or evaluate its best/ folder if an epoch has ended")
        return ZeroShot(HFDualEncoder.from_pretrained(model, device=device))
    from safetensors.torch import load_file

    info = json.loads((folder / HEAD_FILE).read_text())
    mode = info.get("mode")
    if mode == "contextbatch":
        return ZeroShot(HFDualEncoder.from_pretrained(str(folder), device=device), name=f"ContextBatch {folder}")
    backend = HFDualEncoder.from_pretrained(info["backbone"], device=device)
    if mode == "context":
        module = ContextModule(backend.dimension, ContextOptions(**info["options"]))
        module.load_state_dict(load_file(str(folder / "head.safetensors")))
        return ContextPipeline(backend, module, name=f"context module {folder}")
    if mode == "lit":
        lit = info["options"]
        tower = L2VTextTower(info["text_encoder"], max_length=lit.get("max_length"), pooling=lit.get("pooling"),
                             instruction=lit.get("instruction"), batch_size=text_batch_size, device=device)
        projection = TextProjection(tower.dimension, backend.dimension)
        projection.load_state_dict(load_file(str(folder / "head.safetensors")))
        return LitPipeline(backend, tower, projection, name=f"l2v text tower {folder}")
    raise L2VError(f"{folder / HEAD_FILE}: unknown mode {mode!r}")


# ---------------------------------------------------------------------- scoring
def score(examples: list[Example], images: dict[str, torch.Tensor], texts: torch.Tensor,
          logits: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], batch_size: int = 512) -> list[Record]:
    """One record per description: its ten logits from ``logits(images [B,10,D], texts [B,D], video [B])``."""
    if len(texts) != len(examples):
        raise L2VError(f"{len(texts)} text embeddings for {len(examples)} descriptions")
    records = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        video = torch.tensor([not e.static for e in chunk])
        values = logits(stack_sets(chunk, images), texts[start:start + batch_size], video).float().cpu()
        for example, row in zip(chunk, values):
            records.append(Record(example.set_name, example.position, example.target, [float(v) for v in row]))
    return records


def evaluate(pipeline: Pipeline, examples: list[Example], sets: dict[str, list[Path]], cache: Path | None = None,
             image_batch_size: int = 64, log: Callable[[str], None] | None = None) -> list[Record]:
    images = image_embeddings(pipeline.backend, sets, cache=cache, batch_size=image_batch_size, log=log)
    texts = pipeline.text_embeddings(texts_of(examples))
    return score(examples, images, texts, pipeline.logits)
