"""Run ``mteb`` (2.x) directly on an l2v encoder: ``mteb.evaluate(L2VMtebEncoder("smollm2-135m"), tasks)``.

Implements mteb's encoder protocol: ``encode(inputs, *, task_metadata, hf_split, hf_subset, prompt_type)``,
``similarity``, ``similarity_pairwise`` and ``mteb_model_meta``. Instructions go through l2v's instruction
mechanism (attended to, not pooled): from ``instructions[task name]`` (by default the LLM2Vec authors' list for
the 56 MTEB tasks they evaluated, l2v/data/llm2vec_mteb_instructions.json; the caller's entries win), else the
task's own prompt in mteb's metadata; for retrieval only queries get one, documents never do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..encoder import Encoder


class L2VMtebEncoder:
    def __init__(self, model_name: str | Encoder, revision: str | None = None, *, device: str | None = None,
                 instructions: dict[str, str] | None = None, use_task_prompts: bool = True, batch_size: int = 32,
                 use_llm2vec_instructions: bool = True, **encoder_kwargs: Any) -> None:
        if isinstance(model_name, Encoder):
            self.encoder, self.name = model_name, model_name.config.base_model
        else:
            self.encoder = Encoder.from_pretrained(model_name, device=device, **encoder_kwargs)
            self.name = str(model_name)
        self.revision = revision
        from ..llm2vec_format import mteb_instructions

        # The LLM2Vec authors' instruction for each task they evaluated (queries and symmetric tasks), then the
        # caller's, which win.
        self.instructions = {**(mteb_instructions() if use_llm2vec_instructions else {}), **dict(instructions or {})}
        self.use_task_prompts = use_task_prompts
        self.batch_size = batch_size
        self._meta = None

    # mteb decides which prompt type is a query; documents in retrieval never get an instruction.
    def _instruction(self, task_metadata, prompt_type) -> str:
        from mteb.types import PromptType

        if prompt_type is not None and PromptType(prompt_type) == PromptType.document:
            return ""
        name = getattr(task_metadata, "name", "")
        if name in self.instructions:
            return self.instructions[name]
        prompt = getattr(task_metadata, "prompt", None) if self.use_task_prompts else None
        if isinstance(prompt, dict):
            prompt = prompt.get(PromptType(prompt_type).value if prompt_type else "query")
        return prompt or ""

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs: Any) -> np.ndarray:
        texts: list[str] = []
        for batch in inputs:
            texts.extend(batch["text"])
        instruction = self._instruction(task_metadata, prompt_type)
        if not texts:
            return np.zeros((0, self.encoder.model.config.hidden_size), dtype=np.float32)
        return self.encoder.encode(texts, batch_size=self.batch_size, normalize=True, instruction=instruction or None)

    @staticmethod
    def _as_tensor(array) -> torch.Tensor:
        tensor = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array, dtype=torch.float32)
        return tensor[None] if tensor.dim() == 1 else tensor

    def similarity(self, embeddings1, embeddings2) -> torch.Tensor:
        a = torch.nn.functional.normalize(self._as_tensor(embeddings1), dim=-1)
        b = torch.nn.functional.normalize(self._as_tensor(embeddings2), dim=-1)
        return a @ b.T

    def similarity_pairwise(self, embeddings1, embeddings2) -> torch.Tensor:
        a = torch.nn.functional.normalize(self._as_tensor(embeddings1), dim=-1)
        b = torch.nn.functional.normalize(self._as_tensor(embeddings2), dim=-1)
        return (a * b).sum(-1)

    @property
    def mteb_model_meta(self):
        if self._meta is None:
            from mteb.models.model_meta import ModelMeta

            info = self.encoder.info()
            self._meta = ModelMeta(
                loader=None, name=f"l2v/{self.name}".replace("//", "/") if "/" not in self.name else self.name,
                revision=self.revision or "l2v", release_date=None, languages=None,
                n_parameters=info["parameters"], memory_usage_mb=None, max_tokens=self.encoder.config.max_length,
                embed_dim=info["hidden_size"], license=None, open_weights=True, public_training_code=None,
                public_training_data=None, framework=["PyTorch"], similarity_fn_name="cosine",
                use_instructions=True, training_datasets=None,
            )
        return self._meta
