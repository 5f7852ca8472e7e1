import pytest
import torch

from l2v.errors import L2VError
from l2v.pooling import build_pooling, canonical_pooling


def batch():
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 4)
    attention = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])  # right- and left-padded rows
    pooling = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]])  # first real token is an instruction
    return hidden, pooling, attention


def test_mean_averages_only_pooled_tokens():
    hidden, pooling, attention = batch()
    out = build_pooling("mean", 4)(hidden, pooling, attention)
    assert torch.allclose(out[0], hidden[0, 1:4].mean(0))
    assert torch.allclose(out[1], hidden[1, 2:5].mean(0))


def test_weighted_mean_weights_grow_with_position():
    hidden, pooling, attention = batch()
    out = build_pooling("weighted_mean", 4)(hidden, pooling, attention)
    weights = torch.tensor([1.0, 2.0, 3.0]) / 6.0
    assert torch.allclose(out[0], (hidden[0, 1:4] * weights[:, None]).sum(0))
    assert torch.allclose(out[1], (hidden[1, 2:5] * weights[:, None]).sum(0))


def test_last_and_first_token_ignore_padding_side():
    hidden, pooling, attention = batch()
    last = build_pooling("eos_token", 4)(hidden, pooling, attention)
    first = build_pooling("bos", 4)(hidden, pooling, attention)
    assert torch.equal(last[0], hidden[0, 3]) and torch.equal(last[1], hidden[1, 4])
    assert torch.equal(first[0], hidden[0, 0]) and torch.equal(first[1], hidden[1, 1])


def test_latent_attention_is_padding_invariant_and_trainable():
    torch.manual_seed(0)
    module = build_pooling("latent_attention", 8, {"num_latents": 6, "num_heads": 2})
    hidden = torch.randn(1, 3, 8, requires_grad=True)
    ones = torch.ones(1, 3, dtype=torch.long)
    alone = module(hidden, ones, ones)
    padded = torch.cat([hidden, torch.randn(1, 2, 8)], dim=1)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    assert torch.allclose(module(padded, mask, mask), alone, atol=1e-6)
    alone.sum().backward()
    assert module.latents.grad is not None and module.latents.grad.abs().sum() > 0
    assert set(module.state_dict()) >= {"latents", "query.weight", "mlp.0.weight"}


def test_unknown_pooling_names_the_choices():
    with pytest.raises(L2VError, match="unknown pooling 'max'.*mean"):
        canonical_pooling("max")
    with pytest.raises(L2VError, match="'mean': unknown option.*num_latents.*skip_first_token"):
        build_pooling("mean", 4, {"num_latents": 3})
    with pytest.raises(L2VError, match="takes no options"):
        build_pooling("eos_token", 4, {"skip_first_token": True})
    with pytest.raises(L2VError, match="must be true or false"):
        build_pooling("mean", 4, {"skip_first_token": "yes"})


def test_skip_first_token_leaves_the_first_position_out_whatever_the_padding():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4)
    attention = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    pooling = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    mean = build_pooling("mean", 4, {"skip_first_token": True})
    out = mean(hidden, pooling, attention)
    assert torch.allclose(out[0], hidden[0, 1:4].mean(0)) and torch.allclose(out[1], hidden[1, 2:5].mean(0))
    assert torch.allclose(out[2], hidden[2, 4])  # a one-token text keeps its only token
    weighted = build_pooling("weighted_mean", 4, {"skip_first_token": True})(hidden, pooling, attention)
    assert torch.allclose(weighted[0], (hidden[0, 1:4] * torch.tensor([1.0, 2.0, 3.0])[:, None] / 6).sum(0))
    # when the first position is an instruction token (not pooled), nothing changes
    _, instructed, attention2 = batch()
    assert torch.allclose(mean(hidden[:2], instructed, attention2), build_pooling("mean", 4)(hidden[:2], instructed, attention2))
