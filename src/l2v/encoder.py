"""The encoder: tokenise (with instruction masks), batch by token budget, encode, save and load.

Nothing here knows about training or the CLI; the trainer, the evaluator, the server and the CLI all encode
through :class:`Encoder`.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .batching import pad, token_budget_batches
from .bidirectional import CAUSAL, AttentionState, is_bidirectional, model_family, model_inputs, set_attention
from .errors import L2VError, ModelNotFoundError
from .fileio import atomic_dir
from .memory import CPU_FEED_FORWARD_ROWS, chunk_feed_forward, release_free_memory
from .pooling import build_pooling, canonical_pooling
from .precision import autocast_for
from .registry import resolve

logger = logging.getLogger(__name__)

CONFIG_NAME = "l2v_config.json"
POOLING_WEIGHTS = "pooling.safetensors"
ADAPTER_DIR = "adapter"
PRECISIONS = ("float32", "float16", "int8", "binary", "ubinary")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TEXT_FORMATS = ("l2v", "llm2vec")


@dataclass
class EncoderConfig:
    """What ``l2v_config.json`` holds: enough to rebuild the encoder from the folder alone."""

    base_model: str  # built-in name, hub id, absolute folder, or "." when the full weights are in the folder
    pooling: str = "mean"
    pooling_options: dict = field(default_factory=dict)
    bidirectional: bool = True
    max_length: int = 512
    instruction_format: str = "{instruction}"  # applied to each instruction before tokenising it
    adapters: str | None = None  # sub-folder with peft LoRA adapters, if any
    merged_adapters: list[str] = field(default_factory=list)  # sub-folders merged into the base first, in order
    # "l2v": instruction and text tokenised apart, ids concatenated; "llm2vec": the official package's text
    # preparation (chat template by checkpoint name, separator, document cut), see l2v.llm2vec_format
    text_format: str = "l2v"
    llm2vec_name_or_path: str | None = None  # llm2vec format: the checkpoint name its chat template is keyed on
    doc_max_length: int = 400  # llm2vec format: a text over this many tokens is first cut by words
    skip_instruction: bool = True  # llm2vec format: pool the text part only (False: every token)
    l2v_version: str = __version__

    @classmethod
    def from_file(cls, path: Path) -> "EncoderConfig":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise L2VError(f"{path}: cannot read encoder config ({error})") from None
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise L2VError(f"{path}: unknown keys {sorted(unknown)}")
        if "base_model" not in data:
            raise L2VError(f"{path}: missing 'base_model'")
        if data.get("text_format", "l2v") not in TEXT_FORMATS:
            raise L2VError(f"{path}: text_format must be one of {', '.join(TEXT_FORMATS)}, got {data['text_format']!r}")
        return cls(**data)


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer wraps a text in (e.g. BOS before, EOS or SEP after), found by tokenising a
    probe text with and without them. Used wherever l2v lays out token ids itself."""
    probe = "l2v probe text"
    with_special = tokenizer(probe, add_special_tokens=True)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return list(with_special[:start]), list(with_special[start + len(plain) :])
    return [], []


@dataclass(frozen=True)
class EncodeStats:
    """What an encode call did: texts cut at ``max_length``, distinct inputs run through the model."""

    truncated: int
    encoded: int


@dataclass
class Tokenized:
    """One text as token ids plus which of them are pooled (text tokens, not instruction or special tokens)."""

    input_ids: list[int]
    pooling_mask: list[int]
    truncated: bool = False


def _no_autograd(module: torch.nn.Module):
    """Inference mode; plain no_grad for an FSDP-sharded module, whose gathered weights must stay normal tensors."""
    from torch.distributed.fsdp import FSDPModule

    return torch.no_grad() if isinstance(module, FSDPModule) else torch.inference_mode()


# On a CPU a forward of more padded positions is no faster and holds more memory: 64 Wikipedia paragraphs of ~510
# tokens in batches of 32 (16,384 positions) raise the peak of a mixed-precision SmolLM2 by ~420-445 MB (the
# attention's float32 scores of 32 texts at once) and take ~49-55 s; in forwards of at most 4,096 positions
# ~80-135 MB and ~40-47 s (benchmarks/encode_memory.py, several runs). It caps whatever budget the caller gives
# (``max_tokens_per_batch``, the server's ``--max-batch-tokens``); None: no cap.
CPU_FORWARD_TOKENS: int | None = 4096


