"""Training on ImageCoDe, resumable like the rest of l2v (rerun the same command after a crash).

Three modes, one loop:

* ``contextbatch`` (Krojer et al. 2022, CLIP "+ContextBatch"): the whole CLIP/SigLIP model fine-tuned with
  cross-entropy over each description's own ten images (``logit_scale * cosine``), so the negatives are the
  minimally different candidates. Defaults follow the official setup: 36 descriptions a step, 30 epochs, lr 4e-6,
  betas (0.9, 0.98), eps 1e-6, Adam with weight decay 0.2 (the CLIP fine-tuning template the official scripts
  start from; the repository's later ``contra.py`` defaults to AdamW with decay 0.01: ``optimizer: adamw``,
  ``weight_decay: 0.01``).
* ``context``: the context module (``models.ContextModule``) over the frozen backbone's embeddings (computed once
  and cached in ``OUTPUT/features``); lr 1e-4 as the official head learning rate. Point ``model`` at a ContextBatch
  run's ``final/`` to train it on the fine-tuned backbone, as the paper does.
* ``lit``: the image tower frozen, an l2v text encoder (frozen) for the descriptions, and a trained linear
  projection into the image space (``models.TextProjection``); both embeddings cached.

Determinism and resumption follow ``l2v.train.runner``: the data order comes from (seed, epoch)
(``BatchPlan``), every step's randomness (dropout) from (seed, step); a checkpoint (trainable weights, optimizer
state, step) is a folder written atomically every ``save_every`` steps and at the end of each epoch, tied to the
config by a signature; ``metrics.jsonl`` and ``dev.jsonl`` are cut back to the checkpoint on resume, so a run
killed at any point and rerun logs exactly the losses of an uninterrupted run.

Outputs: ``OUTPUT/final/`` (and ``OUTPUT/best/``, the epoch with the best dev accuracy), each a folder
``l2v imagecode eval --model FOLDER`` evaluates; ``metrics.jsonl``, ``dev.jsonl``, ``loss.png``, ``config.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import L2VError
from ..fileio import atomic_dir, write_json_atomic
from ..train.config import apply_settings, from_mapping, read_yaml
from ..train.runner import BatchPlan, latest_checkpoint, loss_curve, restore_trainable, truncate_metrics
from .backends import HFDualEncoder, L2VTextTower
from .data import Example, check_image_sets, load_split, resolve_image_root
from .evaluate import HEAD_FILE, Record, ZeroShot, evaluate, image_embeddings, score, stack_sets, texts_of
from .models import ContextModule, ContextOptions, TextProjection, cosine_logits
from .report import summarize

MODES = ("contextbatch", "context", "lit")
DEFAULT_LEARNING_RATE = {"contextbatch": 4e-6, "context": 1e-4, "lit": 1e-3}
OPTIMIZERS = ("adam", "adamw")
CHECKPOINTS = "checkpoints"
# what may change between a checkpoint and its resumption: none of these changes a step
RESUMABLE_CHANGES = ("output", "images", "epochs", "max_steps", "save_every", "log_every", "device", "image_batch_size",
                     "evaluate_every_epoch")


@dataclass
class LitOptions:
    text_encoder: str = "smollm2-135m"  # an l2v encoder: built-in name, folder or hub id
    max_length: int | None = 128
    pooling: str | None = None
    instruction: str | None = None
    batch_size: int = 32


@dataclass
class ImageCodeTrainConfig:
    mode: str
    images: str  # the unzipped image-sets folder
    output: str
    model: str = "openai/clip-vit-base-patch16"  # the CLIP/SigLIP model (hub id or folder)
    data: str = "../shared/data/imagecode"  # the description files (either layout)
    epochs: int = 30
    max_steps: int | None = None  # stop after this many steps instead (a short run)
    batch_size: int = 36  # descriptions per step, each with its ten images
    learning_rate: float | None = None  # default per mode: 4e-6 contextbatch, 1e-4 context, 1e-3 lit
    optimizer: str = "adam"
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.2
    max_grad_norm: float = 0.0  # 0: no clipping (the official scripts clip nothing)
    mixed_precision: str = "no"  # "bf16": autocast the backbone's forward (contextbatch on a GPU)
    seed: int = 10  # the official scripts seed 10
    save_every: int = 100
    log_every: int = 1
    evaluate_every_epoch: bool = True  # dev accuracy after each epoch (dev.jsonl) and OUTPUT/best/
    limit_train: int | None = None  # a seeded sample of N training descriptions
    limit_valid: int | None = None
    image_batch_size: int = 64
    device: str | None = None
    context: ContextOptions = field(default_factory=ContextOptions)
    lit: LitOptions = field(default_factory=LitOptions)

    @property
    def lr(self) -> float:
        return float(self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATE[self.mode])


def load_config(path: str | Path | None = None, overrides: dict | None = None,
                settings: list[str] | None = None) -> ImageCodeTrainConfig:
    """A config from YAML (or none: options only); ``overrides`` replace top-level keys, ``settings`` are
    ``--set KEY=VALUE`` (dotted for sections: ``context.layers=4``)."""
    source = str(path) if path else "options"
    values = read_yaml(path) if path else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    apply_settings(values, settings or [], source)
    for required in ("mode", "images", "output"):
        if not values.get(required):
            raise L2VError(f"{source}: missing {required!r} (config key or --{required.replace('_', '-')})")
    config = from_mapping(ImageCodeTrainConfig, values, "", source)
    validate(config, source)
    return config


def validate(config: ImageCodeTrainConfig, source: str) -> None:
    if config.mode not in MODES:
        raise L2VError(f"{source}: mode must be one of {', '.join(MODES)}, got {config.mode!r}")
    if config.optimizer not in OPTIMIZERS:
        raise L2VError(f"{source}: optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}")
    if config.mixed_precision not in ("no", "bf16"):
        raise L2VError(f"{source}: mixed_precision must be 'no' or 'bf16', got {config.mixed_precision!r}")
    for name in ("epochs", "batch_size", "save_every", "log_every", "image_batch_size"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise L2VError(f"{source}: {name} must be a positive integer, got {value!r}")
    for name in ("max_steps", "limit_train", "limit_valid"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise L2VError(f"{source}: {name} must be a positive integer or null, got {value!r}")
    for owner, prefix, name in ((config, "", "learning_rate"), (config, "", "eps"), (config, "", "weight_decay"),
                                (config, "", "max_grad_norm"), (config.context, "context.", "dropout"),
                                (config.context, "context.", "fusion_scale")):
        value = getattr(owner, name)
        if value is None:
            continue
        try:
            setattr(owner, name, float(value))  # YAML reads 4e-6 (no dot) as a string
        except (TypeError, ValueError):
            raise L2VError(f"{source}: {prefix}{name} must be a number, got {value!r}") from None
    try:
        config.betas = [float(b) for b in config.betas]
    except (TypeError, ValueError):
        raise L2VError(f"{source}: betas must be two numbers, got {config.betas!r}") from None
    if len(config.betas) != 2:
        raise L2VError(f"{source}: betas must be two numbers, got {config.betas!r}")
    for name in ("layers", "heads", "ffn_dim"):
        value = getattr(config.context, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise L2VError(f"{source}: context.{name} must be a positive integer, got {value!r}")
    resolve_image_root(config.images)  # a missing image folder fails first, saying where the images come from


def signature(config: ImageCodeTrainConfig) -> str:
    values = dataclasses.asdict(config)
    for key in RESUMABLE_CHANGES:
        values.pop(key)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919) % (2**63 - 1)


# ---------------------------------------------------------------------- tasks
class ContextBatchTask:
    """The whole dual encoder trained with cross-entropy over each description's ten images."""

    def __init__(self, config: ImageCodeTrainConfig, train: list[Example], train_sets: dict, device: torch.device):
        self.config, self.examples, self.sets = config, train, train_sets
        self.backend = HFDualEncoder.from_pretrained(config.model, device=device)
        self.backend.model.train()
        self.trainable = {n: p for n, p in self.backend.model.named_parameters() if p.requires_grad}
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.mixed_precision == "bf16")
        self._loader = ThreadPoolExecutor(max_workers=1)  # reads the next step's images while this one trains
        self._pending: tuple[tuple, object] | None = None

    def _files(self, indices: list[int]) -> list[Path]:
        return [f for i in indices for f in self.sets[self.examples[i].set_name]]

    def prefetch(self, indices: list[int]) -> None:
        self._pending = (tuple(indices), self._loader.submit(self.backend.pixels, self._files(indices)))

    def loss(self, indices: list[int]) -> torch.Tensor:
        if self._pending is not None and self._pending[0] == tuple(indices):
            pixels = self._pending[1].result()
        else:
            pixels = self.backend.pixels(self._files(indices))
        self._pending = None
        batch = [self.examples[i] for i in indices]
        with self.autocast:
            images = self.backend.image_features(pixels).reshape(len(batch), -1, self.backend.dimension)
            texts = self.backend.text_features(self.backend.tokenize(texts_of(batch)))
            logits = self.backend.logit_scale() * cosine_logits(images, texts)
        targets = torch.tensor([e.target for e in batch], device=logits.device)
        return torch.nn.functional.cross_entropy(logits.float(), targets)

    def dev_records(self, valid: list[Example], valid_sets: dict) -> list[Record]:
        self.backend.model.eval()
        try:
            return evaluate(ZeroShot(self.backend), valid, valid_sets, cache=None, image_batch_size=self.config.image_batch_size)
        finally:
            self.backend.model.train()

    def save(self, folder: Path, extra: dict) -> None:
        self.backend.save(folder)
        write_json_atomic({"mode": "contextbatch", "base": self.config.model, **extra}, folder / HEAD_FILE)

    def close(self) -> None:
        self._loader.shutdown(wait=True)


