"""Step 3 of LLM2Vec: unsupervised SimCSE. Each sentence is encoded twice with dropout as the only
augmentation (the paper raises attention dropout to 0.3); the two views are positives and the other sentences
of the (global) batch negatives, under InfoNCE with temperature 0.05. Pooling excludes padding exactly as at
inference: the loss takes the encoder's own pooled embeddings."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..batching import embed_in_groups
from ..distributed import gather_with_grad
from .objectives import Objective


def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float = 0.05, gather: bool = True) -> torch.Tensor:
    """Cross-entropy of each query against all keys (the i-th key of the global batch is its positive; any
    further keys, such as hard negatives, sit after the positives). Keys are gathered across processes; each
    process keeps its local queries and the gradient of its local keys."""
    queries = F.normalize(queries.float(), dim=-1)
    keys = F.normalize(keys.float(), dim=-1)
    offset = 0
    if gather:
        keys, offset = gather_with_grad(keys, queries.shape[0])
    logits = queries @ keys.T / temperature
    targets = torch.arange(queries.shape[0], device=queries.device) + offset
    return F.cross_entropy(logits, targets)


def set_dropout(model, attention_dropout: float | None = None, hidden_dropout: float | None = None) -> None:
    """Raise the dropout used as SimCSE's augmentation (config and live modules), for any family."""
    config = model.config
    if attention_dropout is not None:
        for name in ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob"):
            if hasattr(config, name):
                setattr(config, name, attention_dropout)
        for module in model.modules():
            if hasattr(module, "attention_dropout") and isinstance(module.attention_dropout, float):
                module.attention_dropout = attention_dropout
    if hidden_dropout is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = hidden_dropout


def simcse_loss(forward, collate, tokenized, temperature: float = 0.05, gather: bool = True,
                min_tokens: int = 256) -> torch.Tensor:
    """Each text twice in one forward pass of 2B rows, in training mode: the two copies get independent dropout
    masks, which makes the two views (one pass of twice the rows instead of two passes: larger matrix products,
    half the per-pass overhead; with dropout off, exactly the two passes' loss).

    ``forward`` is the encoder's forward, ``collate`` its collate; ``tokenized`` a list of ``Tokenized`` texts (run
    in length groups of at least ``min_tokens`` padded positions, see ``l2v.batching``; a text and its copy have the
    same length, so they share a group)."""
    both = embed_in_groups(forward, collate, list(tokenized) + list(tokenized), min_tokens=min_tokens)
    first, second = both[: len(tokenized)], both[len(tokenized):]
    return info_nce(first, second, temperature, gather)


class SimcseObjective(Objective):
    """Step 3: unsupervised SimCSE on plain texts."""

    name = "simcse"
    temperature = 0.05

    def prepare(self, encoder) -> None:
        super().prepare(encoder)
        dropout = self.config.contrastive.attention_dropout
        set_dropout(encoder.model, attention_dropout=0.3 if dropout is None else dropout)

    def loss(self, forward, batch: list[str], seed: int) -> torch.Tensor:
        return simcse_loss(forward, self.encoder.collate, self.encoder.tokenize(batch), self.contrastive_temperature(),
                           self.config.contrastive.gather_negatives, self.group_min_tokens())
