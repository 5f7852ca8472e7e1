"""Export an encoder where people already work: a sentence-transformers folder or a plain Hugging Face folder.

Both formats hold the *merged* weights (LoRA folded in) in safetensors, the tokenizer and ``l2v_config.json``
(pooling, bidirectional attention, maximum length, instruction format), so the folder alone rebuilds the
encoder:

* ``hf``: ``Encoder.from_pretrained(DIR)`` reloads it, and ``transformers.AutoModel.from_pretrained(DIR)`` loads
  the backbone (whose ``config.json`` is the original, causal one: bidirectional attention is l2v's runtime
  switch, recorded in ``l2v_config.json``).
* ``sentence-transformers``: the same folder plus ``modules.json`` naming :class:`SentenceTransformerModule`
  (then ``Normalize``, so the vectors equal ``l2v encode``'s), and ``config_sentence_transformers.json`` with the
  encoder's instructions as sentence-transformers *prompts*. ``SentenceTransformer(DIR, trust_remote_code=True)``
  loads it when l2v is installed (sentence-transformers 6 asks for ``trust_remote_code`` for any module class
  outside its own package; nothing is downloaded); a prompt is handled exactly like an l2v instruction: attended
  to, never pooled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from sentence_transformers.base.modules.input_module import InputModule

from . import __version__
from .encoder import CONFIG_NAME, Encoder
from .errors import L2VError
from .fileio import atomic_dir

FORMATS = ("sentence-transformers", "hf", "llm2vec")
MODULE_TYPE = "l2v.export.SentenceTransformerModule"


class SentenceTransformerModule(InputModule):
    """An l2v encoder as a sentence-transformers input module: tokenise (prompt = instruction), encode, pool."""

    save_in_root = True

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = encoder.tokenizer

    # sentence-transformers reads and sets these
    @property
    def max_seq_length(self) -> int:
        return self.encoder.config.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.encoder.config.max_length = int(value)

    def get_sentence_embedding_dimension(self) -> int:
        return self.encoder.dimension

    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
        items = []
        for index, item in enumerate(inputs):
            if isinstance(item, (tuple, list)) and len(item) == 1:
                item = item[0]
            if not isinstance(item, str):
                raise L2VError(f"input {index}: an l2v encoder takes text, got {type(item).__name__}")
            items.append((prompt or "", item))
        return self.encoder.collate(self.encoder.tokenize(items))

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        features["sentence_embedding"] = self.encoder(features)
        return features

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        _write_encoder_files(self.encoder, Path(output_path))

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token=None, cache_folder=None, revision=None,
             local_files_only: bool = False, **kwargs) -> "SentenceTransformerModule":
        from sentence_transformers.util import load_dir_path

        folder = load_dir_path(model_name_or_path=model_name_or_path, subfolder=subfolder, token=token,
                               cache_folder=cache_folder, revision=revision, local_files_only=local_files_only)
        model_kwargs = kwargs.get("model_kwargs") or {}
        # Loaded on the CPU: sentence-transformers moves the whole model to the device the user asked for.
        encoder = Encoder.from_pretrained(folder, dtype=model_kwargs.get("dtype", model_kwargs.get("torch_dtype", "float32")),
                                          device="cpu", trust_remote_code=bool(kwargs.get("trust_remote_code")))
        return cls(encoder)


def _write_encoder_files(encoder: Encoder, folder: Path) -> None:
    """Merged full weights + tokenizer + l2v config into ``folder`` (which may already hold other files)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(dir=folder.parent if folder.parent.exists() else None) as scratch:
        staged = Path(scratch) / "encoder"
        encoder.save(staged, merge_adapters=True, save_base_weights=True)
        folder.mkdir(parents=True, exist_ok=True)
        for item in staged.iterdir():
            target = folder / item.name
            if target.is_dir():
                shutil.rmtree(target)
            shutil.move(str(item), str(target))


