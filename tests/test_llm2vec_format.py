"""The published LLM2Vec checkpoints through l2v: layouts, the official text preparation and embeddings, errors.

The official embeddings of the replicas (tests/llm2vec_replicas.py) were computed by llm2vec 0.2.3 in its own
venv (benchmarks/llm2vec_checkpoints.py --write-fixture) and are stored in tests/data/llm2vec_replicas.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

import llm2vec_replicas as replicas
from l2v import Encoder
from l2v import llm2vec_format
from l2v.errors import L2VError, ModelNotFoundError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    return {key: replicas.build_replica(key, root) for key in replicas.REPLICAS}


@pytest.fixture(scope="module")
def official():
    embeddings = dict(np.load(replicas.FIXTURE / "official_embeddings.npz"))
    layouts = json.loads((replicas.FIXTURE / "official_layouts.json").read_text(encoding="utf-8"))
    digests = json.loads((replicas.FIXTURE / "digests.json").read_text(encoding="utf-8"))
    return embeddings, layouts, digests


@pytest.mark.parametrize("key", list(replicas.REPLICAS))
def test_replica_gives_the_official_tokens_and_embeddings(key, built, official):
    embeddings, layouts, digests = official
    paths = built[key]
    assert paths["digest"] == digests[key], "the replica rebuilt here differs from the one the fixture was made from"
    for case in [c for c in replicas.cases() if c["replica"] == key]:
        case_key = replicas.case_id(case)
        alone, batch, tokenized = replicas.l2v_outputs(paths, case)
        for index, (item, layout) in enumerate(zip(tokenized, layouts[case_key])):
            assert item.input_ids == layout["input_ids"], (case_key, index)
            assert replicas.l2v_positions(item, case["pooling"]) == replicas.official_positions(layout, case["pooling"]), (case_key, index)
        np.testing.assert_allclose(batch, alone, atol=1e-4, rtol=0)  # a text's embedding does not depend on its batch
        if not replicas.REPLICAS[key].official:
            assert case_key not in embeddings
            continue
        reference = embeddings[case_key]
        zero = np.linalg.norm(reference, axis=1) == 0
        # llm2vec gives a zero vector only for an empty, unwrapped text under weighted_mean (its weights are all 0)
        assert [replicas.TEXTS[i] for i in np.flatnonzero(zero)] == ([""] if case["pooling"] == "weighted_mean" and
                                                                     llm2vec_format.chat_wrapper(replicas.REPLICAS[key].name_or_path) is None else [])
        cosine = (reference * alone).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(alone, axis=1)).clip(min=1e-30)
        assert cosine[~zero].min() >= 0.9999, (case_key, cosine)


def test_checkpoint_loads_with_the_official_defaults(built):
    encoder = Encoder.from_pretrained(built["llama3-8b-instruct"]["mntp"])
    config = encoder.config
    assert (config.text_format, config.pooling, config.max_length, config.doc_max_length, config.skip_instruction) == \
        ("llm2vec", "mean", 512, 400, True)
    assert config.llm2vec_name_or_path == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert encoder.info()["bidirectional_verified"]
    # The MNTP adapter is merged: nothing of peft is left on a checkpoint loaded without a second adapter.
    assert not hasattr(encoder.model, "peft_config")
    short = Encoder.from_pretrained(built["llama3-8b-instruct"]["mntp"], max_length=12, doc_max_length=400)
    long_text, _ = (short.tokenize(["the cat sits on the mat while the dog sleeps in the sun all day", "paris"]))
    assert len(long_text.input_ids) == 12 and long_text.truncated
    _, stats = short.encode(["the cat sits on the mat while the dog sleeps in the sun all day", "paris"], return_stats=True)
    assert stats.truncated == 1


def test_llm2vec_config_of_the_second_adapter_is_read_and_explicit_arguments_win(built, tmp_path):
    paths = built["mistral-7b-instruct"]
    second = tmp_path / "second"
    shutil.copytree(paths["second"], second)
    (second / "llm2vec_config.json").write_text(json.dumps({"pooling_mode": "weighted_mean", "max_length": 48,
                                                            "doc_max_length": 30, "skip_instruction": False}))
    encoder = Encoder.from_pretrained(paths["mntp"], adapters=str(second))
    assert (encoder.config.pooling, encoder.config.max_length, encoder.config.doc_max_length, encoder.config.skip_instruction) == \
        ("weighted_mean", 48, 30, False)
    assert Encoder.from_pretrained(paths["mntp"], adapters=str(second), pooling="mean", max_length=40).config.max_length == 40
    item = encoder.tokenize([("Retrieve passages:", "a man is playing a guitar")])[0]
    assert all(item.pooling_mask)  # skip_instruction false: every token is pooled, as llm2vec does
    (second / "llm2vec_config.json").write_text(json.dumps({"pooling": "mean"}))
    with pytest.raises(L2VError, match="llm2vec_config.json.*unknown keys"):
        Encoder.from_pretrained(paths["mntp"], adapters=str(second))


def test_saved_checkpoint_encoder_reloads_with_the_same_embeddings(built, tmp_path):
    paths = built["llama31-8b-instruct"]
    encoder = Encoder.from_pretrained(paths["mntp"], adapters=paths["second"])
    pairs = [("Retrieve semantically similar text:", "a man is playing a guitar"), ("", "the cat sits on the mat")]
    before = encoder.encode(pairs)
    encoder.save(tmp_path / "saved")
    again = Encoder.from_pretrained(tmp_path / "saved")
    assert again.config.text_format == "llm2vec" and again.config.llm2vec_name_or_path == "meta-llama/Meta-Llama-3.1-8B-Instruct"
    np.testing.assert_allclose(again.encode(pairs), before, atol=1e-5)


def test_templates_follow_the_official_rules():
    class Words:  # a whitespace "tokenizer": one token per word
        eos_token = "</s>"

        def __call__(self, texts, add_special_tokens=True, truncation=False, max_length=None):
            single = isinstance(texts, str)
            ids = [[len(w) for w in t.split()][: max_length if truncation else None] for t in ([texts] if single else texts)]
            return {"input_ids": ids[0] if single else ids}

    tokenizer = Words()

    def whole(instruction, text, name, pooling="mean", family="llama"):
        return llm2vec_format.official_string(instruction, text, name, pooling, family, tokenizer, 512, 400)

    assert whole("Find it: ", " a b ", "meta-llama/Meta-Llama-3-8B-Instruct") == \
        ("<|start_header_id|>user<|end_header_id|>\n\nFind it:  a b<|eot_id|>", " a b<|eot_id|>")
    assert whole("", "a b", "mistralai/Mistral-7B-Instruct-v0.2") == ("[INST] a b [/INST]", "a b [/INST]")
    assert whole("I", "a", "Qwen/Qwen2-7B-Instruct", "eos_token", "qwen2") == \
        ("<|im_start|>user\nI a<|im_end|><|endoftext|>", "a<|im_end|><|endoftext|>")
    # Llama-3-8B-Instruct returns before the EOS string; other Llama checkpoints append " </s>"
    assert whole("", "a", "meta-llama/Meta-Llama-3-8B-Instruct", "eos_token")[0].endswith("<|eot_id|>")
    # the strip runs with the separator in front, so the space after it stays
    assert whole("", " a ", "meta-llama/Llama-3.2-3B-Instruct", "eos_token") == (" a </s>", " a </s>")
    assert whole("", " a ", "meta-llama/Llama-3.2-3B-Instruct") == (" a ", " a ")  # no template: not even stripped
    # documents over doc_max_length tokens are cut to int(words * doc_max_length / tokens) words
    assert llm2vec_format.cut_document("w " * 10, tokenizer, 512, 4) == "w w w w"
    # counted after max_length truncation (8 tokens): int(10 * 4 / 8) = 5 words, still over 4, so again: 4
    assert llm2vec_format.cut_document("w " * 10, tokenizer, 8, 4) == "w w w w"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        whole("", "a", "someone/unknown-model")
        whole("", "a", "someone/unknown-model")
    assert len([w for w in caught if "no chat template is known for 'someone/unknown-model'" in str(w.message)]) == 1


def test_published_short_names_cover_every_pair():
    names = llm2vec_format.PUBLISHED
    for stem in ("llama3-8b-instruct", "llama31-8b-instruct", "llama32-3b-instruct", "mistral-7b-instruct", "llama2-7b-chat",
                 "sheared-llama-1.3b"):
        sup, unsup, mntp = names[f"llm2vec-{stem}-sup"], names[f"llm2vec-{stem}-unsup"], names[f"llm2vec-{stem}-mntp"]
        assert sup.checkpoint == unsup.checkpoint == mntp.checkpoint and sup.checkpoint.endswith("-mntp")
        assert sup.adapter == f"{sup.checkpoint}-supervised" and unsup.adapter == f"{sup.checkpoint}-unsup-simcse" and mntp.adapter is None
    assert names["llm2vec-llama3-8b-instruct-sup"].checkpoint == "McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp"


def test_models_lists_the_published_pairs_with_licence_and_cache_state(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from l2v.cli import app

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if l.startswith("llm2vec-llama3-8b-instruct-sup"))
    assert "Meta Llama 3 Community License" in line and "gated" in line and "not cached" in line


def test_published_name_offline_and_uncached_is_one_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp"):
        Encoder.from_pretrained("llm2vec-mistral-7b-instruct-sup")


def test_checkpoint_whose_base_cannot_be_reached_names_the_file_and_the_base(built, tmp_path):
    folder = tmp_path / "mntp"
    shutil.copytree(built["llama2-7b-chat"]["mntp"], folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "no-such-base")
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotFoundError, match=r"adapter_config.json names base model .*no-such-base"):
        Encoder.from_pretrained(folder)


def test_adapter_for_another_base_is_a_clear_error(built, tmp_path):
    import transformers
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    wider = transformers.AutoModel.from_config(transformers.LlamaConfig(
        vocab_size=400, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    get_peft_model(wider, LoraConfig(r=4, target_modules=replicas.TARGETS)).save_pretrained(tmp_path / "wider")
    with pytest.raises(L2VError, match=r"wider: the adapter does not fit this base model .*hidden size 32"):
        Encoder.from_pretrained(built["llama3-8b-instruct"]["mntp"], adapters=str(tmp_path / "wider"))
    # Same shapes, other module names (saved from a causal-LM wrapper): peft would only warn and not apply them.
    renamed = tmp_path / "renamed"
    shutil.copytree(built["llama3-8b-instruct"]["second"], renamed)
    weights = load_file(renamed / "adapter_model.safetensors")
    save_file({k.replace("base_model.model.", "base_model.model.model."): v for k, v in weights.items()},
              str(renamed / "adapter_model.safetensors"))
    with pytest.raises(L2VError, match=r"renamed: \d+ of the adapter's \d+ weights match no module"):
        Encoder.from_pretrained(built["llama3-8b-instruct"]["mntp"], adapters=str(renamed))


def test_pickled_adapter_is_refused(built, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(built["sheared-llama-1.3b"]["second"], folder)
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(L2VError, match="pickle"):
        Encoder.from_pretrained(built["sheared-llama-1.3b"]["mntp"], adapters=str(folder))


def test_gated_base_names_the_licence_step(built, monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise OSError("You are trying to access a gated repo.\nMake sure to have access to it.")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse)
    with pytest.raises(ModelNotFoundError, match=r"is gated.*accept its licence at https://huggingface.co/.*hf auth login"):
        Encoder.from_pretrained(built["llama3-8b-instruct"]["mntp"])


def test_custom_code_is_never_run(built, tmp_path):
    folder = tmp_path / "mntp"
    shutil.copytree(built["llama3-8b-instruct"]["mntp"], folder)
    (folder / "modeling_llama_encoder.py").write_text("raise SystemExit('custom code ran')\n")
    encoder = Encoder.from_pretrained(folder)
    assert type(encoder.model).__name__ == "LlamaModel"


def test_export_llm2vec_folder(built, tmp_path):
    from l2v.export import export

    paths = built["llama31-8b-instruct"]
    encoder = Encoder.from_pretrained(paths["mntp"], adapters=paths["second"], pooling="weighted_mean")
    out = export(encoder, tmp_path / "exported", format="llm2vec")
    config = json.loads((out / "config.json").read_text())
    assert config["_name_or_path"] == "meta-llama/Meta-Llama-3.1-8B-Instruct"
    assert config["rope_theta"] == 500000.0 and config["rope_scaling"]["rope_type"] == "llama3"  # transformers 4.4x keys
    assert json.loads((out / "llm2vec_config.json").read_text()) == \
        {"pooling_mode": "weighted_mean", "max_length": 512, "doc_max_length": 400, "skip_instruction": True}
    pairs = [("Retrieve semantically similar text:", "a man is playing a guitar"), ("", "the cat sits on the mat")]
    np.testing.assert_allclose(Encoder.from_pretrained(out).encode(pairs), encoder.encode(pairs), atol=1e-5)


def test_export_llm2vec_refuses_what_llm2vec_cannot_reproduce(tiny_llama_folder, tmp_path):
    from l2v.export import export

    with pytest.raises(L2VError, match="latent_attention"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export(Encoder.from_pretrained(str(tiny_llama_folder), pooling="latent_attention"), tmp_path / "a", format="llm2vec")
    with pytest.raises(L2VError, match="causal"):
        export(Encoder.from_pretrained(str(tiny_llama_folder), bidirectional=False), tmp_path / "b", format="llm2vec")


def test_mteb_adapter_and_eval_use_the_authors_instructions(tiny_encoder):
    from types import SimpleNamespace

    from mteb.types import PromptType

    from l2v.evaluate.mteb_adapter import L2VMtebEncoder
    from l2v.evaluate.tasks import MTEB_NAMES, Task

    authors = llm2vec_format.mteb_instructions()
    assert len({k for k in authors if not k.startswith("CQADupstack")}) == 55 and len(authors) == 67  # 56 tasks, CQADupstack x 12
    adapter = L2VMtebEncoder(tiny_encoder, instructions={"SICK-R": "mine:"})
    scifact, sickr = SimpleNamespace(name="SciFact", prompt=None), SimpleNamespace(name="SICK-R", prompt=None)
    assert adapter._instruction(scifact, PromptType.query) == "Given a scientific claim, retrieve documents that support or refute the claim:"
    assert adapter._instruction(scifact, PromptType.document) == ""  # retrieval documents never get one
    assert adapter._instruction(sickr, None) == "mine:"  # the caller's entry wins
    assert L2VMtebEncoder(tiny_encoder, use_llm2vec_instructions=False)._instruction(scifact, PromptType.query) == ""
    for name, mteb_name in MTEB_NAMES.items():
        task = Task(name=name, family="sts", split="test", files=[], run=lambda m, i: {})
        assert task.instruction(True) == authors[mteb_name] and task.instruction(False) == ""


def test_cli_encode_and_eval_take_checkpoint_and_adapters(built, tmp_path):
    from typer.testing import CliRunner

    from l2v.cli import app

    paths = built["mistral-7b-instruct"]
    texts = tmp_path / "texts.txt"
    texts.write_text("a man is playing a guitar\nthe cat sits on the mat\n")
    result = CliRunner().invoke(app, ["encode", "-m", paths["mntp"], "--adapters", paths["second"], "-i", str(texts),
                                      "-o", str(tmp_path / "out.npy"), "--no-progress"])
    assert result.exit_code == 0, result.output
    expected = Encoder.from_pretrained(paths["mntp"], adapters=paths["second"]).encode(texts.read_text().splitlines())
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5)
    sts = tmp_path / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in [
        ("a man is playing a guitar", "a man plays guitar", 4.5), ("the cat sits on the mat", "the dog sleeps", 1.0),
        ("paris", "the capital of france", 4.0), ("the stock market fell", "a frog", 0.1)]))
    result = CliRunner().invoke(app, ["eval", "-m", f"{paths['mntp']}@adapters={paths['second']}", "--file", f"sts:{sts}",
                                      "-o", str(tmp_path / "eval"), "--no-cache"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "eval" / "results.json").read_text())[0]
    assert record["task"] == "sts" or record["family"] == "sts"
    result = CliRunner().invoke(app, ["encode", "-m", paths["mntp"], "--adapters", str(tmp_path / "missing"), "-i", str(texts),
                                      "-o", str(tmp_path / "out2.npy")])
    assert result.exit_code == 2 and "adapter folder not found" in result.output