def _cached_texts(path: Path, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    from safetensors.torch import load_file, save_file

    from ..fileio import atomic_path

    if path.exists():
        return load_file(str(path))["embeddings"]
    embeddings = compute().contiguous()
    with atomic_path(path) as tmp:
        save_file({"embeddings": embeddings}, str(tmp))
    return embeddings


class FrozenFeatureTask:
    """A small head over cached embeddings of a frozen backbone: the context module, or the l2v text projection."""

    def __init__(self, config: ImageCodeTrainConfig, train: list[Example], train_sets: dict, valid: list[Example],
                 valid_sets: dict, output: Path, device: torch.device, log: Callable[[str], None]):
        self.config, self.examples, self.valid = config, train, valid
        self.backend = HFDualEncoder.from_pretrained(config.model, device=device)
        features = output / "features"
        log(f"embedding the images of {len(train_sets)} training and {len(valid_sets)} dev sets (cached in {features})")
        self.images = image_embeddings(self.backend, train_sets, cache=features, batch_size=config.image_batch_size, log=log)
        self.valid_images = image_embeddings(self.backend, valid_sets, cache=features, batch_size=config.image_batch_size,
                                             log=log) if valid else {}
        key = hashlib.sha256(json.dumps([signature(config)]).encode()).hexdigest()[:16]
        if config.mode == "lit":
            tower = L2VTextTower(config.lit.text_encoder, max_length=config.lit.max_length, pooling=config.lit.pooling,
                                 instruction=config.lit.instruction, batch_size=config.lit.batch_size,
                                 device=str(device))
            encode, text_dimension = tower.encode_texts, tower.dimension
        else:
            encode, text_dimension = self.backend.encode_texts, self.backend.dimension
        self.texts = _cached_texts(features / f"texts-train-{key}.safetensors", lambda: encode(texts_of(train)))
        self.valid_texts = _cached_texts(features / f"texts-valid-{key}.safetensors",
                                         lambda: encode(texts_of(valid))) if valid else None
        torch.manual_seed(config.seed)  # the head's initial weights
        if config.mode == "context":
            self.head = ContextModule(self.backend.dimension, config.context).to(device)
        else:
            self.head = TextProjection(text_dimension, self.backend.dimension).to(device)
        self.head.train()
        self.trainable = {n: p for n, p in self.head.named_parameters()}
        self.device = device

    def prefetch(self, indices: list[int]) -> None:
        pass

    def _logits(self, images, texts, video):
        images, texts = images.to(self.device), texts.to(self.device)
        if self.config.mode == "context":
            return self.head(images, texts, video.to(self.device))
        return self.head(images, texts)

    def loss(self, indices: list[int]) -> torch.Tensor:
        batch = [self.examples[i] for i in indices]
        video = torch.tensor([not e.static for e in batch])
        logits = self._logits(stack_sets(batch, self.images), self.texts[indices], video)
        targets = torch.tensor([e.target for e in batch], device=logits.device)
        return torch.nn.functional.cross_entropy(logits, targets)

    def dev_records(self, valid: list[Example], valid_sets: dict) -> list[Record]:
        self.head.eval()
        try:
            with torch.no_grad():
                return score(valid, self.valid_images, self.valid_texts, self._logits)
        finally:
            self.head.train()

    def save(self, folder: Path, extra: dict) -> None:
        from safetensors.torch import save_file

        save_file({n: p.detach().cpu().contiguous() for n, p in self.head.state_dict().items()},
                  str(folder / "head.safetensors"))
        backbone = str(Path(self.config.model).resolve()) if Path(self.config.model).is_dir() else self.config.model
        options = dataclasses.asdict(self.config.context if self.config.mode == "context" else self.config.lit)
        info = {"mode": self.config.mode, "backbone": backbone, "options": options, **extra}
        if self.config.mode == "lit":
            encoder = self.config.lit.text_encoder
            info["text_encoder"] = str(Path(encoder).resolve()) if Path(encoder).is_dir() else encoder
        write_json_atomic(info, folder / HEAD_FILE)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------- checkpoints
def make_optimizer(parameters: list, config: ImageCodeTrainConfig) -> torch.optim.Optimizer:
    kind = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return kind(parameters, lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay)


def save_checkpoint(output: Path, step: int, trainable: dict, optimizer, config: ImageCodeTrainConfig, extra: dict,
                    keep: int = 2) -> Path:
    from safetensors.torch import save_file

    target = output / CHECKPOINTS / f"step-{step:08d}"
    weights = {name: p.detach().cpu().clone() for name, p in trainable.items()}
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}::{key}"] = value.detach().cpu().clone()
            else:
                scalars[f"{index}::{key}"] = value
    with atomic_dir(target, overwrite=True) as tmp:
        save_file(weights, str(tmp / "trainable.safetensors"))
        if tensors:
            save_file(tensors, str(tmp / "optimizer.safetensors"))
        record = {"step": step, "config_signature": signature(config), "optimizer_scalars": scalars,
                  "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]], **extra}
        (tmp / "state.json").write_text(json.dumps(record, indent=1))
    old = sorted(p for p in (output / CHECKPOINTS).iterdir() if p.name.startswith("step-"))
    for stale in old[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return target


def load_checkpoint(folder: Path, trainable: dict, optimizer, config: ImageCodeTrainConfig) -> dict:
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text())
    if state.get("config_signature") != signature(config):
        raise L2VError(f"{folder} was written with a different config (only {', '.join(RESUMABLE_CHANGES)} may change "
                       "when resuming); use a new output folder or restore the config")
    restore_trainable(folder, trainable)
    tensors = load_file(str(folder / "optimizer.safetensors")) if (folder / "optimizer.safetensors").exists() else {}
    entries: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(state["optimizer_scalars"].items()):
        index, _, name = key.partition("::")
        entries.setdefault(int(index), {})[name] = value
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": entries, "param_groups": [
        {**saved, "params": group["params"]} for saved, group in zip(state["param_groups"], current["param_groups"])]})
    return state


