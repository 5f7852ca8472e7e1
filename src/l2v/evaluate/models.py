"""What the evaluator encodes with: an l2v :class:`~l2v.encoder.Encoder`, or a sentence-transformers model as a
baseline (for example the built-in ``minilm-l6``). Both expose the same small interface, and both go through the
embedding cache, so a text is encoded once per model whatever tasks share it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ..encoder import Encoder
from ..errors import L2VError
from ..fileio import weights_signature
from ..registry import resolve
from .cache import EmbeddingCache


def _hub_revision(model_id) -> str | None:
    """The cached commit of a hub model, so a new revision is not served stale embeddings."""
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_id == str(model_id):
                return ",".join(sorted(r.commit_hash for r in repo.revisions))
    except Exception:  # noqa: BLE001 - no cache: no revision to record
        return None
    return None


class EvalModel:
    """A named encoder with ``encode(texts, instruction)`` and ``token_states(words)`` for the word-level probes."""

    def __init__(self, name: str, backend, kind: str, fingerprint: str, cache: EmbeddingCache | None, batch_size: int = 32):
        self.name, self.backend, self.kind = name, backend, kind
        self.fingerprint, self.cache, self.batch_size = fingerprint, cache, batch_size
        self.encoded_texts = 0  # texts actually run through the model (cache misses)
        self.cache_chunk = 512  # texts encoded between two cache writes
        self._word_features: dict[str, list[np.ndarray]] = {}  # POS, chunk and NER probes share one pass

    @classmethod
    def load(cls, model: str, cache_dir: str | Path | None = None, batch_size: int = 32, **encoder_kwargs) -> "EvalModel":
        from ..llm2vec_format import PUBLISHED

        resolved = resolve(PUBLISHED[model].checkpoint if model in PUBLISHED else model)
        folder = Path(resolved.location)
        cache = EmbeddingCache(cache_dir) if cache_dir else None
        if resolved.kind == "sentence-transformers":
            from sentence_transformers import SentenceTransformer

            options = sorted(k for k, v in encoder_kwargs.items() if v is not None and k in ("bidirectional", "pooling", "pooling_options", "max_length", "adapters"))
            if options:
                raise L2VError(f"model {model!r} is a sentence-transformers model: l2v options ({', '.join(options)}) do not apply to it")

            backend = SentenceTransformer(str(folder), device="cuda" if torch.cuda.is_available() else "cpu")
            description = {"kind": "sentence-transformers", "weights": weights_signature(folder)}
            kind = "sentence-transformers"
        else:
            backend = Encoder.from_pretrained(model, **encoder_kwargs)
            base = backend.config.base_model
            base_folder = Path(resolve(base).location) if base not in (".", str(model)) else None
            description = {
                "kind": "l2v",
                "config": {k: v for k, v in backend.config.__dict__.items() if k != "l2v_version"},
                "source": backend.source if resolved.builtin is None else resolved.builtin.gguf_sha256,
                "weights": weights_signature(folder) if resolved.builtin is None else [],
                "base_weights": weights_signature(base_folder) if base_folder is not None else [],
                "adapter_weights": [weights_signature(a) for a in backend.adapter_folders],
                "hub_revision": _hub_revision(folder) if resolved.builtin is None and not folder.exists() else None,
                # mixed precision by its split (its first weights are float32: never served float32's cache)
                "dtype": backend.precision_description if backend.precision is not None else str(next(backend.model.parameters()).dtype),
                "adapters": encoder_kwargs.get("adapters"),
            }
            kind = "l2v"
        fingerprint = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return cls(model, backend, kind, fingerprint, cache, batch_size)

    # --------------------------------------------------------------- sentence embeddings
    def _encode_uncached(self, texts: list[str], instruction: str) -> np.ndarray:
        self.encoded_texts += len(texts)
        if self.kind == "sentence-transformers":
            prompt = instruction or None
            return np.asarray(
                self.backend.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, prompt=prompt, convert_to_numpy=True),
                dtype=np.float32,
            )
        return self.backend.encode(texts, batch_size=self.batch_size, normalize=True, instruction=instruction or None)

    def encode(self, texts: list[str], instruction: str = "") -> np.ndarray:
        """L2-normalised float32 embeddings, one row per text; distinct texts are encoded once."""
        distinct = list(dict.fromkeys(texts))
        if self.cache is not None:
            found = self.cache.get_many(self.fingerprint, instruction, distinct)
            missing = [t for t in distinct if t not in found]
            # In chunks, each stored as soon as it is done: an interrupted task keeps what it encoded.
            for start in range(0, len(missing), self.cache_chunk):
                chunk = missing[start: start + self.cache_chunk]
                vectors = self._encode_uncached(chunk, instruction)
                self.cache.put_many(self.fingerprint, instruction, chunk, vectors)
                found.update(zip(chunk, vectors))
        else:
            found = dict(zip(distinct, self._encode_uncached(distinct, instruction))) if distinct else {}
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([found[t] for t in texts]).astype(np.float32)

    @property
    def dimension(self) -> int:
        if self.kind == "sentence-transformers":
            return int(self.backend.get_sentence_embedding_dimension())
        return int(self.backend.model.config.hidden_size)

    # --------------------------------------------------------------- token states
    def _backbone_and_tokenizer(self):
        if self.kind == "sentence-transformers":
            transformer = self.backend[0]
            return transformer.auto_model, transformer.tokenizer
        return self.backend.model, self.backend.tokenizer

    def word_features(self, sentences: list[list[str]], layer: int = -1, subword: str = "mean",
                      read_previous: bool = False, batch_size: int = 16) -> list[np.ndarray]:
        """One vector per word: the chosen layer's token states, averaged over a word's sub-tokens (``mean``) or
        taken at its first sub-token (``first``). With ``read_previous`` a word is read from the position before
        its first sub-token, as for MNTP-trained models, which predict token i at position i-1."""
        key = hashlib.sha256(json.dumps([sentences, layer, subword, read_previous]).encode()).hexdigest()
        if key not in self._word_features:
            if len(self._word_features) >= 4:  # train and test of one or two probe settings
                self._word_features.pop(next(iter(self._word_features)))
            self._word_features[key] = self._compute_word_features(sentences, layer, subword, read_previous, batch_size)
        return self._word_features[key]

    def _compute_word_features(self, sentences, layer, subword, read_previous, batch_size) -> list[np.ndarray]:
        from ..batching import pad, token_budget_batches
        from ..encoder import special_tokens

        model, tokenizer = self._backbone_and_tokenizer()
        prefix, suffix = special_tokens(tokenizer)
        flat = [(" " + w) if j else w for s in sentences for j, w in enumerate(s)]
        flat_ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
        max_length = getattr(tokenizer, "model_max_length", 512)
        max_length = 512 if not max_length or max_length > 100_000 else max_length
        examples, cursor = [], 0
        for words in sentences:
            ids, spans = list(prefix), []
            for piece in flat_ids[cursor: cursor + len(words)]:
                piece = piece or [tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0]
                spans.append((len(ids), len(ids) + len(piece)))
                ids.extend(piece)
            cursor += len(words)
            ids = (ids + suffix)[:max_length]
            examples.append((ids, spans))
        result: list[np.ndarray | None] = [None] * len(examples)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        device = next(model.parameters()).device
        with torch.inference_mode():
            for batch in token_budget_batches([len(ids) for ids, _ in examples], batch_size):
                ids, mask = pad([examples[i][0] for i in batch], pad_id)
                if self.kind == "l2v":  # the encoder's own forward: its attention (bidirectional or causal)
                    _, output = self.backend({"input_ids": ids, "attention_mask": mask}, pool=False, output_hidden_states=True)
                else:
                    output = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
                states = output.hidden_states[layer].float().cpu()
                for row, i in enumerate(batch):
                    n_tokens = len(examples[i][0])
                    vectors = []
                    for begin, end in examples[i][1]:
                        if read_previous:
                            position = max(begin - 1, 0)
                            vectors.append(states[row, min(position, n_tokens - 1)])
                        elif begin >= n_tokens:  # truncated away: use the last state we have
                            vectors.append(states[row, n_tokens - 1])
                        elif subword == "first":
                            vectors.append(states[row, begin])
                        else:
                            vectors.append(states[row, begin: min(end, n_tokens)].mean(0))
                    result[i] = torch.stack(vectors).numpy()
        return result  # type: ignore[return-value]
