"""Recursive ROAR for an l2v encoder: is *your* encoder's explanation faithful?

The classifier is an l2v encoder (frozen) plus a linear head (logistic regression on the pooled embeddings,
refitted at every masking step: the "retrain" of ROAR). Texts are the encoder's own tokens; masking replaces
text tokens by the model's MNTP mask token (the tokenizer's mask token, else the family's choice, "_" for
Llama-family models), never the special tokens around them. The importance measures run through the encoder:
gradients reach the input embeddings through every layer; ``attention`` is the attention each token receives
in the last layer (mean over heads and over the text's query positions; the model is loaded with eager
attention for it). A text token that already equals the mask token counts as masked (ROAR counts masks by token).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from ..batching import pad, token_budget_batches
from ..bidirectional import model_family
from .data import RoarData, Split
from .importance import importance
from .training import scores as performance_scores


class EncoderClassifier(torch.nn.Module):
    def __init__(self, encoder, classes: int):
        super().__init__()
        self.encoder = encoder
        self.output = torch.nn.Linear(encoder.dimension, classes)
        self.embedding = encoder.model.get_input_embeddings()
        self.want_attention = False
        self._layout = (None, None)  # (lengths, tensors) of the last batch: a measure calls forward many times on it

    def _wrap(self, mask: torch.Tensor):
        """The layout of each (right-padded) row of text tokens inside the encoder's special tokens: ids (text
        positions are overwritten with the given embeddings), attention mask and which positions are text."""
        lengths = (tuple(mask.sum(1).tolist()), mask.device)
        if self._layout[0] != lengths:
            batch = self.encoder.collate([self.encoder.from_ids([0] * n) for n in lengths[0]], padding_side="right")
            device = mask.device
            self._layout = (lengths, (batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                      batch["pooling_mask"].bool().to(device)))
        return self._layout[1]

    def forward_embedded(self, embedded, mask, questions=None, question_mask=None):
        """``embedded``: (batch, text length, dim) embeddings of the text tokens only."""
        ids, attention, text = self._wrap(mask)
        full = self.embedding(ids).detach().clone()
        full[text] = embedded[mask].to(full.dtype)  # the text positions take the (differentiable) given embeddings
        features = {"inputs_embeds": full, "attention_mask": attention, "pooling_mask": text.long()}
        if self.want_attention:
            pooled, output = self.encoder(features, output_attentions=True)
        else:
            pooled, output = self.encoder(features), None
        pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        logits = self.output(pooled)  # the head was fitted on normalised embeddings (``embed_tokenized``'s default)
        if self.want_attention and not output.attentions:
            raise RuntimeError("the attention measure needs the encoder loaded with attn_implementation='eager'")
        if self.want_attention:
            last = output.attentions[-1].float().mean(1)  # (batch, query, key)
            weights = text.float().unsqueeze(-1)
            received = (last * weights).sum(1) / weights.sum(1).clamp(min=1)
            alpha = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
            alpha[mask] = received[text]
        else:
            alpha = torch.zeros(mask.shape, device=mask.device)
        return logits, alpha

    def forward(self, tokens, mask, questions=None, question_mask=None):
        return self.forward_embedded(self.embedding(tokens), mask)


def sst_for_encoder(folder, encoder, limit_train: int | None = None, limit_eval: int | None = None) -> RoarData:
    """SST-2 (the same sentences as ``load_sst``) as the encoder's text tokens, truncated to its max length."""
    from pathlib import Path

    from .data import load_sst_texts

    budget = encoder.text_budget
    splits = {}
    for name, (texts, labels) in load_sst_texts(Path(folder)).items():
        ids = encoder.tokenizer(texts, add_special_tokens=False)["input_ids"]
        splits[name] = Split([row[:budget] or [encoder.placeholder_id] for row in ids], labels)
    data = RoarData("sst", [], ["negative", "positive"], splits)
    return data.limit(limit_train, limit_eval) if limit_train or limit_eval else data


