"""The training loop for all three stages: deterministic, checkpointed, resumable, distributed.

* Every step's randomness (MNTP masks, dropout) is drawn from a seed derived from (seed, step, rank), and the
  data order from (seed, epoch), so a run resumed from a checkpoint computes exactly the losses an
  uninterrupted run computes.
* A checkpoint (trainable weights, optimizer and scheduler state, step) is a folder written atomically every
  ``save_every`` steps, in safetensors and JSON; ``metrics.jsonl`` is cut back to the checkpoint on resume.
* Under ``torchrun`` each process takes its slice of the global batch, contrastive negatives are gathered
  across processes, and gradients are averaged (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..errors import L2VError
from ..fileio import atomic_dir, atomic_path, write_json_atomic
from .config import TrainConfig
from .data import load_texts, load_triples

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


# ---------------------------------------------------------------------- distributed set-up
def _init_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():  # before the process group, so collectives use this process's GPU
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _step_seed(config: TrainConfig, step: int, rank: int) -> int:
    return (config.seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


# ---------------------------------------------------------------------- batches
class BatchPlan:
    """Global batches of example indices, each from one dataset, reshuffled every epoch from the seed."""

    def __init__(self, groups: dict[str, list[int]], global_batch: int, seed: int):
        self.groups, self.global_batch, self.seed = groups, global_batch, seed
        self.per_epoch = sum(len(v) // global_batch for v in groups.values())
        if self.per_epoch == 0:
            biggest = max(len(v) for v in groups.values())
            raise L2VError(f"not enough training examples for one global batch of {global_batch} (largest dataset has {biggest})")
        small = sorted(name for name, members in groups.items() if len(members) < global_batch)
        if small:  # a batch is drawn from one dataset, so these never appear in training
            logger.warning("datasets %s have fewer examples than one global batch (%d) and are not trained on",
                           ", ".join(small), global_batch)
        self._cache: dict[int, list[list[int]]] = {}

    def _epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._cache:
            rng = np.random.default_rng(self.seed + epoch)
            batches = []
            for name in sorted(self.groups):
                members = rng.permutation(self.groups[name])
                batches += [members[i: i + self.global_batch].tolist() for i in range(0, len(members) - self.global_batch + 1, self.global_batch)]
            order = rng.permutation(len(batches))
            self._cache = {epoch: [batches[i] for i in order]}
        return self._cache[epoch]

    def batch(self, step: int) -> list[int]:
        return self._epoch(step // self.per_epoch)[step % self.per_epoch]


# ---------------------------------------------------------------------- models
def _apply_lora(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model

    linear = {name.split(".")[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    if config.lora.target_modules is None:  # the backbone has no LM head: its linear layers are the projections
        targets = sorted(linear)
    else:
        present = {name.split(".")[-1] for name, _ in model.named_modules()}
        targets = [t for t in config.lora.target_modules if t in present]
        missing = [t for t in config.lora.target_modules if t not in present]
        if not targets:
            raise L2VError(f"none of lora.target_modules {config.lora.target_modules} exist in this model "
                           f"(its linear layers: {', '.join(sorted(linear))})")
        if missing:
            logger.warning("lora.target_modules %s do not exist in this model; LoRA goes on %s", missing, targets)
    lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout, target_modules=targets)
    if config.gradient_checkpointing:
        # Activations of each decoder layer are recomputed in backward instead of kept: memory for time. The
        # non-reentrant form needs no input gradients (frozen embeddings under LoRA) and replays the RNG, so
        # dropout (SimCSE's only augmentation) draws the same masks: the loss and gradients are unchanged.
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise L2VError(f"gradient_checkpointing: {type(model).__name__} does not support it")
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return get_peft_model(model, lora)


class Stage:
    """What differs between MNTP, SimCSE and supervised: the model, one step's loss, and the saved encoder."""

    def __init__(self, config: TrainConfig, rank: int, world: int):
        from ..encoder import Encoder

        self.config, self.rank, self.world = config, rank, world
        # Data first: a bad file fails before any model is loaded.
        if config.stage == "supervised":
            self.examples = load_triples(config.data)
            groups: dict[str, list[int]] = {}
            for index, triple in enumerate(self.examples):
                groups.setdefault(triple.dataset, []).append(index)
        else:
            self.examples = load_texts(config.data)
            groups = {"default": list(range(len(self.examples)))}
        self.plan = BatchPlan(groups, config.batch_size * world, config.seed)
        if config.stage == "mntp":
            self._init_mntp()
        else:
            self.encoder = Encoder.from_pretrained(
                config.model, adapters=config.adapters or None, merge_adapters=True, pooling=config.pooling,
                max_length=config.max_length, dtype=config.dtype, device=self._device(),
            )
            if config.stage == "simcse" or config.contrastive.attention_dropout is not None:
                from .simcse import set_dropout

                dropout = config.contrastive.attention_dropout
                set_dropout(self.encoder.model, attention_dropout=0.3 if dropout is None else dropout)
            self.encoder.model = _apply_lora(self.encoder.model, config)
            self.module = self.encoder
            self.tokenizer = self.encoder.tokenizer

    def _device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")

    def _init_mntp(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..bidirectional import model_family, set_attention
        from ..encoder import DTYPES, Encoder, EncoderConfig, apply_adapters
        from ..pooling import build_pooling
        from ..registry import resolve
        from .mntp import mask_token_id

        config = self.config
        resolved = resolve(config.model)
        lm = AutoModelForCausalLM.from_pretrained(resolved.location, dtype=DTYPES[config.dtype],
                                                  local_files_only=resolved.local_files_only)
        lm.to(self._device())
        backbone = lm.get_decoder()
        for folder in config.adapters:
            backbone = apply_adapters(backbone, Path(folder), merge=True)
        set_attention(backbone, True)
        tokenizer = AutoTokenizer.from_pretrained(resolved.location, local_files_only=resolved.local_files_only)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.mask_id = mask_token_id(tokenizer, model_family(backbone), config.mntp.mask_token)
        self.lm_head = lm.get_output_embeddings()
        for parameter in self.lm_head.parameters():
            parameter.requires_grad_(False)
        self.softcap = getattr(lm.config, "final_logit_softcapping", None)
        backbone = _apply_lora(backbone, config)
        base = resolved.location if resolved.builtin is None else config.model  # a folder is stored absolute
        encoder_config = EncoderConfig(base_model=base, pooling=config.pooling, bidirectional=True, max_length=config.max_length)
        self.encoder = Encoder(backbone, tokenizer, encoder_config, build_pooling(config.pooling, backbone.config.hidden_size))
        self.encoder.merged_adapter_folders = [Path(f) for f in config.adapters]
        self.module = self.encoder
        self.tokenizer = tokenizer
        self.vocab_size = self.lm_head.out_features if hasattr(self.lm_head, "out_features") else lm.config.vocab_size

    # ------------------------------------------------------------------ one step
    def loss(self, indices: list[int], seed: int) -> torch.Tensor:
        config, encoder = self.config, self.encoder
        local = indices[self.rank * config.batch_size:(self.rank + 1) * config.batch_size]
        if config.stage == "mntp":
            from .mntp import MaskingConfig, mask_for_mntp, mntp_loss_grouped

            batch = encoder.collate(encoder.tokenize([self.examples[i] for i in local]), padding_side="right")
            special = batch["pooling_mask"].eq(0) & batch["attention_mask"].bool()
            generator = torch.Generator().manual_seed(seed ^ 0x5DEECE66D)  # a stream apart from dropout's
            corrupted, labels = mask_for_mntp(batch["input_ids"], batch["attention_mask"], special, self.mask_id,
                                              self.vocab_size, MaskingConfig(probability=config.mntp.probability), generator)
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            items = [(corrupted[row, :n].tolist(), labels[row, :n].tolist()) for row, n in enumerate(lengths)]
            return mntp_loss_grouped(encoder.model, self.lm_head, items, self.tokenizer.pad_token_id, self.softcap)
        if config.stage == "simcse":
            from .simcse import simcse_loss

            tokenized = encoder.tokenize([self.examples[i] for i in local])
            return simcse_loss(encoder, tokenized, config.temperature(), config.contrastive.gather_negatives)
        from .batching import embed_in_groups
        from .supervised import contrastive_loss, grad_cache_step

        triples = [self.examples[i] for i in local]
        roles = [[(t.instruction, t.query) for t in triples], [t.positive for t in triples]]
        if triples[0].negative is not None:
            roles.append([t.negative for t in triples])
        loss_fn = lambda *embeddings: contrastive_loss(*embeddings, temperature=config.temperature(),  # noqa: E731
                                                       gather=config.contrastive.gather_negatives)
        chunk = config.contrastive.chunk_size
        if chunk:
            # GradCache chunks cut from each role sorted by length (little padding per chunk); the loss sees the
            # embeddings back in batch order, so pairs and in-batch negatives are unchanged.
            groups, inverses = [], []
            for role in roles:
                tokenized = encoder.tokenize(role)
                order = sorted(range(len(tokenized)), key=lambda i: -len(tokenized[i].input_ids))
                inverses.append(torch.argsort(torch.tensor(order)))
                ordered = [tokenized[i] for i in order]
                groups.append([encoder.collate(ordered[i: i + chunk]) for i in range(0, len(ordered), chunk)])
            in_batch_order = lambda *embeddings: loss_fn(*[e[inverse.to(e.device)] for e, inverse in zip(embeddings, inverses)])  # noqa: E731
            return grad_cache_step(encoder, groups, in_batch_order, module=encoder)
        return loss_fn(*[embed_in_groups(encoder, encoder.tokenize(role)) for role in roles])

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in self.module.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------- checkpoints
def _latest_checkpoint(output: Path) -> Path | None:
    folder = output / CHECKPOINTS
    if not folder.is_dir():
        return None
    complete = sorted(p for p in folder.iterdir() if p.name.startswith("step-") and (p / "state.json").exists())
    return complete[-1] if complete else None


def config_signature(config: TrainConfig) -> str:
    """What must not change between a checkpoint and its resumption (steps, output and cadence may)."""
    import dataclasses
    import hashlib

    from ..fileio import sha256_file

    values = dataclasses.asdict(config)
    for key in ("steps", "output", "save_every", "log_every", "encoder_max_length", "gradient_checkpointing"):  # none changes a step
        values.pop(key)
    # the adapters trained on top of are named by their contents, not only their path: a retrained MNTP adapter
    # under the same folder must not be paired with a SimCSE checkpoint trained on the old one
    if config.adapters:  # (a stage without adapters keeps the signature it always had)
        values["adapter_contents"] = [
            {str(p.relative_to(folder)): sha256_file(p) for p in sorted(Path(folder).rglob("*.safetensors"))}
            for folder in config.adapters if Path(folder).is_dir()
        ]
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _save_checkpoint(output: Path, step: int, stage: Stage, optimizer, scheduler, keep: int = 2) -> Path:
    from safetensors.torch import save_file

    target = output / CHECKPOINTS / f"step-{step:08d}"
    weights = {name: p.detach().cpu().contiguous() for name, p in stage.trainable().items()}
    names = {id(p): name for name, p in stage.trainable().items()}
    optimizer_tensors, optimizer_scalars = {}, {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for key, value in optimizer.state.get(parameter, {}).items():
                if torch.is_tensor(value):
                    optimizer_tensors[f"{names[id(parameter)]}::{key}"] = value.detach().cpu().contiguous()
                else:
                    optimizer_scalars[f"{names[id(parameter)]}::{key}"] = value
    with atomic_dir(target, overwrite=True) as tmp:
        save_file(weights, str(tmp / "trainable.safetensors"))
        if optimizer_tensors:
            save_file(optimizer_tensors, str(tmp / "optimizer.safetensors"))
        state = {
            "step": step,
            "config_signature": config_signature(stage.config),
            "world": stage.world,
            "scheduler": scheduler.state_dict(),
            "optimizer_scalars": optimizer_scalars,
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    old = sorted(p for p in (output / CHECKPOINTS).iterdir() if p.name.startswith("step-"))
    for stale in old[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return target


def _load_checkpoint(folder: Path, stage: Stage, optimizer, scheduler) -> int:
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text())
    if state.get("config_signature") != config_signature(stage.config):
        raise L2VError(f"{folder} was written with a different config (only steps, output, save_every, log_every, "
                       "encoder_max_length and gradient_checkpointing may change when resuming); use a new output folder or restore the config")
    if state.get("world", 1) != stage.world:
        raise L2VError(f"{folder} was written by {state.get('world', 1)} process(es), this run has {stage.world}: the global "
                       "batch and the data order would change; resume with the same --nproc_per_node")
    trainable = stage.trainable()
    weights = load_file(str(folder / "trainable.safetensors"))
    if set(weights) != set(trainable):
        raise L2VError(f"{folder}: checkpoint does not match the model (different trainable parameters)")
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(weights[name].to(parameter.device))
    tensors = load_file(str(folder / "optimizer.safetensors")) if (folder / "optimizer.safetensors").exists() else {}
    for name, parameter in trainable.items():
        entry = {}
        for key, value in tensors.items():
            owner, _, field_name = key.rpartition("::")
            if owner == name:
                entry[field_name] = value.to(parameter.device) if field_name != "step" else value
        for key, value in state["optimizer_scalars"].items():
            owner, _, field_name = key.rpartition("::")
            if owner == name:
                entry[field_name] = value
        if entry:
            optimizer.state[parameter] = entry
    for group, saved in zip(optimizer.param_groups, state["param_groups"]):
        group.update(saved)
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line torn by the crash
            continue
        if record.get("step", step + 1) <= step:
            kept.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))


def loss_curve(metrics_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([r["step"] for r in rows], [r["loss"] for r in rows], linewidth=1)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title(png_path.parent.name)
    figure.tight_layout()
    with atomic_path(png_path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


# ---------------------------------------------------------------------- the loop
def train(config: TrainConfig, show_progress: bool = True, log=print) -> Path:
    rank, world = _init_distributed()
    output = Path(config.output)
    torch.manual_seed(config.seed)
    stage = Stage(config, rank, world)
    output.mkdir(parents=True, exist_ok=True)
    parameters = list(stage.trainable().values())
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)

    def schedule(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        remaining = max(config.steps - config.warmup_steps, 1)
        return max(0.0, 1.0 - (step - config.warmup_steps) / remaining)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    metrics_path = output / "metrics.jsonl"
    start = 0
    checkpoint = _latest_checkpoint(output)
    if checkpoint is not None:
        start = _load_checkpoint(checkpoint, stage, optimizer, scheduler)
        if rank == 0:
            _truncate_metrics(metrics_path, start)
            log(f"resuming from {checkpoint} (step {start})")
    elif rank == 0 and metrics_path.exists():
        metrics_path.unlink()
    if rank == 0:
        import dataclasses

        write_json_atomic(dataclasses.asdict(config), output / "config.json")
    kill_after = int(os.environ.get("L2V_TEST_KILL_AFTER_STEP", "0"))  # test hook: simulate a crash (SIGKILL)
    stage.module.train()
    progress = tqdm(total=config.steps, initial=start, desc=f"{config.stage}", disable=not show_progress or rank != 0)
    begin = time.perf_counter()
    for step in range(start, config.steps):
        seed = _step_seed(config, step, rank)
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
        optimizer.zero_grad(set_to_none=True)
        loss = stage.loss(stage.plan.batch(step), seed)
        if loss.requires_grad:
            loss.backward()
        if world > 1:
            for parameter in parameters:
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                dist.all_reduce(parameter.grad)
                parameter.grad /= world
            reported = loss.detach().clone()
            dist.all_reduce(reported)
            reported = float(reported) / world
        else:
            reported = float(loss.detach())
        if not math.isfinite(reported):
            raise L2VError(f"loss is {reported} at step {step + 1}; lower the learning rate or check the data")
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        done = step + 1
        progress.update(1)
        progress.set_postfix(loss=f"{reported:.4f}")
        if rank == 0 and (done % config.log_every == 0 or done == config.steps):
            with open(metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": done, "loss": reported, "lr": scheduler.get_last_lr()[0],
                                         "seconds": round(time.perf_counter() - begin, 3)}) + "\n")
        if rank == 0 and (done % config.save_every == 0 or done == config.steps):
            _save_checkpoint(output, done, stage, optimizer, scheduler)
        if world > 1:
            dist.barrier()
        if kill_after and done == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    progress.close()
    final = output / "encoder"
    if rank == 0:
        # the saved encoder truncates at the inference length, not at the (often short) training length
        stage.encoder.config.max_length = config.encoder_max_length
        stage.encoder.save(final, overwrite=True)
        if metrics_path.exists():
            loss_curve(metrics_path, output / "loss.png")
        log(f"wrote {final} (load it with Encoder.from_pretrained({str(final)!r}))")
    if world > 1:
        dist.barrier()
    return final