def _to_llm2vec(encoder: Encoder, folder: Path) -> None:
    """Make a saved full-weights folder one that ``llm2vec.LLM2Vec.from_pretrained(folder)`` (0.2.3, transformers 4.4x)
    loads with this encoder's embeddings: config.json in the 4.4x form with the checkpoint name its chat template is
    keyed on, tokenizer files it reads, ``llm2vec_config.json``; l2v's own config switches to the llm2vec text
    preparation, so l2v and llm2vec lay out every text (instructions included) the same way."""
    from .llm2vec_format import LLM2VEC_CONFIG, legacy_config, options_of, read_json, write_legacy_tokenizer

    config = encoder.config
    name = config.llm2vec_name_or_path or f"l2v/{Path(str(config.base_model)).name}"
    (folder / "config.json").write_text(json.dumps(legacy_config(read_json(folder / "config.json"), name), indent=2) + "\n",
                                        encoding="utf-8")
    write_legacy_tokenizer(folder, folder)
    (folder / LLM2VEC_CONFIG).write_text(json.dumps(options_of(encoder), indent=4) + "\n", encoding="utf-8")
    saved = read_json(folder / CONFIG_NAME)
    saved.update(text_format="llm2vec", llm2vec_name_or_path=name)
    (folder / CONFIG_NAME).write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
    if config.text_format != "llm2vec":
        import warnings

        from .encoder import special_tokens

        plain = ("texts without instructions keep their embeddings" if not special_tokens(encoder.tokenizer)[1] else
                 "this tokenizer appends a special token, so llm2vec's pooled span is shifted by it for every text")
        warnings.warn("the llm2vec folder uses llm2vec's text preparation (an instruction is joined to its text by a space "
                      f"and tokenised with it, the pooled span counted from the end): {plain}; texts with instructions "
                      "can differ slightly from this encoder's l2v layout", stacklevel=3)


def export(encoder: Encoder, output: str | Path, format: str = "sentence-transformers",
           prompts: dict[str, str] | None = None, default_prompt_name: str | None = None,
           overwrite: bool = False) -> Path:
    """Write ``encoder`` to ``output`` (atomically) as ``format``: ``sentence-transformers``, ``hf`` or ``llm2vec`` (a
    folder the official llm2vec package loads with ``LLM2Vec.from_pretrained(folder)``).

    ``prompts`` maps names to instructions (sentence-transformers prompts, e.g. ``{"query": "Retrieve ..."}``);
    ``default_prompt_name`` picks the one applied when ``encode`` is called without ``prompt_name``.
    """
    if format not in FORMATS:
        raise L2VError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")
    prompts = dict(prompts or {})
    for name, text in prompts.items():
        if not isinstance(name, str) or not isinstance(text, str) or not name:
            raise L2VError(f"prompt {name!r}: names and instructions must be non-empty strings")
    if default_prompt_name is not None and default_prompt_name not in prompts:
        raise L2VError(f"default prompt {default_prompt_name!r} is not one of the prompts: {', '.join(prompts) or 'none given'}")
    if format != "sentence-transformers" and prompts:
        raise L2VError(f"prompts belong to the sentence-transformers format; --format {format} has no place for them")
    if format == "llm2vec":
        from .llm2vec_format import check_exportable

        check_exportable(encoder)
    output = Path(output)
    with atomic_dir(output, overwrite=overwrite) as tmp:
        encoder.save(tmp, merge_adapters=True, save_base_weights=True, overwrite=True)
        if format == "llm2vec":
            _to_llm2vec(encoder, tmp)
        if format == "sentence-transformers":
            modules = [
                {"idx": 0, "name": "0", "path": "", "type": MODULE_TYPE},
                {"idx": 1, "name": "1", "path": "1_Normalize", "type": "sentence_transformers.base.modules.normalize.Normalize"},
            ]
            (tmp / "1_Normalize").mkdir()
            (tmp / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
            import sentence_transformers

            st_config = {
                "__version__": {"sentence_transformers": sentence_transformers.__version__, "l2v": __version__,
                                "pytorch": torch.__version__},
                "prompts": prompts,
                "default_prompt_name": default_prompt_name,
                "similarity_fn_name": "cosine",
            }
            (tmp / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n", encoding="utf-8")
        if not (tmp / CONFIG_NAME).exists():  # pragma: no cover - encoder.save always writes it
            raise L2VError(f"export to {output} wrote no {CONFIG_NAME}")
    return output
