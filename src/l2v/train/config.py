"""Training configuration: plain dataclasses read from YAML; an unknown key is an error naming it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import L2VError



@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # None: every linear projection of the decoder layers (attention and MLP) whatever the family calls them
    # (Llama q/k/v/o/gate/up/down_proj, Phi-3 qkv_proj/gate_up_proj, ...); or a list of module names
    target_modules: list[str] | None = None
    # True: LoRA's products run in the base weights' dtype (bf16 when the model is loaded in bf16), the adapter's
    # master weights and optimizer state stay float32. False: peft's default, every adapted projection's input is
    # cast up to float32 first (about 18 % slower per step on a CPU with bf16 weights; same losses to bf16 precision)
    compute_in_base_dtype: bool = True


@dataclass
class DataConfig:
    # a local file or a list of them: .txt / .jsonl texts (either may be .gz), or .jsonl triples for supervised
    train: str | list[str] | None = None
    hub: str | None = None  # a Hugging Face dataset name (users with internet)
    hub_split: str = "train"
    text_field: str = "text"
    max_examples: int | None = None
    min_words: int = 0  # texts with fewer whitespace-separated words are left out (e.g. Wikipedia's heading lines)


@dataclass
class MntpOptions:
    probability: float = 0.2
    mask_token: str | None = None  # default: the tokenizer's, else l2v's per-family choice


@dataclass
class ContrastiveOptions:
    temperature: float | None = None  # default: 0.05 (SimCSE), 0.02 (supervised)
    attention_dropout: float | None = None  # default: 0.3 for SimCSE (the paper), unchanged for supervised
    chunk_size: int | None = None  # GradCache chunk (supervised); None = no caching
    gather_negatives: bool = True


@dataclass
class DevConfig:
    """Development-set scores during training (learning curves): written to ``OUTPUT/dev.jsonl``."""
    sts: list[str] = field(default_factory=list)  # STS files (sentence1, sentence2, score): Spearman x100 of cosine
    every: int = 0  # steps between evaluations (0: only before the first step and after the last)


@dataclass
class TrainConfig:
    stage: str
    model: str
    output: str
    data: DataConfig = field(default_factory=DataConfig)
    adapters: list[str] = field(default_factory=list)  # merged into the model before training (e.g. MNTP's)
    pooling: str = "mean"
    pooling_options: dict = field(default_factory=dict)  # e.g. {skip_first_token: true} (mean pooling); saved with the encoder
    max_length: int = 128  # training truncates texts here
    encoder_max_length: int = 512  # stored with the saved encoder: what encoding truncates at
    batch_size: int = 32
    steps: int = 1000
    learning_rate: float = 5e-5
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    save_every: int = 100
    log_every: int = 1
    dtype: str = "float32"
    mixed_precision: str = "no"  # "bf16": autocast the forward to bfloat16 (weights and optimizer stay as loaded)
    gradient_accumulation_steps: int = 1  # micro-batches of batch_size per process in one optimizer step
    trackers: list[str] = field(default_factory=list)  # accelerate trackers beside metrics.jsonl, e.g. [tensorboard]
    gradient_checkpointing: bool = False  # recompute layer activations in backward: less memory, same result
    # the attention kernel training runs (any transformers attn_implementation); "auto": "eager" on a CPU in bf16
    # with max_length <= 128 (transformers' eager attention trains faster there than the SDPA kernel), else the
    # model's default. Not saved with the encoder: encoding picks its own.
    attn_implementation: str = "auto"
    # a batch runs as length groups (one forward each, padded within a group) that hold at least this many padded
    # positions; None: 256 on a CPU (padding is arithmetic), on a GPU 65,536 below a billion parameters (each
    # group's kernel launches cost more than its padding; one group may hold 2.5-4x the positions, i.e. activation
    # memory) and 4,096 above. The loss is the same (float rounding aside): a run may resume with another value.
    # Not used by GradCache (contrastive.chunk_size), whose chunks are fixed-size.
    group_min_tokens: int | None = None
    # shard the frozen base and the LoRA weights over the processes (FSDP2, by accelerate) instead of copying them
    # to each (DDP): for bases that do not fit one device; also on with `accelerate launch --use_fsdp`
    fsdp: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    mntp: MntpOptions = field(default_factory=MntpOptions)
    contrastive: ContrastiveOptions = field(default_factory=ContrastiveOptions)
    dev: DevConfig = field(default_factory=DevConfig)


def from_mapping(cls, values: Any, where: str, source: str):
    """A config dataclass from a mapping (nested dataclasses from nested mappings); an unknown key is an error
    naming it and ``source``."""
    if not isinstance(values, dict):
        raise L2VError(f"{source}: {where or 'the config'} must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise L2VError(f"{source}: unknown config key {where + '.' if where else ''}{unknown[0]!r} (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in values.items():
        nested = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        if nested is not None and dataclasses.is_dataclass(nested):
            kwargs[name] = from_mapping(nested, value or {}, f"{where + '.' if where else ''}{name}", source)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise L2VError(f"{source}: {where or 'config'}: {error}") from None


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file, or a one-line error naming it."""
    path = Path(path)
    if not path.exists():
        raise L2VError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise L2VError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise L2VError(f"{path}: the config must be a mapping of keys to values, got {type(values).__name__}")
    return values


