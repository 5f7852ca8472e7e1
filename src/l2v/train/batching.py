"""Forward passes over length groups: a training batch is run as a few sub-batches of similar length.

Padding is wasted compute: a batch of 32 Wikipedia sentences padded to its longest computes about twice the
positions it has tokens. Because an l2v embedding (and a token's hidden state) does not depend on which batch
a text is in, the batch can be split into sub-batches of similar length, run one after another in the same
autograd graph, and put back in order: the loss is the full batch's loss (exactly, without dropout), and far
fewer padded positions are computed. Sub-batches stay big enough (``min_tokens``) to keep matrix products
efficient.
"""

from __future__ import annotations

import torch


def length_groups(lengths: list[int], max_padding: float = 0.15, min_tokens: int = 256) -> list[list[int]]:
    """Indices grouped longest first; a group grows while its padded size is within ``1 + max_padding`` of its
    real tokens, or while it holds fewer than ``min_tokens`` padded positions."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in order:
        if current:
            longest = lengths[current[0]]
            padded = longest * (len(current) + 1)
            if padded > min_tokens and padded > (1 + max_padding) * (real + lengths[index]):
                groups.append(current)
                current, real = [], 0
        current.append(index)
        real += lengths[index]
    if current:
        groups.append(current)
    return groups


def embed_in_groups(encoder, tokenized, min_tokens: int = 256) -> torch.Tensor:
    """Pooled embeddings (with gradients) of ``tokenized`` in input order, computed over length groups."""
    groups = length_groups([len(t.input_ids) for t in tokenized], min_tokens=min_tokens)
    if len(groups) == 1:
        return encoder(encoder.collate(tokenized))
    parts = [encoder(encoder.collate([tokenized[i] for i in group])) for group in groups]
    order = torch.tensor([i for group in groups for i in group])
    return torch.cat(parts)[torch.argsort(order)]
