"""Importance measures, each explaining the gold label's logit, for models that take embeddings
(``forward_embedded``): the ROAR BiLSTMs here and the l2v encoder classifier.

* ``attention``: the attention weights.
* ``gradient``: the L2 norm of the gradient with respect to the one-hot input. With g_t the gradient at the
  embedding of token t and E the embedding matrix, that gradient is E g_t, so its norm is sqrt(g^T (E^T E) g):
  no batch x length x vocabulary tensor is made.
* ``input_x_gradient``: |g_t . e_t| (the one-hot input times its gradient).
* ``integrated_gradient``: zero baseline, ``steps`` right-Riemann points alpha = k/steps. ``textbook``:
  |e_t . mean_k g_t(alpha_k)|; ``official`` (the default, as the paper's code): |e_t . mean_k alpha_k g_t(alpha_k)|,
  an extra alpha factor in each term.
* ``random``: uniform scores from a seeded generator, the baseline.

Positions that are not eligible (padding) get -inf.
"""

from __future__ import annotations

import contextlib

import torch

MEASURES = ("attention", "gradient", "input_x_gradient", "integrated_gradient")
ALL_MEASURES = (*MEASURES, "random")


def _no_cudnn(device: torch.device):
    # cuDNN RNNs refuse backward in eval mode; the math is the same without it.
    return torch.backends.cudnn.flags(enabled=False) if device.type == "cuda" else contextlib.nullcontext()


def _gold_logit_gradient(model, embedded, mask, labels, questions, question_mask):
    embedded = embedded.detach().requires_grad_(True)
    logits, _ = model.forward_embedded(embedded, mask, questions, question_mask)
    gold = logits.gather(1, labels.unsqueeze(1)).sum()
    (gradient,) = torch.autograd.grad(gold, embedded)
    return gradient


def importance(model, tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, measure: str,
               questions: torch.Tensor | None = None, question_mask: torch.Tensor | None = None,
               generator: torch.Generator | None = None, ig_steps: int = 50, ig_variant: str = "official",
               gram: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, length) scores; higher means more important. The model is used in eval mode. ``gram`` is E^T E
    of the embedding matrix, computed here when not given (pass it to score many batches)."""
    if measure not in ALL_MEASURES:
        raise ValueError(f"unknown importance measure {measure!r}; choose one of: {', '.join(ALL_MEASURES)}")
    if ig_variant not in ("official", "textbook"):
        raise ValueError(f"ig_variant must be 'official' or 'textbook', got {ig_variant!r}")
    mask = mask.bool()
    if measure == "random":
        scores = torch.rand(tokens.shape, generator=generator).to(tokens.device)
        return scores.masked_fill(~mask, float("-inf"))
    was_training = model.training
    model.eval()
    try:
        with _no_cudnn(tokens.device):
            embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model.embedding
            embedded = embedding(tokens).detach()
            if measure == "attention":
                with torch.no_grad():
                    _, alpha = model.forward_embedded(embedded, mask, questions, question_mask)
                scores = alpha.float()
            elif measure in ("gradient", "input_x_gradient"):
                gradient = _gold_logit_gradient(model, embedded, mask, labels, questions, question_mask).float()
                if measure == "gradient":
                    if gram is None:
                        weight = embedding.weight.detach().float()
                        gram = weight.T @ weight
                    scores = torch.einsum("bld,de,ble->bl", gradient, gram, gradient).clamp(min=0).sqrt()
                else:
                    scores = (gradient * embedded.float()).sum(-1).abs()
            else:
                total = torch.zeros_like(embedded, dtype=torch.float32)
                for step in range(1, ig_steps + 1):
                    alpha = step / ig_steps
                    gradient = _gold_logit_gradient(model, embedded * alpha, mask, labels, questions, question_mask).float()
                    total += gradient * (alpha if ig_variant == "official" else 1.0)
                scores = ((total / ig_steps) * embedded.float()).sum(-1).abs()
    finally:
        model.train(was_training)
    return scores.masked_fill(~mask, float("-inf"))


def check_measures(measures: list[str] | str, ig_variant: str = "official") -> list[str]:
    """The measures asked for (a list or a comma-separated string), checked, with the integrated-gradients variant."""
    from ..errors import L2VError

    chosen = [m.strip() for m in (measures.split(",") if isinstance(measures, str) else measures) if m.strip()]
    unknown = [m for m in chosen if m not in MEASURES]
    if unknown or not chosen:
        raise L2VError(f"unknown measure {(unknown or [measures])[0]!r}; choose from: {', '.join(MEASURES)}")
    if ig_variant not in ("official", "textbook"):
        raise L2VError(f"--ig-variant must be official or textbook, got {ig_variant!r}")
    return chosen