def apply_settings(values: dict, settings: list[str], source: str) -> dict:
    """``KEY=VALUE`` strings (``--set``) into a config mapping: a dotted key reaches into nested sections
    (``data.train=x.txt``, ``lora.r=8``), the value is read as YAML (``adapters=[a, b]``, ``fsdp=true``)."""
    for setting in settings:
        key, sep, raw = setting.partition("=")
        if not sep or not key.strip():
            raise L2VError(f"{source}: --set {setting!r}: expected KEY=VALUE (e.g. data.train=texts.txt)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise L2VError(f"{source}: --set {setting!r}: the value is not valid YAML") from None
        parts = key.strip().split(".")
        target = values
        for part in parts[:-1]:
            nested = target.setdefault(part, {})
            if not isinstance(nested, dict):
                raise L2VError(f"{source}: --set {setting!r}: {part!r} is not a section")
            target = nested
        target[parts[-1]] = value
    return values


def load_config(path: str | Path, overrides: dict | None = None, settings: list[str] | None = None) -> TrainConfig:
    """A training config from YAML; ``overrides`` replace top-level keys, ``settings`` are ``--set KEY=VALUE``."""
    path = Path(path)
    values = read_yaml(path)
    values.update(overrides or {})
    apply_settings(values, settings or [], str(path))
    for required in ("stage", "model", "output"):
        if required not in values:
            raise L2VError(f"{path}: missing config key {required!r}")
    config = from_mapping(TrainConfig, values, "", str(path))
    validate(config, str(path))
    return config


def validate(config: "TrainConfig", source: str, prefix: str = "") -> None:
    """Every check a training config gets before anything is loaded (``l2v train`` and each stage of ``l2v
    convert``); ``prefix`` names the key's place in the file (``stages.simcse.``)."""
    from .objectives import OBJECTIVES

    if config.stage not in OBJECTIVES:
        raise L2VError(f"{source}: {prefix}stage must be one of {', '.join(OBJECTIVES)}, got {config.stage!r}")
    for name in ("batch_size", "steps", "save_every", "max_length", "encoder_max_length", "log_every",
                 "gradient_accumulation_steps"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise L2VError(f"{source}: {prefix}{name} must be a positive integer, got {value!r}")
    value = config.group_min_tokens
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise L2VError(f"{source}: {prefix}group_min_tokens must be a positive integer (or null: by device), got {value!r}")
    if not isinstance(config.warmup_steps, int) or config.warmup_steps < 0:
        raise L2VError(f"{source}: {prefix}warmup_steps must be a non-negative integer, got {config.warmup_steps!r}")
    if config.dtype not in TRAIN_DTYPES:
        hint = "; float16 training would need a loss scaler: use bfloat16" if config.dtype == "float16" else ""
        raise L2VError(f"{source}: {prefix}dtype must be one of {', '.join(TRAIN_DTYPES)}, got {config.dtype!r}{hint}")
    if config.mixed_precision not in MIXED_PRECISIONS:
        raise L2VError(f"{source}: {prefix}mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}, got {config.mixed_precision!r}")
    known = attention_implementations()
    value = config.attn_implementation
    if not isinstance(value, str) or not (value in known or "/" in value):  # "org/name": a hub kernel
        raise L2VError(f"{source}: {prefix}attn_implementation must be one of {', '.join(known)} (or a hub kernel "
                       f"'org/name'), got {value!r}")
    if not isinstance(config.trackers, list) or not all(isinstance(t, str) for t in config.trackers):
        raise L2VError(f"{source}: {prefix}trackers must be a list of tracker names (e.g. [tensorboard]), got {config.trackers!r}")
    if not config.data.train and not config.data.hub:
        raise L2VError(f"{source}: {prefix}data.train (a local file) or {prefix}data.hub (a dataset name) is required")
    if not isinstance(config.dev.sts, list) or not all(isinstance(p, str) and p for p in config.dev.sts):
        raise L2VError(f"{source}: {prefix}dev.sts must be a list of STS file paths, got {config.dev.sts!r}")
    if not isinstance(config.dev.every, int) or isinstance(config.dev.every, bool) or config.dev.every < 0:
        raise L2VError(f"{source}: {prefix}dev.every must be a non-negative integer, got {config.dev.every!r}")
    missing = [p for p in config.dev.sts if not Path(p).is_file()]
    if missing:
        raise L2VError(f"{source}: {prefix}dev.sts: file not found: {missing[0]}")
    if not isinstance(config.pooling_options, dict):
        raise L2VError(f"{source}: {prefix}pooling_options must be a mapping, got {config.pooling_options!r}")
    train = config.data.train
    if train is not None and not isinstance(train, str) and not (
            isinstance(train, list) and train and all(isinstance(p, str) and p for p in train)):
        raise L2VError(f"{source}: {prefix}data.train must be a file path or a non-empty list of file paths, got {train!r}")
    if not isinstance(config.data.min_words, int) or isinstance(config.data.min_words, bool) or config.data.min_words < 0:
        raise L2VError(f"{source}: {prefix}data.min_words must be a non-negative integer, got {config.data.min_words!r}")
    coerce_numbers(config, f"{source}: {prefix.rstrip('.')}" if prefix else source)


def attention_implementations() -> list[str]:
    """'auto', 'eager' and every attention implementation registered in transformers."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ["auto", "eager", *sorted(ALL_ATTENTION_FUNCTIONS.keys())]


TRAIN_DTYPES = ("float32", "bfloat16")
MIXED_PRECISIONS = ("no", "bf16")  # fp16 would need a loss scaler


def coerce_numbers(config: "TrainConfig", source: str) -> None:
    """YAML reads 5e-5 (no dot) as a string: turn numeric fields into floats, naming any that are not numbers."""
    fields = [(config, "learning_rate"), (config, "weight_decay"), (config, "max_grad_norm"), (config.lora, "dropout"),
              (config.mntp, "probability"), (config.contrastive, "temperature"), (config.contrastive, "attention_dropout")]
    for owner, name in fields:
        value = getattr(owner, name)
        if value is None:
            continue
        try:
            setattr(owner, name, float(value))
        except (TypeError, ValueError):
            prefix = "" if owner is config else {id(config.lora): "lora.", id(config.mntp): "mntp.", id(config.contrastive): "contrastive."}[id(owner)]
            raise L2VError(f"{source}: {prefix}{name} must be a number, got {value!r}") from None
