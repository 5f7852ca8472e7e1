"""The paper's models: a BiLSTM with additive attention for one sequence (SST), and a paired version for bAbI
(story and question encoded apart, attention over the story conditioned on the question), after Jain and Wallace
(2019), whose models the ROAR paper uses. Word vectors start random (no pretrained vectors offline)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class _BiLSTM(nn.Module):
    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden, batch_first=True, bidirectional=True)

    def forward(self, embedded: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        output, (final, _) = self.lstm(packed)
        states, _ = pad_packed_sequence(output, batch_first=True, total_length=embedded.shape[1])
        return states, torch.cat([final[0], final[1]], dim=-1)


class AdditiveAttention(nn.Module):
    """alpha = softmax(v . tanh(W h_t [+ U q])) over the unmasked positions; returns (sum_t alpha_t h_t, alpha)."""

    def __init__(self, states_dim: int, hidden: int, query_dim: int | None = None):
        super().__init__()
        self.key = nn.Linear(states_dim, hidden)
        self.query = nn.Linear(query_dim, hidden, bias=False) if query_dim else None
        self.score = nn.Linear(hidden, 1, bias=False)

    def forward(self, states, mask, query=None):
        hidden = self.key(states)
        if self.query is not None:
            hidden = hidden + self.query(query).unsqueeze(1)
        scores = self.score(torch.tanh(hidden)).squeeze(-1).masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(scores, dim=-1)
        return (alpha.unsqueeze(-1) * states).sum(1), alpha


class AttentionClassifier(nn.Module):
    """Embedding -> BiLSTM -> additive attention -> linear. For single sequences (SST)."""

    paired = False

    def __init__(self, vocabulary_size: int, classes: int, embedding_dim: int = 300, hidden: int = 128):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, embedding_dim, padding_idx=0)
        self.encoder = _BiLSTM(embedding_dim, hidden)
        self.attention = AdditiveAttention(2 * hidden, hidden)
        self.output = nn.Linear(2 * hidden, classes)

    def forward_embedded(self, embedded, mask, questions=None, question_mask=None):
        states, _ = self.encoder(embedded, mask)
        context, alpha = self.attention(states, mask)
        return self.output(context), alpha

    def forward(self, tokens, mask, questions=None, question_mask=None):
        return self.forward_embedded(self.embedding(tokens), mask, questions, question_mask)


class PairedAttentionClassifier(nn.Module):
    """Story and question BiLSTMs; attention v . tanh(W1 h_t + W2 q) over the story; output from tanh(W3 c + W4 q)."""

    paired = True

    def __init__(self, vocabulary_size: int, classes: int, embedding_dim: int = 50, hidden: int = 32):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, embedding_dim, padding_idx=0)
        self.story = _BiLSTM(embedding_dim, hidden)
        self.question = _BiLSTM(embedding_dim, hidden)
        self.attention = AdditiveAttention(2 * hidden, hidden, query_dim=2 * hidden)
        self.combine_context = nn.Linear(2 * hidden, hidden)
        self.combine_question = nn.Linear(2 * hidden, hidden, bias=False)
        self.output = nn.Linear(hidden, classes)

    def forward_embedded(self, embedded, mask, questions, question_mask):
        states, _ = self.story(embedded, mask)
        _, question = self.question(self.embedding(questions), question_mask)
        context, alpha = self.attention(states, mask, question)
        return self.output(torch.tanh(self.combine_context(context) + self.combine_question(question))), alpha

    def forward(self, tokens, mask, questions, question_mask):
        return self.forward_embedded(self.embedding(tokens), mask, questions, question_mask)


def build_model(data, embedding_dim: int | None = None, hidden: int | None = None) -> nn.Module:
    if data.paired:
        return PairedAttentionClassifier(len(data.vocabulary), len(data.classes), embedding_dim or 50, hidden or 32)
    return AttentionClassifier(len(data.vocabulary), len(data.classes), embedding_dim or 300, hidden or 128)
