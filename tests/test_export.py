"""Export: a sentence-transformers folder and a plain Hugging Face folder that reload to the same embeddings."""

import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from typer.testing import CliRunner

from l2v import Encoder, L2VError
from l2v.cli import app
from l2v.export import export

TEXTS = ["a man is playing a guitar", "paris", "she plays the piano every evening", "what is the capital of france ?"]
INSTRUCTION = "retrieve the capital of the country"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.fixture(scope="module")
def encoder_with_adapter(tiny_llama_folder, tmp_path_factory):
    """An encoder with an unmerged LoRA adapter that changes the output (so merging is actually tested)."""
    import torch
    from peft import LoraConfig, get_peft_model

    encoder = Encoder.from_pretrained(str(tiny_llama_folder))
    encoder.model = get_peft_model(encoder.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in encoder.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("adapted") / "encoder"
    encoder.save(folder)
    return Encoder.from_pretrained(str(folder))


def test_sentence_transformers_folder_gives_the_l2v_embeddings_with_prompts(encoder_with_adapter, tmp_path):
    encoder = encoder_with_adapter
    plain = Encoder.from_pretrained(str(encoder.config.base_model)).encode(TEXTS)
    reference = encoder.encode(TEXTS)
    assert cosines(plain, reference).min() < 0.999  # the adapter matters, so the export must carry it
    folder = export(encoder, tmp_path / "st", prompts={"query": INSTRUCTION}, default_prompt_name=None)
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    assert not (folder / "adapter").exists()  # merged, not shipped beside
    model = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)
    assert cosines(model.encode(TEXTS), reference).min() >= 0.99999
    assert np.allclose(np.linalg.norm(model.encode(TEXTS), axis=1), 1.0, atol=1e-5)  # as `l2v encode`
    with_prompt = model.encode(TEXTS, prompt_name="query")
    assert cosines(with_prompt, encoder.encode(TEXTS, instruction=INSTRUCTION)).min() >= 0.99999
    assert cosines(model.encode(TEXTS, prompt=INSTRUCTION), with_prompt).min() >= 0.99999
    assert model.get_embedding_dimension() == 32
    assert model.similarity_fn_name == "cosine"


def test_default_prompt_and_resave(encoder_with_adapter, tmp_path):
    folder = export(encoder_with_adapter, tmp_path / "st", prompts={"query": INSTRUCTION, "doc": ""}, default_prompt_name="query")
    model = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)
    expected = encoder_with_adapter.encode(TEXTS, instruction=INSTRUCTION)
    assert cosines(model.encode(TEXTS), expected).min() >= 0.99999
    model.save(str(tmp_path / "resaved"))
    again = SentenceTransformer(str(tmp_path / "resaved"), device="cpu", trust_remote_code=True)
    assert cosines(again.encode(TEXTS, prompt_name="doc"), encoder_with_adapter.encode(TEXTS)).min() >= 0.99999


def test_hf_folder_reloads_with_from_pretrained(encoder_with_adapter, tmp_path):
    from transformers import AutoModel

    folder = export(encoder_with_adapter, tmp_path / "hf", format="hf")
    assert not (folder / "modules.json").exists()
    config = json.loads((folder / "l2v_config.json").read_text())
    assert config["base_model"] == "." and config["bidirectional"] is True and config["adapters"] is None
    reloaded = Encoder.from_pretrained(str(folder))
    assert cosines(reloaded.encode(TEXTS), encoder_with_adapter.encode(TEXTS)).min() >= 0.99999
    backbone = AutoModel.from_pretrained(str(folder))  # plain transformers reads the merged weights
    assert json.loads((folder / "config.json").read_text()).get("is_causal") is not False  # the original config
    assert type(backbone).__name__ == "LlamaModel"


def test_export_cli_and_bad_input(tiny_llama_folder, tmp_path):
    out = tmp_path / "st"
    result = run("export", tiny_llama_folder, "--output", out, "--prompt", f"query={INSTRUCTION}")
    assert result.exit_code == 0, result.output
    model = SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    expected = Encoder.from_pretrained(str(tiny_llama_folder)).encode(TEXTS, instruction=INSTRUCTION)
    assert cosines(model.encode(TEXTS, prompt_name="query"), expected).min() >= 0.99999
    again = run("export", tiny_llama_folder, "--output", out)
    assert again.exit_code == 2 and "already exists" in again.output
    assert run("export", tiny_llama_folder, "-o", tmp_path / "x", "--format", "onnx").exit_code == 2
    bad_prompt = run("export", tiny_llama_folder, "-o", tmp_path / "y", "--prompt", "query")
    assert bad_prompt.exit_code == 2 and "NAME=INSTRUCTION" in bad_prompt.output
    with pytest.raises(L2VError, match="no place for them"):
        export(Encoder.from_pretrained(str(tiny_llama_folder)), tmp_path / "w", format="hf", prompts={"query": "q"})
    with pytest.raises(L2VError, match="default prompt 'doc'"):
        export(Encoder.from_pretrained(str(tiny_llama_folder)), tmp_path / "z", prompts={"query": "q"}, default_prompt_name="doc")
    assert not (tmp_path / "z").exists()
