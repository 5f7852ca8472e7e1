"""Step 2 of LLM2Vec: masked next token prediction (MNTP).

The model is bidirectional; a fraction of tokens is selected (20 % by default) and of those 80 % are replaced
by the mask token, 10 % by a random token and 10 % kept. The token at position i is predicted from the output
at position i-1 - the causal LM's shift, so the pretrained LM head keeps its meaning. Vocabulary logits are
computed only at the selected positions: a full head over every position is most of the step's cost with
large vocabularies (Gemma-3: 262k).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..batching import length_groups, pad
from ..bidirectional import model_family
from ..errors import L2VError
from .objectives import Objective

# Mask token when the tokenizer has none. The paper uses "_" for Llama-family tokenizers; the same choice is
# used for the other families whose tokenizers lack a mask token.
MASK_TOKEN_BY_FAMILY = {
    "llama": "_",
    "mistral": "_",
    "qwen2": "_",
    "qwen3": "_",
    "phi3": "_",
    "gemma": "<mask>",
    "gemma2": "<mask>",
    "gemma3": "<mask>",
    "gemma3_text": "<mask>",
}


def mask_token_id(tokenizer, family: str, override: str | None = None) -> int:
    """The tokenizer's mask token, else the family's choice; it must be a single token."""
    if override is None and tokenizer.mask_token_id is not None:
        return int(tokenizer.mask_token_id)
    token = override or MASK_TOKEN_BY_FAMILY.get(family)
    if token is None:
        raise L2VError(
            f"model family {family!r} has no mask token in its tokenizer and no default choice in l2v; "
            "set mask_token in the MNTP config (a string that is one token of this tokenizer)"
        )
    ids = tokenizer.convert_tokens_to_ids(token)
    if ids is None or (ids == tokenizer.unk_token_id and token != tokenizer.unk_token):
        encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise L2VError(f"mask token {token!r} is {len(encoded)} tokens for this tokenizer; choose a single-token string")
        ids = encoded[0]
        if ids == tokenizer.unk_token_id and token != tokenizer.unk_token:
            raise L2VError(f"mask token {token!r} is not in this tokenizer's vocabulary (it maps to the unknown token)")
    return int(ids)


@dataclass
class MaskingConfig:
    probability: float = 0.2
    replace_with_mask: float = 0.8
    replace_with_random: float = 0.1  # the rest is kept unchanged


def mask_for_mntp(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_tokens_mask: torch.Tensor | None,
                  mask_id: int, vocab_size: int, config: MaskingConfig = MaskingConfig(),
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (corrupted input ids, labels); labels are -100 except at selected positions.

    Eligible positions are real, non-special tokens that have a real token before them (the first token of a
    text has no previous output to be predicted from)."""
    eligible = attention_mask.bool().clone()
    if special_tokens_mask is not None:
        eligible &= ~special_tokens_mask.bool()
    has_previous = torch.zeros_like(eligible)
    has_previous[:, 1:] = attention_mask[:, :-1].bool()
    eligible &= has_previous
    draws = torch.rand(input_ids.shape, generator=generator)
    selected = eligible & (draws < config.probability)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    action = torch.rand(input_ids.shape, generator=generator)
    to_mask = selected & (action < config.replace_with_mask)
    to_random = selected & (action >= config.replace_with_mask) & (action < config.replace_with_mask + config.replace_with_random)
    corrupted = input_ids.clone()
    corrupted[to_mask] = mask_id
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator)
    corrupted[to_random] = random_tokens[to_random]
    return corrupted, labels


def _states(forward, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return forward({"input_ids": input_ids, "attention_mask": attention_mask}, pool=False)


def _selected_loss(lm_head, states: torch.Tensor, targets: torch.Tensor, logit_softcap: float | None) -> torch.Tensor:
    logits = lm_head(states)
    if logit_softcap:  # Gemma-2/3 cap their final logits
        logits = torch.tanh(logits / logit_softcap) * logit_softcap
    return F.cross_entropy(logits.float(), targets)


def mntp_loss(forward, lm_head, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
              logit_softcap: float | None = None) -> torch.Tensor:
    """Cross-entropy of the token at i predicted from the output at i-1, over selected positions only.
    ``forward`` is an encoder's forward (``forward(features, pool=False)`` gives token states)."""
    hidden = _states(forward, input_ids, attention_mask)
    targets = labels.to(hidden.device)[:, 1:]
    selected = targets != -100
    if not bool(selected.any()):
        return hidden.sum() * 0.0  # keeps the graph (and distributed gradient sync) intact
    return _selected_loss(lm_head, hidden[:, :-1][selected], targets[selected], logit_softcap)


def mntp_loss_grouped(forward, lm_head, items: list[tuple[list[int], list[int]]], pad_id: int,
                      logit_softcap: float | None = None, min_tokens: int = 256) -> torch.Tensor:
    """``mntp_loss`` over a batch given as per-text (corrupted ids, labels), run in length groups (see
    ``l2v.batching``): the hidden states of the selected positions of every group meet in one LM-head product and
    one cross-entropy, so the loss equals the padded full batch's."""
    selected_states, targets = [], []
    for group in length_groups([len(ids) for ids, _ in items], min_tokens=min_tokens):
        input_ids, attention = pad([items[i][0] for i in group], pad_id)
        labels, _ = pad([items[i][1] for i in group], -100)
        hidden = _states(forward, input_ids, attention)
        shifted = labels.to(hidden.device)[:, 1:]
        chosen = shifted != -100
        selected_states.append(hidden[:, :-1][chosen])
        targets.append(shifted[chosen])
        anchor = hidden
    states = torch.cat(selected_states)
    if states.shape[0] == 0:
        return anchor.sum() * 0.0  # keeps the graph (and distributed gradient sync) intact
    return _selected_loss(lm_head, states, torch.cat(targets), logit_softcap)


class MntpObjective(Objective):
    """Step 2: each text's tokens masked from a seed; the frozen LM head predicts them one position later."""

    name = "mntp"
    needs_lm_head = True

    def prepare(self, encoder) -> None:
        super().prepare(encoder)
        self.mask_id = mask_token_id(encoder.tokenizer, model_family(encoder.model), self.config.mntp.mask_token)
        head = encoder.lm_head
        self.vocab_size = head.out_features if hasattr(head, "out_features") else encoder.model.config.vocab_size

    def mask(self, batch: list[str], seed: int) -> list[tuple[list[int], list[int]]]:
        """Per text (corrupted ids, labels) for a step's ``seed``: the masks do not depend on the process count."""
        encoder = self.encoder
        features = encoder.collate(encoder.tokenize(batch), padding_side="right")
        special = features["pooling_mask"].eq(0) & features["attention_mask"].bool()
        generator = torch.Generator().manual_seed(seed ^ 0x5DEECE66D)  # a stream apart from dropout's
        corrupted, labels = mask_for_mntp(features["input_ids"], features["attention_mask"], special, self.mask_id,
                                          self.vocab_size, MaskingConfig(probability=self.config.mntp.probability), generator)
        lengths = features["attention_mask"].sum(dim=1).tolist()
        return [(corrupted[row, :n].tolist(), labels[row, :n].tolist()) for row, n in enumerate(lengths)]

    def loss(self, forward, batch: list[str], seed: int) -> torch.Tensor:
        return mntp_loss_grouped(forward, self.encoder.lm_head, self.mask(batch, seed), self.encoder.tokenizer.pad_token_id,
                                 self.encoder.logit_softcap, min_tokens=self.group_min_tokens())
