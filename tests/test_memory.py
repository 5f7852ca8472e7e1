"""Encoding memory: feed-forward blocks run over row chunks at inference (same embeddings), the heap handed back."""

import copy
import os

import pytest
import torch

from l2v import Encoder
from l2v.memory import CPU_FEED_FORWARD_ROWS, chunk_feed_forward, release_free_memory
from l2v.precision import decoder_layers


def _calls(module: torch.nn.Module, counts: list) -> None:
    module.register_forward_hook(lambda m, args, out: counts.append(args[0].shape[-2]))


def test_a_cpu_load_chunks_feed_forward_blocks_and_keeps_every_embedding(tiny_llama_folder, sentences):
    encoder = Encoder.from_pretrained(str(tiny_llama_folder))
    blocks = [layer.mlp for layer in decoder_layers(encoder.model)]
    assert all(b.l2v_chunk_rows == CPU_FEED_FORWARD_ROWS for b in blocks)
    assert all(type(b).__name__ == type(b).__mro__[1].__name__ for b in blocks)  # a subclass under the same name
    keys = set(encoder.model.state_dict())
    whole = encoder.encode(sentences, batch_size=8)
    assert chunk_feed_forward(encoder.model, 3) == len(blocks)  # 3 rows: every batch of these texts is cut
    encoder.encode(sentences, batch_size=8)  # each block's first chunked call is checked against a whole call
    assert all(b.l2v_chunk_checked and b.l2v_chunk_rows == 3 for b in blocks)
    rows: list = []
    _calls(blocks[0].gate_proj, rows)
    chunked = encoder.encode(sentences, batch_size=8)
    assert rows and max(rows) <= 3 and len(rows) > 1
    assert set(encoder.model.state_dict()) == keys
    assert torch.allclose(torch.as_tensor(chunked), torch.as_tensor(whole), atol=1e-6)
    # a text alone and inside a chunked batch: the same embedding
    alone = encoder.encode([sentences[1]])
    assert torch.allclose(torch.as_tensor(alone[0]), torch.as_tensor(chunked[1]), atol=1e-6)

    # training (autograd on) runs the block whole; switching off restores the plain forward
    rows.clear()
    features = encoder.collate(encoder.tokenize(sentences[:3]))
    encoder(features).sum().backward()
    assert len(rows) == 1 and rows[0] > 3
    assert chunk_feed_forward(encoder.model, None) == len(blocks) and blocks[0].l2v_chunk_rows == 0
    rows.clear()
    with torch.inference_mode():
        encoder(features)
    assert len(rows) == 1


def test_chunked_blocks_copy_and_fall_back_for_blocks_that_return_more_than_states():
    class Router(torch.nn.Module):  # a mixture-of-experts style block: (states, router logits)
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, hidden):
            return self.proj(hidden), hidden.sum(-1)

    class Layer(torch.nn.Module):
        def __init__(self, block):
            super().__init__()
            self.mlp = block

    class Model(torch.nn.Module):
        def __init__(self, block_class):
            super().__init__()
            self.layers = torch.nn.ModuleList([Layer(block_class()) for _ in range(2)])

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 6)

        def forward(self, hidden):
            return self.proj(hidden)

    routed = Model(Router)
    assert chunk_feed_forward(routed, 2) == 2
    x = torch.randn(3, 5, 4)
    with torch.no_grad():
        states, logits = routed.layers[0].mlp(x)
    assert states.shape == (3, 5, 4) and logits.shape == (3, 5)
    assert routed.layers[0].mlp.l2v_chunk_rows == 0  # run whole from then on

    plain = Model(Plain)
    chunk_feed_forward(plain, 4)
    twin = copy.deepcopy(plain)  # the copy's blocks chunk with their own weights
    with torch.no_grad():
        twin.layers[0].mlp.proj.weight.add_(1.0)
        got, expected = twin.layers[0].mlp(x), torch.nn.functional.linear(x, twin.layers[0].mlp.proj.weight, twin.layers[0].mlp.proj.bias)
    assert got.shape == (3, 5, 6)
    assert torch.allclose(got, expected, atol=1e-6)
    assert isinstance(twin.layers[0].mlp, Plain)
    assert chunk_feed_forward(torch.nn.Linear(2, 2), 4) == 0  # no decoder layers: nothing to do


def test_release_free_memory_trims_on_glibc():
    import platform

    assert release_free_memory() == (platform.libc_ver()[0] == "glibc")


