"""Mixed precision (``dtype="mixed"``): float32 up to the massive-activation layer, bfloat16 products after, checked
against float32 at load; generic over decoder families; ``auto`` picks it only with native bfloat16."""

import os

import numpy as np
import pytest
import torch

from l2v import Encoder
from l2v.precision import CALIBRATION, decoder_layers, massive_activation_layer
from tiny_models import FAMILIES, save_tiny_causal_lm

TEXTS = ["a man is playing a guitar .", "the cat sits on the mat while the dog sleeps", "paris", "what is the capital of france ?"]


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "gemma2"] + ["gemma2"])
def test_mixed_keeps_the_embedding_for_every_family(tmp_path, family):
    folder = save_tiny_causal_lm(tmp_path / family, family, attn_implementation="eager" if family == "gemma2" else "sdpa")
    reference = Encoder.from_pretrained(str(folder))
    mixed = Encoder.from_pretrained(str(folder), dtype="mixed")
    layers = decoder_layers(mixed.model)
    assert len(layers) == reference.model.config.num_hidden_layers
    a, b = reference.encode(TEXTS + CALIBRATION[:8]), mixed.encode(TEXTS + CALIBRATION[:8])
    plan = mixed.precision
    assert plan is not None  # random tiny models have no massive activations: bfloat16 from an early layer passes
    assert 0 <= plan.float32_layers < plan.layers and plan.calibration_cosine >= 0.9999
    assert not np.array_equal(a, b)  # it really computed differently
    assert (a * b).sum(-1).min() >= 0.999
    # the bfloat16 layers store bfloat16 linear weights; the float32 layers and the norms stay float32
    for index, layer in enumerate(layers):
        dtypes = {m.weight.dtype for m in layer.modules() if isinstance(m, torch.nn.Linear)}
        assert dtypes == ({torch.float32} if index < plan.float32_layers else {torch.bfloat16})
    assert mixed.model.get_input_embeddings().weight.dtype == torch.float32
    assert mixed.dtype_choice == "mixed" and "bfloat16 products" in mixed.precision_description
    # the same text gives the same embedding alone or in a batch (the mixed forward is batch-independent too)
    alone = mixed.encode(TEXTS[:1])
    assert np.allclose(alone[0], b[0], atol=2e-3)


def test_mixed_really_computes_in_bfloat16_after_the_split(tiny_llama_folder, monkeypatch):
    """Not float32 in disguise: the bfloat16 layers' linear outputs are bfloat16, the float32 layers' float32, and
    attention runs in float32 in both."""
    import l2v.precision as precision

    monkeypatch.setattr(precision, "massive_activation_layer", lambda states, mask: 1)  # as if layer 0 formed them
    mixed = Encoder.from_pretrained(str(tiny_llama_folder), dtype="mixed")
    assert mixed.precision.float32_layers == 1
    attention_dtypes = []
    original = precision._float32_sdpa

    def spy(module, query, key, value, attention_mask, **kwargs):
        output = original(module, query, key, value, attention_mask, **kwargs)
        attention_dtypes.append(output[0].dtype)
        return output

    from transformers import AttentionInterface

    AttentionInterface.register(precision.FLOAT32_ATTENTION, spy)
    seen = {}
    hooks = [layer.mlp.down_proj.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, o.dtype))
             for k, layer in enumerate(decoder_layers(mixed.model))]
    try:
        mixed.encode(TEXTS[:2])
    finally:
        for hook in hooks:
            hook.remove()
        AttentionInterface.register(precision.FLOAT32_ATTENTION, original)
    assert seen == {0: torch.float32, 1: torch.bfloat16}
    assert attention_dtypes and set(attention_dtypes) == {torch.float32}


def test_no_split_passing_the_check_stays_float32_with_a_warning(tiny_llama_folder, monkeypatch):
    import l2v.precision as precision

    monkeypatch.setattr(precision, "CHECK_COSINE", 1.5)  # unreachable
    monkeypatch.setattr(precision.calibrate, "__defaults__", (None, 1.5))
    with pytest.warns(UserWarning, match="encoding in float32"):
        mixed = Encoder.from_pretrained(str(tiny_llama_folder), dtype="mixed")
    reference = Encoder.from_pretrained(str(tiny_llama_folder))
    assert mixed.precision is None and mixed.dtype_choice == "float32"
    assert np.array_equal(mixed.encode(TEXTS), reference.encode(TEXTS))
    assert all(p.dtype == torch.float32 for p in mixed.model.parameters())