class EncoderBackend:
    """ROAR backend: the frozen l2v encoder + a logistic-regression head refitted on each masking."""

    def __init__(self, encoder, name: str, ig_steps: int = 50, ig_variant: str = "official", batch_size: int = 16,
                 mask_token: str | None = None):
        from ..train.mntp import mask_token_id

        self.encoder = encoder
        self.name = f"encoder-{name}"
        self.model_name = name
        self.mask_id = mask_token_id(encoder.tokenizer, model_family(encoder.model), mask_token)
        self.ig_steps, self.ig_variant, self.batch_size = ig_steps, ig_variant, batch_size
        self.device = encoder.device

    def describe(self) -> dict:
        from ..fileio import weights_signature

        return {"backend": self.name, "model": self.encoder.source, "encoder_config": {
                    k: v for k, v in vars(self.encoder.config).items() if k != "l2v_version"},
                "weights": weights_signature(self.encoder.source),
                "dtype": str(next(self.encoder.model.parameters()).dtype),
                "mask_id": self.mask_id, "ig_steps": self.ig_steps, "ig_variant": self.ig_variant,
                "head": "logistic regression (lbfgs) on a seeded bootstrap resample of the training set"}

    def _embed(self, split: Split) -> np.ndarray:
        items = [self.encoder.from_ids(row) for row in split.tokens]
        return self.encoder.embed_tokenized(items, batch_size=32).numpy()

    def train(self, data: RoarData, seed: int):
        features = {name: self._embed(split) for name, split in data.splits.items()}
        # The encoder is frozen and lbfgs is deterministic: without a resample every seed would give the same head and
        # the same measure curves. A bootstrap resample (as counts, so no sentence is encoded twice) is what a seed
        # varies, the way a seed varies the BiLSTM's initialisation and batch order.
        count = len(data.splits["train"])
        weights = np.bincount(np.random.default_rng(seed).integers(0, count, count), minlength=count).astype(np.float64)
        head = LogisticRegression(max_iter=2000)
        head.fit(features["train"], data.splits["train"].labels, sample_weight=weights)
        model = self.load({"weight": torch.tensor(head.coef_, dtype=torch.float32),
                           "bias": torch.tensor(head.intercept_, dtype=torch.float32)}, data)
        report = {}
        for name in ("validation", "test"):
            report[name] = performance_scores(data.name, data.splits[name], head.predict_proba(features[name]))
        return model, report

    def state(self, model) -> dict:
        return model.output.state_dict()

    def load(self, state: dict, data: RoarData):
        model = EncoderClassifier(self.encoder, len(data.classes))
        weight, bias = state["weight"], state["bias"]
        if weight.shape[0] == 1 and len(data.classes) == 2:  # a binary logistic regression: logit for class 1
            weight = torch.cat([-weight / 2, weight / 2])
            bias = torch.cat([-bias / 2, bias / 2])
        model.output.load_state_dict({"weight": weight, "bias": bias})
        model.to(self.device)
        return model.eval()

    def score(self, model, split: Split, measure: str, seed: int) -> list[np.ndarray]:
        generator = torch.Generator().manual_seed(seed)
        model.want_attention = measure == "attention"
        matrix = self.encoder.model.get_input_embeddings().weight.detach().float()
        gram = matrix.T @ matrix if measure == "gradient" else None  # once per split, not per batch
        result: list = [None] * len(split)
        for indices in token_budget_batches([len(t) for t in split.tokens], self.batch_size, longest_first=False):
            indices = np.asarray(indices)
            tokens, mask = pad([split.tokens[i] for i in indices], 0)
            mask = mask.bool()
            labels = torch.as_tensor(split.labels[indices])
            values = importance(model, tokens.to(self.device), mask.to(self.device), labels.to(self.device), measure,
                                generator=generator, ig_steps=self.ig_steps, ig_variant=self.ig_variant,
                                gram=gram).detach().cpu().numpy()
            for row, index in enumerate(indices):
                result[index] = values[row, : len(split.tokens[index])]
        model.want_attention = False
        return result


def run_name(model: str) -> str:
    """The cache folder name of an encoder: a hub id or built-in name as is, a local folder by its name and path."""
    import hashlib
    from pathlib import Path

    if not Path(model).exists():
        return model.replace("/", "--")
    return f"{Path(model).name}-{hashlib.sha256(str(Path(model).resolve()).encode()).hexdigest()[:8]}"


def run_encoder_roar(model: str, data_folder, output, measures, seeds: list[int], recursive: bool = True,
                     limit_train: int | None = None, limit_eval: int | None = None, ratios: list[int] | None = None,
                     ig_steps: int = 50, ig_variant: str = "official", max_length: int = 128, dtype: str = "float32",
                     log=print) -> list[dict]:
    """Recursive ROAR for an l2v encoder + a linear head on SST-2 (``data_folder`` holds sst_trees/); resumable."""
    from pathlib import Path

    from ..encoder import Encoder
    from ..errors import L2VError
    from .importance import check_measures
    from .runner import run

    chosen = check_measures(measures, ig_variant)
    if dtype not in ("float32", "bfloat16"):
        raise L2VError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    # eager attention only when the attention measure needs the weights (SDPA is faster for the rest)
    encoder = Encoder.from_pretrained(model, max_length=max_length, dtype=dtype,
                                      attn_implementation="eager" if "attention" in chosen else None)
    loaded = sst_for_encoder(Path(data_folder) / "sst_trees", encoder, limit_train, limit_eval)
    extra = {"ratios": ratios} if ratios is not None else {}
    return run(loaded, output, chosen, seeds, recursive=recursive,
               backend=EncoderBackend(encoder, run_name(model), ig_steps=ig_steps, ig_variant=ig_variant), log=log, **extra)