class Encoder(torch.nn.Module):
    """A decoder LLM used as a text encoder (LLM2Vec). ``Encoder.from_pretrained(...).encode(texts)``."""

    def __init__(self, model, tokenizer, config: EncoderConfig, pooling: torch.nn.Module | None = None, source: str = "",
                 attention: AttentionState | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.source = source or config.base_model
        # How the backbone's attention runs (bidirectional or causal): the encoder's state, set at load
        self.attention = attention if attention is not None else AttentionState(False, CAUSAL, model_family(model))
        self.pooling = pooling if pooling is not None else build_pooling(config.pooling, hidden_size(model), config.pooling_options)
        self.padding_side = "right"
        self.merged_adapter_folders: list[Path] = []  # adapters folded into the backbone at load, saved with it
        self.adapter_folders: list[Path] = []  # every adapter folder loaded, in order (merged ones first)
        self.lm_head: torch.nn.Module | None = None  # loaded with with_lm_head=True (MNTP), frozen
        self.precision = None  # a precision.MixedPrecision when loaded with dtype="mixed" (or "auto" that chose it)
        self.dtype_choice = str(next(model.parameters()).dtype).removeprefix("torch.")  # what dtype= resolved to
        self.logit_softcap: float | None = None  # Gemma-2/3 cap their final logits
        self._instruction_cache: dict[str, list[int]] = {}
        self._prefix, self._suffix = self._special_tokens()
        placeholder = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
        self.placeholder_id = int(placeholder if placeholder is not None else 0)  # what an empty text is encoded as

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        model: str,
        adapters: str | list[str] | None = None,
        pooling: str | None = None,
        max_length: int | None = None,
        bidirectional: bool | None = None,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device | None = None,
        attn_implementation: str | None = None,
        merge_adapters: bool = False,
        pooling_options: dict | None = None,
        instruction_format: str | None = None,
        verify_bidirectional: bool = True,
        trust_remote_code: bool = False,
        text_format: str | None = None,
        doc_max_length: int | None = None,
        skip_instruction: bool | None = None,
        with_lm_head: bool = False,
        weights: bool = True,
    ) -> "Encoder":
        """Load a built-in name, a Hugging Face id or folder, a saved l2v encoder folder, or a checkpoint in the
        official llm2vec layout (e.g. ``McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp``: its MNTP LoRA is merged
        into the base it names, and its text preparation is the official one).

        Arguments left at ``None`` take the saved encoder's value (for an llm2vec checkpoint, its
        ``llm2vec_config.json``), else the defaults (mean pooling, 512 tokens, bidirectional). ``adapters`` are peft
        LoRA folders or hub ids applied on top, the last one unmerged unless ``merge_adapters``. ``with_lm_head``
        also loads the causal LM's output layer (frozen) as ``encoder.lm_head``, for MNTP. ``weights=False`` reads
        no weights: the backbone is built from its config on the meta device and adapters are not applied (the
        tokenizer, the config and the dimension only, for a process that tokenizes while another one computes, as
        the server's HTTP process does); encoding with it fails with a clear error.
        """
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        from . import llm2vec_format

        user_adapters = [] if adapters is None else ([adapters] if isinstance(adapters, (str, Path)) else list(adapters))
        published = llm2vec_format.PUBLISHED.get(model) if isinstance(model, str) else None
        if published is not None:
            model = published.checkpoint
            user_adapters = ([published.adapter] if published.adapter else []) + user_adapters
        saved = checkpoint = None
        resolved = resolve(model)
        if not Path(resolved.location).is_dir() and llm2vec_format.hub_has_adapter(str(model)):
            resolved.location, resolved.local_files_only = str(llm2vec_format.fetch_adapter_repo(str(model), checkpoint=True)), True
        folder = Path(resolved.location)
        adapter_folders: list[Path] = []
        if (folder / CONFIG_NAME).exists():
            saved = EncoderConfig.from_file(folder / CONFIG_NAME)
        elif folder.is_dir() and llm2vec_format.is_checkpoint(folder):
            checkpoint = llm2vec_format.read_checkpoint(folder)
        if checkpoint is not None:
            try:
                base = resolve(checkpoint.base)
            except ModelNotFoundError as error:
                raise ModelNotFoundError(f"{folder / 'adapter_config.json'} names base model {checkpoint.base!r}, which cannot be "
                                         f"loaded: {error}") from None
            weights_location, local_only = base.location, base.local_files_only
            source = f"llm2vec checkpoint {model} on {base.source}"
            tokenizer_location = folder if (folder / "tokenizer_config.json").exists() else weights_location
            adapter_folders.append(folder)
            base_model = base.location if base.builtin is None else checkpoint.base
        elif saved is not None and saved.base_model != ".":
            base = resolve(saved.base_model)
            weights_location, local_only, source = base.location, base.local_files_only, f"{resolved.source} on {base.source}"
            tokenizer_location, base_model = weights_location, saved.base_model
        else:
            weights_location, local_only, source = resolved.location, resolved.local_files_only, resolved.source
            tokenizer_location = folder if saved is not None else weights_location
            base_model = saved.base_model if saved else (resolved.location if resolved.builtin is None else str(model))
        if saved is not None:
            adapter_folders += [folder / sub for sub in saved.merged_adapters]
            if saved.adapters:
                adapter_folders.append(folder / saved.adapters)
        adapter_folders += [_adapter_folder(a) for a in user_adapters]
        # llm2vec_config.json: in the second adapter's folder when there is one, else in the checkpoint (as llm2vec)
        options = {}
        if checkpoint is not None:
            options = llm2vec_format.read_options(adapter_folders[1]) if len(adapter_folders) > 1 else checkpoint.options
        default = saved if saved is not None else EncoderConfig(
            base_model=base_model,
            pooling=options.get("pooling_mode", "mean"),
            max_length=options.get("max_length", 512),
            text_format="llm2vec" if checkpoint is not None else "l2v",
            llm2vec_name_or_path=checkpoint.name_or_path if checkpoint is not None else None,
            doc_max_length=options.get("doc_max_length", 400),
            skip_instruction=options.get("skip_instruction", True),
        )
        chosen_pooling = canonical_pooling(pooling or default.pooling)
        config = EncoderConfig(
            base_model=base_model,
            pooling=chosen_pooling,
            pooling_options=dict(pooling_options if pooling_options is not None else
                                 (default.pooling_options if chosen_pooling == default.pooling else {})),
            bidirectional=bool(bidirectional if bidirectional is not None else default.bidirectional),
            max_length=int(max_length or default.max_length),
            instruction_format=instruction_format or default.instruction_format,
            text_format=text_format or default.text_format,
            llm2vec_name_or_path=default.llm2vec_name_or_path,
            doc_max_length=int(doc_max_length or default.doc_max_length),
            skip_instruction=bool(skip_instruction if skip_instruction is not None else default.skip_instruction),
        )
        if config.max_length < 2:
            raise L2VError(f"max_length must be at least 2, got {config.max_length}")
        if config.doc_max_length < 1:
            raise L2VError(f"doc_max_length must be at least 1, got {config.doc_max_length}")
        if "{instruction}" not in config.instruction_format:
            raise L2VError(f"instruction_format must contain '{{instruction}}', got {config.instruction_format!r}")
        if config.text_format not in TEXT_FORMATS:
            raise L2VError(f"text_format must be one of {', '.join(TEXT_FORMATS)}, got {config.text_format!r}")
        torch_dtype, device = _choose_dtype_and_device(dtype, device)
        mixed = torch_dtype == "mixed"
        if mixed:  # float32 weights, calibrated below; the adapters folded in so their weights are rounded once
            torch_dtype, merge_adapters = torch.float32, True
        load_kwargs = dict(dtype=torch_dtype, local_files_only=local_only, trust_remote_code=trust_remote_code)
        if attn_implementation:
            load_kwargs["attn_implementation"] = attn_implementation
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the LM head a backbone does not use is expected, not news
        hf_logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_location, local_files_only=local_only or Path(tokenizer_location).is_dir(),
                                                      trust_remote_code=trust_remote_code)
            if not weights:
                from transformers import AutoConfig

                model_config = AutoConfig.from_pretrained(weights_location, local_files_only=local_only,
                                                          trust_remote_code=trust_remote_code)
                with torch.device("meta"):
                    backbone = AutoModel.from_config(model_config, trust_remote_code=trust_remote_code,
                                                     **({"attn_implementation": attn_implementation} if attn_implementation else {}))
                with_lm_head, mixed, adapter_folders = False, False, []
            elif with_lm_head:
                language_model = AutoModelForCausalLM.from_pretrained(weights_location, **load_kwargs)
                backbone = language_model.get_decoder()
                lm_head = language_model.get_output_embeddings()
                softcap = getattr(language_model.config, "final_logit_softcapping", None)
            else:
                backbone = AutoModel.from_pretrained(weights_location, **load_kwargs)
        except OSError as error:
            gated = llm2vec_format.gated_message(str(weights_location), error, folder if checkpoint is not None else None)
            if gated:
                raise ModelNotFoundError(gated) from None
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelNotFoundError(f"cannot load model {model!r} from {source}: {first_line}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        merged_folders = []
        for index, adapter_folder in enumerate(adapter_folders):
            # an llm2vec checkpoint's MNTP LoRA is part of its base: always merged, as the official loader does
            merge = merge_adapters or index < len(adapter_folders) - 1 or (checkpoint is not None and index == 0)
            backbone = apply_adapters(backbone, adapter_folder, merge=merge)
            if merge:
                merged_folders.append(adapter_folder)
        if weights:
            backbone.to(device)
        backbone.eval()
        chunk_feed_forward(backbone, CPU_FEED_FORWARD_ROWS)  # inference on a CPU only (l2v/memory.py)
        attention = set_attention(backbone, config.bidirectional, verify=verify_bidirectional and weights)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        pooling_module = build_pooling(config.pooling, hidden_size(backbone), config.pooling_options)
        same_pooling = saved is not None and saved.pooling == config.pooling and saved.pooling_options == config.pooling_options
        if not weights:
            pooling_module.to("meta")
        elif same_pooling and (folder / POOLING_WEIGHTS).exists():
            from safetensors.torch import load_file

            pooling_module.load_state_dict(load_file(folder / POOLING_WEIGHTS))
        elif list(pooling_module.parameters()):
            warnings.warn(f"pooling {config.pooling!r} has trainable weights and none were loaded: they are random until trained")
        if weights:
            pooling_module.to(device=device)
        encoder = cls(backbone, tokenizer, config, pooling_module, source=source, attention=attention)
        encoder.merged_adapter_folders = merged_folders
        encoder.adapter_folders = list(adapter_folders)
        if with_lm_head:
            lm_head.to(device)
            for parameter in lm_head.parameters():
                parameter.requires_grad_(False)
            encoder.lm_head, encoder.logit_softcap = lm_head, softcap
        encoder.eval()
        if mixed:
            from .precision import calibrate

            plan = calibrate(encoder)
            encoder.dtype_choice = "mixed" if plan is not None else "float32"
        elif weights and torch.device(device).type == "cpu":
            release_free_memory()  # e.g. the float32 copies a bfloat16 load cast from
        return encoder

    @property
    def precision_description(self) -> str:
        """What the encoder computes in, for logs: ``float32``, ``bfloat16`` or the mixed split."""
        return self.precision.describe() if self.precision is not None else self.dtype_choice

    # ------------------------------------------------------------------ tokenising
    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The tokenizer's special tokens around a text, plus BOS/EOS where the pooling reads that token."""
        tokenizer = self.tokenizer
        prefix, suffix = special_tokens(tokenizer)
        if self.config.text_format == "llm2vec":  # the official text preparation places BOS/EOS itself
            return prefix, suffix
        place = getattr(self.pooling, "special_tokens", None)  # a pooling that reads EOS/BOS says where it goes
        return place(tokenizer, prefix, suffix) if place is not None else (prefix, suffix)

    @property
    def text_budget(self) -> int:
        """How many text tokens fit in ``max_length`` beside the special tokens (no instruction)."""
        return self.config.max_length - len(self._prefix) - len(self._suffix)

    def from_ids(self, text_ids: Sequence[int], instruction_ids: Sequence[int] = ()) -> Tokenized:
        """Wrap already-tokenised text (and instruction) ids in the special tokens; only the text is pooled.
        The one place that lays out an input: ``tokenize`` and the ROAR classifier both build on it.
        An empty text becomes one placeholder token (EOS, else pad), so there is always something to pool."""
        text_ids = list(text_ids) or [self.placeholder_id]
        input_ids = self._prefix + list(instruction_ids) + text_ids + self._suffix
        pool = [0] * (len(self._prefix) + len(instruction_ids)) + [1] * len(text_ids) + [0] * len(self._suffix)
        return Tokenized(input_ids, pool)

    def _instruction_ids(self, instruction: str) -> list[int]:
        if instruction not in self._instruction_cache:
            if len(self._instruction_cache) >= 1024:  # bounded: a server sees instructions from its clients
                self._instruction_cache.clear()
            text = self.config.instruction_format.format(instruction=instruction)
            self._instruction_cache[instruction] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._instruction_cache[instruction]

    def tokenize(self, items: Sequence, instruction: str | None = None) -> list[Tokenized]:
        """Tokenise texts or ``(instruction, text)`` pairs. Instruction and text are tokenised separately and their
        ids concatenated, so the pooling mask is exact: no separator string, no re-tokenising."""
        pairs = _normalise_items(items, instruction)
        if self.config.text_format == "llm2vec":
            return self._tokenize_llm2vec(pairs)
        texts = [text for _, text in pairs]
        text_ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        budget = self.text_budget
        result = []
        for index, ((instr, _), ids) in enumerate(zip(pairs, text_ids)):
            instr_ids = self._instruction_ids(instr) if instr else []
            room = budget - len(instr_ids)
            if room < 1:
                raise L2VError(
                    f"input {index}: the instruction takes {len(instr_ids)} tokens, leaving no room for the text "
                    f"within max_length={self.config.max_length}"
                )
            item = self.from_ids(ids[:room], instr_ids)
            item.truncated = len(ids) > room
            result.append(item)
        return result

    def _tokenize_llm2vec(self, pairs: list[tuple[str, str]]) -> list[Tokenized]:
        """The official llm2vec package's layout of each text encoded alone (l2v.llm2vec_format)."""
        from .llm2vec_format import layout

        config = self.config
        laid_out = layout(pairs, self.tokenizer, name_or_path=config.llm2vec_name_or_path, pooling=config.pooling,
                          family=model_family(self.model), max_length=config.max_length,
                          doc_max_length=config.doc_max_length, skip_instruction=config.skip_instruction)
        return [Tokenized(ids, mask, truncated) for ids, mask, truncated in laid_out]

    def collate(self, batch: Sequence[Tokenized], padding_side: str | None = None) -> dict[str, torch.Tensor]:
        """A padded batch: ``input_ids``, ``attention_mask`` (real tokens) and ``pooling_mask`` (pooled tokens)."""
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise L2VError(f"padding_side must be 'left' or 'right', got {side!r}")
        ids, attention = pad([item.input_ids for item in batch], self.tokenizer.pad_token_id, side)
        pool, _ = pad([item.pooling_mask for item in batch], 0, side)
        return {"input_ids": ids, "attention_mask": attention, "pooling_mask": pool}

    def release_weights(self) -> None:
        """Free the weights' memory and keep the tokenizer and config: for a process that only tokenizes while
        another computes (the server's model process). Encoding afterwards fails with a clear error."""
        self.model.to("meta")

    # ------------------------------------------------------------------ forward
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dimension(self) -> int:
        """The size of an embedding (the backbone's hidden size)."""
        return hidden_size(self.model)

    def model_inputs(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                     inputs_embeds: torch.Tensor | None = None) -> dict:
        """Keyword arguments for the backbone that run it with this encoder's attention (bidirectional or causal)."""
        return model_inputs(self.attention, self.model, input_ids, attention_mask, inputs_embeds)

    def forward(self, features: dict[str, torch.Tensor], pool: bool = True, output_attentions: bool = False,
                output_hidden_states: bool = False):
        """Embeddings [B, H] (with gradients when training) of a collated batch; ``pool=False``: the last layer's token
        states [B, T, H]. ``features`` holds ``input_ids`` (or ``inputs_embeds``), ``attention_mask`` and optionally
        ``pooling_mask``. With ``output_attentions`` / ``output_hidden_states`` the result is ``(result, output)``,
        the backbone's output carrying them. The one forward of l2v: encoding, training, probes and ROAR use it."""
        device = self.device
        if device.type == "meta":
            raise L2VError(f"{self.source or 'this encoder'} has no weights here (loaded with weights=False, or released "
                           "by Encoder.release_weights): this copy only tokenizes; load the encoder with its weights to compute")
        attention_mask = features["attention_mask"].to(device)
        embeds = features.get("inputs_embeds")
        inputs = self.model_inputs(None if embeds is not None else features["input_ids"].to(device), attention_mask,
                                   None if embeds is None else embeds.to(device))
        extra = {}
        if output_attentions:
            extra["output_attentions"] = True
        if output_hidden_states:
            extra["output_hidden_states"] = True
        with autocast_for(self):
            output = self.model(**inputs, **extra)
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        result = hidden
        if pool:
            pooling_mask = features.get("pooling_mask", features["attention_mask"]).to(device)
            result = self.pooling(hidden, pooling_mask, attention_mask)
        return (result, output) if extra else result

    # ------------------------------------------------------------------ encoding
    def encode(
        self,
        texts,
        batch_size: int = 32,
        max_tokens_per_batch: int | None = 16384,
        normalize: bool = True,
        show_progress: bool = False,
        instruction: str | None = None,
        precision: str = "float32",
        truncate_dim: int | None = None,
        convert_to: str = "numpy",
        quantization_ranges: np.ndarray | None = None,
        return_stats: bool = False,
    ):
        """Encode texts (or ``(instruction, text)`` pairs) into one row each, in input order.

        Batches are formed from length-sorted texts under ``batch_size`` and ``max_tokens_per_batch`` (padded
        tokens); a text's embedding does not depend on which batch it lands in.
        ``truncate_dim`` keeps the first dimensions (Matryoshka) before normalising. ``precision``: float32,
        float16, int8 (scaled from [-1, 1] when normalised, else from ``quantization_ranges`` [2, dim]),
        binary (packed bits as int8, offset -128) or ubinary (packed bits as uint8). With ``return_stats`` the
        result is ``(embeddings, EncodeStats)``: how many texts were truncated and how many distinct inputs ran.
        """
        if precision not in PRECISIONS:
            raise L2VError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if convert_to not in ("numpy", "torch"):
            raise L2VError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
        if batch_size < 1:
            raise L2VError(f"batch_size must be at least 1, got {batch_size}")
        single = isinstance(texts, str)  # one (instruction, text) pair is passed as [(instruction, text)]
        items = [texts] if single else list(texts)
        all_tokenized = self.tokenize(items, instruction=instruction)
        output, stats = self.embed_tokenized(all_tokenized, batch_size=batch_size, max_tokens_per_batch=max_tokens_per_batch,
                                             normalize=normalize, truncate_dim=truncate_dim, show_progress=show_progress,
                                             return_stats=True)
        if stats.truncated:
            logger.warning("%d of %d texts were longer than max_length=%d tokens and were truncated", stats.truncated,
                           len(items), self.config.max_length)
        result = _quantize(output.numpy(), precision, normalize, quantization_ranges)
        if single:
            result = result[0]
        result = torch.from_numpy(result) if convert_to == "torch" else result
        return (result, stats) if return_stats else result

    def embed_tokenized(
        self,
        tokenized: Sequence[Tokenized],
        batch_size: int = 32,
        max_tokens_per_batch: int | None = 16384,
        normalize: bool = True,
        truncate_dim: int | None = None,
        show_progress: bool = False,
        return_stats: bool = False,
    ):
        """Float32 embeddings (CPU tensor, one row per item, in order) of already tokenised inputs; with
        ``return_stats``, ``(embeddings, EncodeStats)``.

        The one place the model runs at inference: ``encode``, the server's micro-batcher and the corpus job all
        come here. Identical inputs are run once (exact, since an embedding does not depend on its batch). On a
        CPU one forward holds at most ``CPU_FORWARD_TOKENS`` padded positions whatever ``max_tokens_per_batch``
        allows (a text longer than that runs alone).
        """
        if batch_size < 1:
            raise L2VError(f"batch_size must be at least 1, got {batch_size}")
        size = self.dimension
        if truncate_dim is not None and not 1 <= truncate_dim <= size:
            raise L2VError(f"truncate_dim must be between 1 and {size}, got {truncate_dim}")
        first_of: dict[tuple, int] = {}
        source_row = []
        for item in tokenized:
            key = (tuple(item.input_ids), tuple(item.pooling_mask))
            source_row.append(first_of.setdefault(key, len(first_of)))
        distinct: list = [None] * len(first_of)
        for item, row in zip(tokenized, source_row):
            distinct[row] = item
        dim = truncate_dim or size
        output = torch.empty((len(distinct), dim), dtype=torch.float32)
        budget = max_tokens_per_batch
        if CPU_FORWARD_TOKENS and self.device.type == "cpu" and (budget is None or budget > CPU_FORWARD_TOKENS):
            budget = CPU_FORWARD_TOKENS
        batches = token_budget_batches([len(t.input_ids) for t in distinct], batch_size, budget)
        was_training = self.training
        self.eval()
        progress = tqdm(total=len(distinct), desc="Encoding", unit="text", disable=not show_progress)
        try:
            with _no_autograd(self):
                for batch_indices in batches:
                    features = self.collate([distinct[i] for i in batch_indices])
                    embeddings = self(features).float()[:, :dim]
                    if normalize:
                        embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=-1)
                    output[torch.tensor(batch_indices)] = embeddings.cpu()
                    progress.update(len(batch_indices))
        finally:
            progress.close()
            self.train(was_training)
        if len(distinct) != len(tokenized):
            output = output[torch.tensor(source_row, dtype=torch.long)]
        stats = EncodeStats(truncated=sum(item.truncated for item in tokenized), encoded=len(distinct))
        return (output, stats) if return_stats else output

    # ------------------------------------------------------------------ saving
    def save(self, path: str | Path, merge_adapters: bool = False, save_base_weights: bool = False, overwrite: bool = False,
             trained_state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write a self-describing encoder folder (safetensors only), atomically.

        With LoRA adapters the folder holds just the adapters and a reference to the base model, unless
        ``merge_adapters``; with ``save_base_weights`` (or a base that is not re-loadable by name) the full
        backbone weights are written too. ``trained_state`` (whole tensors of the trainable parameters by their
        ``named_parameters`` names, e.g. gathered from FSDP shards) is written instead of the live adapter and
        pooling weights; it needs an encoder that refers to its base.
        """
        from safetensors.torch import save_file

        path = Path(path)
        model = self.model
        has_adapters = hasattr(model, "peft_config")
        config = EncoderConfig(**{**asdict(self.config), "l2v_version": __version__, "adapters": None, "merged_adapters": []})
        if save_base_weights and has_adapters and not merge_adapters:
            raise L2VError("save_base_weights with unmerged adapters is ambiguous; pass merge_adapters=True")
        # Full weights when asked, or when there is no base to refer to (the encoder was loaded from full weights).
        full_weights = merge_adapters or save_base_weights or self.config.base_model == "."
        if trained_state is not None and full_weights:
            raise L2VError("saving gathered trained weights writes adapters beside a base reference; this encoder has no "
                           "base to refer to or full weights were asked for")
        trained_state = trained_state or {}
        with atomic_dir(path, overwrite=overwrite) as tmp:
            if full_weights:
                with _plain_configs(model):  # l2v's attention flags are runtime state, not part of the model
                    (_merged_copy(model) if has_adapters else model).save_pretrained(tmp, safe_serialization=True)
                config.base_model = "."
            else:
                import shutil

                for index, merged in enumerate(self.merged_adapter_folders):
                    name = f"merged_adapter_{index}"
                    shutil.copytree(merged, tmp / name, ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.pth"))
                    config.merged_adapters.append(name)
                if has_adapters:
                    adapter_state = {k[len("model."):]: v for k, v in trained_state.items() if k.startswith("model.")}
                    model.save_pretrained(tmp / ADAPTER_DIR, safe_serialization=True, state_dict=adapter_state or None)
                    config.adapters = ADAPTER_DIR
            self.tokenizer.save_pretrained(tmp)
            pooling_state = {k: trained_state.get(f"pooling.{k}", v).detach().cpu().contiguous()
                             for k, v in self.pooling.state_dict().items()}
            if pooling_state:
                save_file(pooling_state, str(tmp / POOLING_WEIGHTS))
            (tmp / CONFIG_NAME).write_text(json.dumps(asdict(config), indent=2) + "\n", encoding="utf-8")
        return path

    # ------------------------------------------------------------------ description
    def info(self) -> dict:
        state = self.attention
        backbone = self.model
        holds = is_bidirectional(backbone, state) if state.bidirectional else False
        return {
            "family": model_family(backbone),
            "architecture": type(backbone).__name__,
            "parameters": sum(p.numel() for p in backbone.parameters()),
            "hidden_size": self.dimension,
            "layers": getattr(getattr(backbone, "config", None), "num_hidden_layers", None),
            "bidirectional_requested": self.config.bidirectional,
            "bidirectional_verified": holds,
            "attention_mode": state.mode,
            "attn_implementation": getattr(backbone.config, "_attn_implementation", None),
            "pooling": self.config.pooling,
            "max_length": self.config.max_length,
            "dtype": str(next(backbone.parameters()).dtype).replace("torch.", ""),
            "device": str(self.device),
            "loaded_from": self.source,
        }


LLM2Vec = Encoder  # the name users of the official package know


# ---------------------------------------------------------------------- helpers
def hidden_size(model) -> int:
    """A transformers model's hidden size, whatever its config calls it."""
    config = model.config
    for name in ("hidden_size", "d_model", "n_embd"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return int(model.get_input_embeddings().embedding_dim)


def _choose_dtype_and_device(dtype, device) -> tuple[torch.dtype | str, torch.device]:
    """The load dtype, or ``"mixed"`` (float32 weights, calibrated into the float32/bfloat16 split of precision.py).
    ``auto``: mixed where the device computes bfloat16 natively (plain bfloat16 moved some SmolLM2 embeddings to
    cosine 0.72 of float32; mixed keeps them within 0.999), float32 elsewhere."""
    from .precision import native_bfloat16

    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(dtype, torch.dtype):
        torch_dtype = dtype
    elif dtype == "auto":
        torch_dtype = "mixed" if native_bfloat16(device) else torch.float32
    elif dtype == "mixed":
        torch_dtype = "mixed"
    elif dtype in DTYPES:
        torch_dtype = DTYPES[dtype]
    else:
        raise L2VError(f"unknown dtype {dtype!r}; choose one of: auto, mixed, {', '.join(DTYPES)}")
    if torch_dtype == torch.float16 and device.type == "cpu":
        warnings.warn("float16 compute is not supported well on CPU; using float32 (bfloat16 works on CPU)")
        torch_dtype = torch.float32
    return torch_dtype, device


def _normalise_items(items: Sequence, instruction: str | None) -> list[tuple[str, str]]:
    if instruction is not None and not isinstance(instruction, str):
        raise L2VError(f"instruction must be a string, got {type(instruction).__name__}")
    pairs = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            pairs.append((instruction or "", item))
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            pairs.append((item[0], item[1]))
        else:
            raise L2VError(
                f"input {index} must be a string or an (instruction, text) pair of strings, got {type(item).__name__}: {item!r:.80}"
            )
    return pairs


def _quantize(embeddings: np.ndarray, precision: str, normalized: bool, ranges) -> np.ndarray:
    if precision == "float32":
        return embeddings
    if precision == "float16":
        return embeddings.astype(np.float16)
    if precision == "int8":
        if ranges is None:
            if not normalized:
                raise L2VError("int8 output of unnormalised embeddings needs quantization_ranges (2 x dim: min, max)")
            low, high = -1.0, 1.0
        else:
            ranges = np.asarray(ranges, dtype=np.float32)
            if ranges.shape != (2, embeddings.shape[1]):
                raise L2VError(f"quantization_ranges must have shape (2, {embeddings.shape[1]}), got {ranges.shape}")
            low, high = ranges[0], ranges[1]
        scaled = (embeddings - low) / np.maximum(high - low, 1e-12) * 255.0 - 128.0
        return np.clip(np.rint(scaled), -128, 127).astype(np.int8)
    packed = np.packbits(embeddings > 0, axis=-1)
    if precision == "ubinary":
        return packed
    return (packed.astype(np.int16) - 128).astype(np.int8)


def apply_adapters(backbone, folder: Path, merge: bool):
    """Wrap ``backbone`` in the peft LoRA of ``folder`` (safetensors only), merged into its weights if ``merge``."""
    from peft import PeftModel

    folder = Path(folder)
    if not (folder / "adapter_config.json").exists():
        raise ModelNotFoundError(f"adapter folder {folder} has no adapter_config.json")
    if (folder / "adapter_model.bin").exists() and not (folder / "adapter_model.safetensors").exists():
        raise L2VError(f"{folder}: adapters are stored as a pickle (adapter_model.bin); l2v loads safetensors only")
    if not (folder / "adapter_model.safetensors").exists():
        raise ModelNotFoundError(f"adapter folder {folder} has no adapter_model.safetensors")
    try:
        model = PeftModel.from_pretrained(backbone, str(folder))
    except RuntimeError as error:
        if "size mismatch" not in str(error):
            raise
        shapes = [line.strip() for line in str(error).splitlines() if "size mismatch" in line][:1]
        raise L2VError(f"{folder}: the adapter does not fit this base model ({type(backbone).__name__}, hidden size "
                       f"{hidden_size(backbone)}); it was trained for another base ({'; '.join(shapes)})") from None
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
        stored = set(handle.keys())
    unused = sorted(stored - set(get_peft_model_state_dict(model).keys()))
    if unused:  # peft only warns: the adapter would silently not apply
        raise L2VError(f"{folder}: {len(unused)} of the adapter's {len(stored)} weights match no module of this base model "
                       f"({type(backbone).__name__}), e.g. {unused[0]!r}; it was saved for another model structure")
    return model.merge_and_unload() if merge else model


def _adapter_folder(spec: str | Path) -> Path:
    """A local adapter folder, or a Hugging Face hub adapter repo fetched (safetensors and configs only)."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    text = str(spec)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        from .llm2vec_format import fetch_adapter_repo

        return fetch_adapter_repo(text)
    raise ModelNotFoundError(f"adapter folder not found: {spec}")


class _plain_configs:
    """Temporarily remove l2v's attention flags from the model's configs (so config.json stays the original)."""

    KEYS = ("is_causal", "_l2v_original_is_causal")

    def __init__(self, model):
        from .bidirectional import attention_configs

        self.configs = attention_configs(model)
        self.saved = []

    def __enter__(self):
        for config in self.configs:
            removed = {k: config.__dict__.pop(k) for k in self.KEYS if k in config.__dict__}
            original = removed.get("_l2v_original_is_causal")
            if original is not None:
                config.__dict__["is_causal"] = original
            self.saved.append(removed)

    def __exit__(self, *exc):
        for config, removed in zip(self.configs, self.saved):
            config.__dict__.pop("is_causal", None)
            config.__dict__.update(removed)


def _merged_copy(peft_model):
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()


def load(model: str, **kwargs) -> Encoder:
    return Encoder.from_pretrained(model, **kwargs)


def encode(texts, model: str = "smollm2-135m", **kwargs):
    """One-shot helper: ``l2v.encode(["a", "b"], model="smollm2-135m")``."""
    encode_keys = {"batch_size", "max_tokens_per_batch", "normalize", "show_progress", "instruction", "precision", "truncate_dim", "convert_to"}
    encode_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in encode_keys}
    return Encoder.from_pretrained(model, **kwargs).encode(texts, **encode_kwargs)