def test_auto_picks_mixed_only_with_native_bfloat16(tiny_llama_folder, monkeypatch):
    import l2v.precision as precision

    monkeypatch.setattr(precision, "native_bfloat16", lambda device: False)
    assert Encoder.from_pretrained(str(tiny_llama_folder), dtype="auto").dtype_choice == "float32"
    monkeypatch.setattr(precision, "native_bfloat16", lambda device: True)
    encoder = Encoder.from_pretrained(str(tiny_llama_folder), dtype="auto")
    assert encoder.dtype_choice == "mixed" and encoder.precision_description.startswith("mixed precision")


def test_massive_activation_layer_is_the_largest_jump():
    mask = torch.ones(1, 4)
    states = [torch.ones(1, 4, 3) * v for v in (1.0, 2.0, 3.0, 40.0, 41.0, 1.0)]  # the last: after the final norm
    assert massive_activation_layer(states, mask) == 3
    states[2][0, 0, 0] = 1000.0  # the first position (an attention sink) is left out
    assert massive_activation_layer(states, mask) == 3
    flat = [torch.ones(1, 4, 3) * v for v in (1.0, 2.0, 3.0, 4.0, 50.0)]  # no jump of 4x before the final norm
    assert massive_activation_layer(flat, mask) == 0
    # embeddings -> first layer is a change of scale, not massive activations: never the split (SmolLM2 encoders:
    # 1.0 -> 35 there, then the real jump, 133 -> 3111, at layer 12)
    scale = [torch.ones(1, 4, 3) * v for v in (1.0, 35.0, 40.0, 130.0, 3100.0, 3120.0, 7000.0)]
    assert massive_activation_layer(scale, mask) == 4
    assert massive_activation_layer([torch.ones(1, 4, 3) * v for v in (1.0, 35.0, 40.0, 41.0, 9.0)], mask) == 0


def test_eval_fingerprint_tells_mixed_from_float32(tiny_llama_folder, tmp_path):
    from l2v.evaluate.models import EvalModel

    plain = EvalModel.load(str(tiny_llama_folder), cache_dir=tmp_path)
    mixed = EvalModel.load(str(tiny_llama_folder), cache_dir=tmp_path, dtype="mixed")
    assert mixed.backend.precision is not None and plain.fingerprint != mixed.fingerprint


def test_unknown_dtype_names_the_choices(tiny_llama_folder):
    from l2v.errors import L2VError

    with pytest.raises(L2VError, match="auto, mixed, float32"):
        Encoder.from_pretrained(str(tiny_llama_folder), dtype="int3")


def _mapped_ranges(path) -> list[tuple[int, int]]:
    """The address ranges at which this process maps ``path`` (Linux /proc/self/maps)."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == str(path):
                low, high = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((low, high))
    return ranges


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
def test_mixed_weights_do_not_keep_the_mapped_weights_file(tiny_llama_folder):
    """transformers maps the safetensors file and float32 parameters are views of it; after mixed's cast the float32
    parameters get their own memory so the file's pages (half of them now unused) can go."""
    weights_file = (tiny_llama_folder / "model.safetensors").resolve()

    def in_file(encoder) -> int:
        ranges = _mapped_ranges(weights_file)
        return sum(any(low <= p.data_ptr() < high for low, high in ranges) for p in encoder.model.parameters())

    plain = Encoder.from_pretrained(str(tiny_llama_folder))
    assert in_file(plain) > 0  # the premise: a float32 load leaves parameters in the mapped file
    mixed = Encoder.from_pretrained(str(tiny_llama_folder), dtype="mixed")
    assert in_file(mixed) == 0
    tied = mixed.model.get_input_embeddings().weight
    assert tied.dtype == torch.float32 and tied.is_leaf
    a, b = plain.encode(TEXTS), mixed.encode(TEXTS)
    assert (a * b).sum(-1).min() >= 0.999