def test_chunked_blocks_pickle_take_keywords_and_run_whole_when_positions_interact(tiny_llama_folder):
    import pickle

    encoder = Encoder.from_pretrained(str(tiny_llama_folder))
    chunk_feed_forward(encoder.model, 2)
    x = torch.randn(2, 5, encoder.model.config.hidden_size)
    block = decoder_layers(encoder.model)[0].mlp
    with torch.inference_mode():
        expected = block(x)
        copied = pickle.loads(pickle.dumps(encoder.model))
        again = decoder_layers(copied)[0].mlp
        assert type(again) is type(block) and again.l2v_chunk_rows == 2
        assert torch.allclose(again(x), expected, atol=1e-6)

    class Shift(torch.nn.Module):  # mixes positions: chunks differ from the whole call
        def forward(self, hidden):
            return torch.roll(hidden, 1, dims=-2)

    class KeywordOnly(torch.nn.Module):
        def forward(self, hidden_states):
            return hidden_states * 2

    for block_class in (Shift, KeywordOnly):
        model = torch.nn.Module()
        model.layers = torch.nn.ModuleList([torch.nn.Module(), torch.nn.Module()])
        for layer in model.layers:
            layer.mlp = block_class()
        chunk_feed_forward(model, 3)
        with torch.no_grad():
            mlp = model.layers[0].mlp
            if block_class is Shift:
                assert torch.equal(mlp(x), torch.roll(x, 1, dims=-2)) and mlp.l2v_chunk_rows == 0
                assert torch.equal(mlp(x), torch.roll(x, 1, dims=-2))
            else:
                assert torch.equal(mlp(hidden_states=x), x * 2) and torch.equal(mlp(x), x * 2)


@pytest.mark.parametrize("rows", [1, 7])
def test_chunks_cover_every_row_once(rows):
    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = torch.nn.Linear(3, 2)

    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([Layer(), Layer()])
    chunk_feed_forward(model, rows)
    x = torch.randn(2, 9, 3)
    with torch.inference_mode():
        assert torch.allclose(model.layers[1].mlp(x), torch.nn.functional.linear(x, model.layers[1].mlp.weight, model.layers[1].mlp.bias), atol=1e-6)


def test_a_cpu_forward_holds_at_most_the_cap_and_the_embeddings_do_not_move(tiny_llama_folder, sentences, monkeypatch):
    import l2v.encoder

    encoder = Encoder.from_pretrained(str(tiny_llama_folder))
    assert l2v.encoder.CPU_FORWARD_TOKENS == 4096
    texts = sentences * 3
    whole = encoder.encode(texts, batch_size=64, max_tokens_per_batch=None)
    sizes: list = []
    encoder.model.register_forward_hook(lambda m, args, kwargs, out: sizes.append(kwargs["input_ids"].numel())
                                        if "input_ids" in kwargs else None, with_kwargs=True)
    monkeypatch.setattr(l2v.encoder, "CPU_FORWARD_TOKENS", 24)
    capped = encoder.encode(texts, batch_size=64, max_tokens_per_batch=None)
    longest = max(len(t.input_ids) for t in encoder.tokenize(texts))
    assert sizes and len(sizes) > 1 and max(sizes) <= max(24, longest)
    assert torch.allclose(torch.as_tensor(capped), torch.as_tensor(whole), atol=1e-6)
    sizes.clear()
    monkeypatch.setattr(l2v.encoder, "CPU_FORWARD_TOKENS", None)  # no cap: the caller's budget alone
    encoder.encode(texts, batch_size=64, max_tokens_per_batch=None)
    assert len(sizes) == 1


def test_the_kernel_caches_are_bounded_unless_the_environment_says_otherwise(monkeypatch, tmp_path, tiny_llama_folder):
    """``bound_kernel_caches`` sets both caches' capacity where unset and keeps a user's setting; the commands that
    encode call it before loading anything (the libraries read it at their first bfloat16 product)."""
    from typer.testing import CliRunner

    from l2v.cli import app
    from l2v.memory import KERNEL_CACHES, bound_kernel_caches

    for name in KERNEL_CACHES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "500")
    assert bound_kernel_caches(8) == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "8", "LRU_CACHE_CAPACITY": "500"}
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="entries must be a whole number"):
            bound_kernel_caches(bad)
    for name in KERNEL_CACHES:
        monkeypatch.delenv(name, raising=False)
    texts = tmp_path / "texts.txt"
    texts.write_text("a short text\nanother one\n")
    result = CliRunner().invoke(app, ["encode", "-m", str(tiny_llama_folder), "-i", str(texts), "-o", str(tmp_path / "v.npy"),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert {name: os.environ.get(name) for name in KERNEL_CACHES} == {name: "16" for name in KERNEL_CACHES}