# ---------------------------------------------------------------------- the loop
def _dev_line(step: int, epoch: int, records: list[Record], seconds: float) -> dict:
    summary = summarize(records)
    return {"step": step, "epoch": epoch, "seconds": round(seconds, 3), "accuracy": summary["accuracy"], "mrr": summary["mrr"]}


def train(config: ImageCodeTrainConfig, log: Callable[[str], None] = print, show_progress: bool = True,
          on_step_end: Callable[[int], None] | None = None) -> Path:
    """Train ``config`` (resuming from its latest checkpoint); returns ``OUTPUT/final``."""
    from tqdm.auto import tqdm

    output = Path(config.output)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_examples = load_split(config.data, "train", config.limit_train, config.seed)
    if train_examples[0].target is None:
        raise L2VError(f"{config.data}: the training descriptions have no target indices")
    valid = load_split(config.data, "valid", config.limit_valid, config.seed) if config.evaluate_every_epoch else []
    train_sets = check_image_sets(config.images, train_examples)  # before any model loads
    valid_sets = check_image_sets(config.images, valid) if valid else {}
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(dataclasses.asdict(config), output / "config.json")
    torch.manual_seed(config.seed)
    if config.mode == "contextbatch":
        task = ContextBatchTask(config, train_examples, train_sets, device)
    else:
        task = FrozenFeatureTask(config, train_examples, train_sets, valid, valid_sets, output, device, log)
    if config.mode != "lit":
        cut = task.backend.count_truncated(texts_of(train_examples))
        log(f"{cut} of {len(train_examples)} training descriptions are longer than the text tower's "
            f"{task.backend.text_limit} tokens and are truncated")
    trainable = task.trainable
    parameters = list(trainable.values())
    optimizer = make_optimizer(parameters, config)
    plan = BatchPlan({"train": list(range(len(train_examples)))}, config.batch_size, config.seed)
    total = config.max_steps or config.epochs * plan.per_epoch
    metrics_path, dev_path = output / "metrics.jsonl", output / "dev.jsonl"
    start, trained_before = 0, 0.0
    checkpoint = latest_checkpoint(output)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, trainable, optimizer, config)
        start, trained_before = int(state["step"]), float(state.get("seconds", 0.0))
        truncate_metrics(metrics_path, start)
        truncate_metrics(dev_path, start)
        log(f"resuming from {checkpoint} (step {start})")
    else:
        metrics_path.unlink(missing_ok=True)
        dev_path.unlink(missing_ok=True)
    best = max((json.loads(line)["accuracy"]["all"] for line in dev_path.read_text().splitlines() if line.strip()),
               default=-1.0) if dev_path.exists() else -1.0
    log(f"{config.mode}: {len(train_examples)} training descriptions, {plan.per_epoch} steps of {config.batch_size} an epoch, "
        f"{total} steps, lr {config.lr:g}, {len(parameters)} trainable tensors "
        f"({sum(p.numel() for p in parameters):,} weights) on {device}")
    progress = tqdm(total=total, initial=start, desc=f"imagecode {config.mode}", disable=not show_progress)
    begin = time.perf_counter()
    evaluation_seconds = 0.0
    try:
        if start < total:
            task.prefetch(plan.batch(start))
        for step in range(start, total):
            torch.manual_seed(_step_seed(config.seed, step))
            if torch.cuda.is_available():
                torch.cuda.manual_seed_all(_step_seed(config.seed, step))
            indices = plan.batch(step)
            optimizer.zero_grad(set_to_none=True)
            loss = task.loss(indices)
            if step + 1 < total:
                task.prefetch(plan.batch(step + 1))
            loss.backward()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise L2VError(f"loss is {value} at step {step + 1}; lower the learning rate or check the data")
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            done = step + 1
            progress.update(1)
            progress.set_postfix(loss=f"{value:.4f}")
            seconds = trained_before + time.perf_counter() - begin - evaluation_seconds
            epoch_end = done % plan.per_epoch == 0
            if done % config.log_every == 0 or done == total:
                with open(metrics_path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps({"step": done, "epoch": (done - 1) // plan.per_epoch + 1, "loss": value,
                                             "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3)}) + "\n")
            if valid and (epoch_end or done == total):
                began = time.perf_counter()
                line = _dev_line(done, (done - 1) // plan.per_epoch + 1, task.dev_records(valid, valid_sets), seconds)
                evaluation_seconds += time.perf_counter() - began
                with open(dev_path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(line) + "\n")
                log(f"dev after step {done}: accuracy {line['accuracy']['all']} (video {line['accuracy']['video']}, "
                    f"static {line['accuracy']['static']})")
                if line["accuracy"]["all"] > best:
                    best = line["accuracy"]["all"]
                    with atomic_dir(output / "best", overwrite=True) as tmp:
                        task.save(tmp, {"step": done, "dev_accuracy": line["accuracy"]})
            if done % config.save_every == 0 or epoch_end or done == total:
                save_checkpoint(output, done, trainable, optimizer, config, {"seconds": round(seconds, 3)})
            if on_step_end is not None:
                on_step_end(done)
    finally:
        progress.close()
        task.close()
    final = output / "final"
    with atomic_dir(final, overwrite=True) as tmp:
        task.save(tmp, {"step": total})
    if metrics_path.exists():
        with contextlib.suppress(Exception):  # the curve is a convenience; the numbers are in metrics.jsonl
            loss_curve(metrics_path, output / "loss.png")
    log(f"wrote {final} (evaluate it with: l2v imagecode eval --model {final} --images {config.images})")
    return final
