"""Step 1, proven per family: bidirectional, padding- and batch-invariant, and exactly causal when switched off."""

import copy

import pytest
import torch
import transformers

from l2v.bidirectional import CAUSAL, AttentionState, is_bidirectional, model_inputs, set_attention
from l2v.errors import UnsupportedModelError
from l2v.pooling import MeanPooling
from tiny_models import FAMILIES, tiny_backbone, tiny_config

# transformers refuses SDPA for Gemma2 (attention logit soft-capping); test_gemma2_sdpa_is_refused_by_transformers
# keeps that exclusion honest.
CASES = [(family, impl) for family in FAMILIES for impl in ("eager", "sdpa") if not (family == "gemma2" and impl == "sdpa")]


def converted(model, bidirectional=True):
    """(model, the attention state set_attention returns for it)"""
    return model, set_attention(model, bidirectional)


def hidden(converted_model, input_ids, attention_mask):
    model, state = converted_model
    with torch.no_grad():
        return model(**model_inputs(state, model, input_ids, attention_mask)).last_hidden_state


def random_ids(length, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(10, 300, (length,), generator=generator)


def pad_batch(sequences, side):
    length = max(len(s) for s in sequences)
    ids = torch.zeros((len(sequences), length), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        span = slice(0, len(seq)) if side == "right" else slice(length - len(seq), length)
        ids[row, span] = seq
        mask[row, span] = 1
    return ids, mask


@pytest.mark.parametrize("family,impl", CASES)
def test_early_position_sees_later_token(family, impl):
    model = converted(tiny_backbone(family, impl))
    ids = random_ids(7, 1)[None]
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 17) % 300 + 10
    ones = torch.ones_like(ids)
    first = hidden(model, ids, ones)[0, 0]
    second = hidden(model, changed, ones)[0, 0]
    assert (first - second).abs().max() > 1e-3
    assert model[1].bidirectional


@pytest.mark.parametrize("family,impl", CASES)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_text_is_the_same_alone_and_padded_in_a_batch(family, impl, side, bidirectional):
    model = converted(tiny_backbone(family, impl), bidirectional)
    text = random_ids(5, 2)
    others = [random_ids(9, 3), random_ids(2, 4), random_ids(12, 5)]
    alone = hidden(model, text[None], torch.ones(1, 5, dtype=torch.long))[0]
    ids, mask = pad_batch([*others[:2], text, others[2]], side)
    states = hidden(model, ids, mask)
    row = states[2][mask[2].bool()]
    assert (row - alone).abs().max() < 1e-4
    pooling = MeanPooling()
    pooled_alone = pooling(alone[None], torch.ones(1, 5), torch.ones(1, 5))
    pooled_batch = pooling(states, mask, mask)[2]
    assert (pooled_batch - pooled_alone[0]).abs().max() < 1e-4


@pytest.mark.parametrize("family,impl", CASES)
def test_switched_off_is_exactly_the_causal_model(family, impl):
    reference = tiny_backbone(family, impl, seed=7)
    model = copy.deepcopy(reference)
    set_attention(model, True)
    state = set_attention(model, False)
    assert state == AttentionState(False, CAUSAL, model.config.model_type)
    ids = torch.stack([random_ids(8, 8), random_ids(8, 9)])
    with torch.no_grad():
        expected = reference(input_ids=ids).last_hidden_state
        actual = model(**model_inputs(state, model, ids, torch.ones_like(ids))).last_hidden_state
    assert torch.equal(expected, actual)
    assert not is_bidirectional(model, state)
    assert not is_bidirectional(reference, state)


def test_gemma2_sdpa_is_refused_by_transformers():
    with pytest.raises(ValueError, match="does not support"):
        transformers.AutoModel.from_config(tiny_config("gemma2", "sdpa"))


def test_falls_back_to_a_4d_mask_when_the_family_ignores_config(monkeypatch):
    import transformers.models.llama.modeling_llama as llama

    original = llama.create_causal_mask

    def always_causal(config, *args, **kwargs):  # a modeling file that never looks at config.is_causal
        config = copy.copy(config)
        config.is_causal = True
        return original(config, *args, **kwargs)

    monkeypatch.setattr(llama, "create_causal_mask", always_causal)
    model = converted(tiny_backbone("llama", "sdpa"))
    assert model[1].mode == "mask4d"
    assert is_bidirectional(*model)
    text = random_ids(4, 11)
    alone = hidden(model, text[None], torch.ones(1, 4, dtype=torch.long))[0]
    ids, mask = pad_batch([random_ids(9, 12), text], "left")
    assert (hidden(model, ids, mask)[1][mask[1].bool()] - alone).abs().max() < 1e-4


class HardCausalConfig(transformers.PretrainedConfig):
    model_type = "hardcausal"


class HardCausal(torch.nn.Module):
    """A model whose mixing is a running mean over the prefix, whatever mask it is given."""

    def __init__(self):
        super().__init__()
        self.config = HardCausalConfig(vocab_size=320)
        self.embed = torch.nn.Embedding(320, 8)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        states = self.embed(input_ids).cumsum(1) / torch.arange(1, input_ids.shape[1] + 1)[None, :, None]
        return transformers.modeling_outputs.BaseModelOutput(last_hidden_state=states)


def test_a_family_that_stays_causal_is_refused_by_name():
    model = HardCausal()
    with pytest.raises(UnsupportedModelError, match="hardcausal"):
        set_attention(model, True)
