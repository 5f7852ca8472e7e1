"""The trainable heads over frozen embeddings, and the scores every variant gives the ten candidates.

* zero-shot / ContextBatch: the cosine of the text embedding with each image embedding (argmax over the ten);
* the context module (Krojer et al. 2022, "+ContextModule" / "+TemporalEmbeddings"): the image and text
  embeddings fused by an element-wise product (``fusion_scale * image * text``), a small transformer over the ten
  candidates so each sees the others, learned position embeddings added for video sets only (frame order carries
  meaning there), the fused input added back, and a linear head giving one logit per candidate;
* LiT-style text side (new here): a frozen image tower, an l2v text encoder, and a trained linear projection of
  its embedding into the image embedding space, scored by cosine with a learned temperature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .data import CANDIDATES


def cosine_logits(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """Cosine of each text [B, D] with its ten images [B, 10, D]: [B, 10]."""
    images = nn.functional.normalize(images.float(), dim=-1)
    texts = nn.functional.normalize(texts.float(), dim=-1)
    return torch.einsum("bkd,bd->bk", images, texts)


@dataclass
class ContextOptions:
    layers: int = 2
    heads: int = 8
    ffn_dim: int = 3072  # the BERT-base intermediate size the official layers were configured with
    dropout: float = 0.1
    positional: bool = True  # "+TemporalEmbeddings": position embeddings for video sets
    fusion_scale: float = 1000.0  # the official --logit_scale 1000 of the product fusion
    add_input: bool = True  # the fused input added to the transformer's output (--add_input)


class ContextModule(nn.Module):
    def __init__(self, dimension: int, options: ContextOptions):
        super().__init__()
        if dimension % options.heads:
            raise ValueError(f"embedding size {dimension} is not divisible by {options.heads} heads")
        self.options = options
        layer = nn.TransformerEncoderLayer(dimension, options.heads, dim_feedforward=options.ffn_dim,
                                           dropout=options.dropout, activation="gelu", batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, options.layers, enable_nested_tensor=False)
        self.positions = nn.Embedding(CANDIDATES, dimension) if options.positional else None
        self.head = nn.Linear(dimension, 1)

    def forward(self, images: torch.Tensor, texts: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """Logits [B, 10] from image embeddings [B, 10, D], text embeddings [B, D] and a video flag [B]."""
        images = nn.functional.normalize(images.float(), dim=-1)
        texts = nn.functional.normalize(texts.float(), dim=-1)
        fused = self.options.fusion_scale * images * texts[:, None, :]
        hidden = fused
        if self.positions is not None:
            order = self.positions(torch.arange(images.shape[1], device=images.device))
            hidden = hidden + order[None] * video.float()[:, None, None].to(images.device)
        hidden = self.transformer(hidden)
        if self.options.add_input:
            hidden = hidden + fused
        return self.head(hidden).squeeze(-1)


class TextProjection(nn.Module):
    """A linear map from an l2v text embedding into the image embedding space, and a learned temperature."""

    def __init__(self, text_dimension: int, image_dimension: int, initial_scale: float = 1 / 0.07):
        super().__init__()
        self.projection = nn.Linear(text_dimension, image_dimension, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(math.log(initial_scale)))

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * cosine_logits(images, self.projection(texts.float()))
