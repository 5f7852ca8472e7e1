import json
import os
import random

import numpy as np
import pytest
import torch

from l2v import Encoder, L2VError


def test_embedding_does_not_depend_on_batch(tiny_encoder, sentences):
    together = tiny_encoder.encode(sentences, batch_size=3)
    alone = np.stack([tiny_encoder.encode([s])[0] for s in sentences])
    shuffled_order = list(range(len(sentences)))
    random.Random(0).shuffle(shuffled_order)
    shuffled = tiny_encoder.encode([sentences[i] for i in shuffled_order], batch_size=2)
    assert np.abs(together - alone).max() < 1e-4
    assert np.abs(shuffled - together[shuffled_order]).max() < 1e-4
    try:
        tiny_encoder.padding_side = "left"
        left = tiny_encoder.encode(sentences, batch_size=4)
    finally:
        tiny_encoder.padding_side = "right"
    assert np.abs(left - together).max() < 1e-4


def test_token_budget_batches_do_not_change_results(tiny_encoder, sentences):
    budget = tiny_encoder.encode(sentences, batch_size=64, max_tokens_per_batch=12)
    assert np.abs(budget - tiny_encoder.encode(sentences)).max() < 1e-4


def test_rows_come_back_in_input_order(tiny_encoder, sentences):
    forward = tiny_encoder.encode(sentences)
    backward = tiny_encoder.encode(sentences[::-1])
    assert np.abs(forward[::-1] - backward).max() < 1e-5
    assert forward.shape == (len(sentences), 32) and forward.dtype == np.float32
    assert np.allclose(np.linalg.norm(forward, axis=1), 1.0, atol=1e-5)


def test_single_string_gives_one_vector(tiny_encoder):
    assert tiny_encoder.encode("a man is playing a guitar").shape == (32,)


def test_instruction_tokens_are_attended_but_not_pooled(tiny_encoder):
    instruction, text = "retrieve documents that answer the question", "what is the capital of france ?"
    [item] = tiny_encoder.tokenize([(instruction, text)])
    text_ids = tiny_encoder.tokenizer(text, add_special_tokens=False)["input_ids"]
    instruction_ids = tiny_encoder.tokenizer(instruction, add_special_tokens=False)["input_ids"]
    assert item.input_ids == instruction_ids + text_ids
    assert item.pooling_mask == [0] * len(instruction_ids) + [1] * len(text_ids)
    with_pair = tiny_encoder.encode([(instruction, text)])
    with_option = tiny_encoder.encode([text], instruction=instruction)
    without = tiny_encoder.encode([text])
    assert np.abs(with_pair - with_option).max() < 1e-6
    assert np.abs(with_pair - without).max() > 1e-3  # the text tokens attended to the instruction


def test_instruction_is_excluded_from_mean(tiny_encoder):
    instruction, text = "classify the sentiment of the review", "this movie was wonderful"
    features = tiny_encoder.collate(tiny_encoder.tokenize([(instruction, text)]))
    with torch.no_grad():
        states = tiny_encoder(features, pool=False)[0]
    n_text = int(features["pooling_mask"].sum())
    expected = torch.nn.functional.normalize(states[-n_text:].mean(0), dim=0)
    got = tiny_encoder.encode([(instruction, text)])[0]
    assert np.abs(got - expected.numpy()).max() < 1e-5


def test_long_texts_are_truncated_and_counted(tiny_llama_folder):
    encoder = Encoder.from_pretrained(str(tiny_llama_folder), max_length=6)
    items = encoder.tokenize(["a man is playing a guitar on the stage", "paris"])
    assert len(items[0].input_ids) == 6 and items[0].truncated and not items[1].truncated
    _, stats = encoder.encode(["a man is playing a guitar on the stage", "paris", "the cat sits on the mat while"],
                              return_stats=True)
    assert stats.truncated == 2
    with pytest.raises(L2VError, match="instruction takes"):
        encoder.tokenize([("retrieve documents that answer the question", "paris")])


def test_output_precisions_and_matryoshka(tiny_encoder, sentences):
    full = tiny_encoder.encode(sentences)
    unnormalised = tiny_encoder.encode(sentences, normalize=False)
    assert tiny_encoder.encode(sentences, precision="float16").dtype == np.float16
    int8 = tiny_encoder.encode(sentences, precision="int8")
    assert int8.dtype == np.int8
    assert np.abs((int8.astype(np.float32) + 128) / 255 * 2 - 1 - full).max() < 2 / 255 + 1e-6
    ubinary = tiny_encoder.encode(sentences, precision="ubinary")
    assert ubinary.shape == (len(sentences), 4) and ubinary.dtype == np.uint8
    assert np.array_equal(np.unpackbits(ubinary, axis=1).astype(bool), full > 0)
    binary = tiny_encoder.encode(sentences, precision="binary")
    assert np.array_equal(binary.astype(np.int16) + 128, ubinary.astype(np.int16))
    small = tiny_encoder.encode(sentences, truncate_dim=8)
    expected = unnormalised[:, :8] / np.linalg.norm(unnormalised[:, :8], axis=1, keepdims=True)
    assert small.shape == (len(sentences), 8) and np.abs(small - expected).max() < 1e-5
    as_torch = tiny_encoder.encode(sentences, convert_to="torch")
    assert isinstance(as_torch, torch.Tensor) and np.abs(as_torch.numpy() - full).max() == 0
    with pytest.raises(L2VError, match="quantization_ranges"):
        tiny_encoder.encode(sentences, precision="int8", normalize=False)
    with pytest.raises(L2VError, match="unknown precision"):
        tiny_encoder.encode(sentences, precision="int4")
    with pytest.raises(L2VError, match="truncate_dim"):
        tiny_encoder.encode(sentences, truncate_dim=33)


def test_bad_items_are_named(tiny_encoder):
    with pytest.raises(L2VError, match="input 1 must be a string"):
        tiny_encoder.encode(["fine", 3])
    with pytest.raises(L2VError, match="input 0"):
        tiny_encoder.encode([("only one part",)])
    with pytest.raises(L2VError, match="instruction must be a string"):
        tiny_encoder.encode(["fine"], instruction=5)
    assert tiny_encoder.encode([]).shape == (0, 32)


def test_eos_and_bos_pooling_add_their_token(tiny_llama_folder):
    eos = Encoder.from_pretrained(str(tiny_llama_folder), pooling="eos_token")
    bos = Encoder.from_pretrained(str(tiny_llama_folder), pooling="bos_token")
    assert eos.tokenize(["paris"])[0].input_ids[-1] == eos.tokenizer.eos_token_id
    assert bos.tokenize(["paris"])[0].input_ids[0] == bos.tokenizer.bos_token_id
    for encoder in (eos, bos):
        out = encoder.encode(["paris", "a man is playing a guitar"])
        assert np.isfinite(out).all()
        assert np.abs(out[1] - encoder.encode(["a man is playing a guitar"])[0]).max() < 1e-4


def test_bfloat16_compute_stays_close(tiny_llama_folder, sentences):
    full = Encoder.from_pretrained(str(tiny_llama_folder)).encode(sentences)
    half = Encoder.from_pretrained(str(tiny_llama_folder), dtype="bfloat16").encode(sentences)
    assert half.dtype == np.float32
    assert (full * half).sum(1).min() > 0.99


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _no_pickles(folder):
    return not [f for f in _files(folder) if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]


def test_save_and_load_round_trip(tiny_encoder, sentences, tmp_path):
    folder = tiny_encoder.save(tmp_path / "enc")
    config = json.loads((folder / "l2v_config.json").read_text())
    assert config["pooling"] == "mean" and config["bidirectional"] is True and config["max_length"] == 512
    assert os.path.isabs(config["base_model"]) and config["adapters"] is None
    again = Encoder.from_pretrained(str(folder))
    assert np.abs(again.encode(sentences) - tiny_encoder.encode(sentences)).max() == 0
    with pytest.raises(FileExistsError):
        tiny_encoder.save(tmp_path / "enc")
    full = tiny_encoder.save(tmp_path / "full", save_base_weights=True)
    assert "model.safetensors" in _files(full) and _no_pickles(full)
    assert np.abs(Encoder.from_pretrained(str(full)).encode(sentences) - tiny_encoder.encode(sentences)).max() == 0


def test_latent_attention_weights_are_saved(tiny_llama_folder, sentences, tmp_path):
    encoder = Encoder.from_pretrained(str(tiny_llama_folder), pooling="latent_attention", pooling_options={"num_latents": 8, "num_heads": 4})
    folder = encoder.save(tmp_path / "latent")
    assert "pooling.safetensors" in _files(folder)
    again = Encoder.from_pretrained(str(folder))
    assert again.config.pooling_options == {"num_latents": 8, "num_heads": 4}
    assert np.abs(again.encode(sentences) - encoder.encode(sentences)).max() == 0


def _with_random_lora(encoder):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    encoder.model = get_peft_model(encoder.model, config)
    return encoder


def test_lora_adapters_save_load_and_merge(tiny_llama_folder, sentences, tmp_path):
    base = Encoder.from_pretrained(str(tiny_llama_folder)).encode(sentences)
    encoder = _with_random_lora(Encoder.from_pretrained(str(tiny_llama_folder)))
    expected = encoder.encode(sentences)
    assert np.abs(expected - base).max() > 1e-3  # the adapters do something
    folder = encoder.save(tmp_path / "lora")
    assert "adapter/adapter_model.safetensors" in _files(folder) and _no_pickles(folder)
    assert "model.safetensors" not in _files(folder)  # only the adapters, the base is referenced
    assert np.abs(Encoder.from_pretrained(str(folder)).encode(sentences) - expected).max() < 1e-5
    merged_on_load = Encoder.from_pretrained(str(folder), merge_adapters=True)
    assert not hasattr(merged_on_load.model, "peft_config")
    assert np.abs(merged_on_load.encode(sentences) - expected).max() < 1e-5
    merged = encoder.save(tmp_path / "merged", merge_adapters=True)
    assert json.loads((merged / "l2v_config.json").read_text())["base_model"] == "."
    assert "model.safetensors" in _files(merged) and not (merged / "adapter").exists()
    assert np.abs(Encoder.from_pretrained(str(merged)).encode(sentences) - expected).max() < 1e-5
    assert hasattr(encoder.model, "peft_config")  # saving merged did not merge the live model
    separate = Encoder.from_pretrained(str(tiny_llama_folder), adapters=str(folder / "adapter"))
    assert np.abs(separate.encode(sentences) - expected).max() < 1e-5


def test_pickled_adapters_are_refused(tiny_llama_folder, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.bin").write_bytes(b"not really")
    with pytest.raises(L2VError, match="safetensors only"):
        Encoder.from_pretrained(str(tiny_llama_folder), adapters=str(folder))


def test_causal_encoder_is_causal(tiny_llama_folder):
    causal = Encoder.from_pretrained(str(tiny_llama_folder), bidirectional=False)
    info = causal.info()
    assert info["bidirectional_requested"] is False and info["bidirectional_verified"] is False
    assert Encoder.from_pretrained(str(tiny_llama_folder)).info()["bidirectional_verified"] is True


def test_full_weight_save_keeps_the_original_config(tiny_encoder, tmp_path):
    folder = tiny_encoder.save(tmp_path / "full", save_base_weights=True)
    config = json.loads((folder / "config.json").read_text())
    assert "_l2v_original_is_causal" not in config and config.get("is_causal", True) is True
    assert tiny_encoder.info()["bidirectional_verified"] is True  # the live model is unchanged


def test_a_different_pooling_on_a_saved_encoder_does_not_inherit_its_weights(tiny_llama_folder, sentences, tmp_path):
    latent = Encoder.from_pretrained(str(tiny_llama_folder), pooling="latent_attention", pooling_options={"num_latents": 8, "num_heads": 4})
    folder = latent.save(tmp_path / "latent")
    mean = Encoder.from_pretrained(str(folder), pooling="mean")
    assert mean.config.pooling_options == {}
    assert np.abs(mean.encode(sentences) - Encoder.from_pretrained(str(tiny_llama_folder)).encode(sentences)).max() < 1e-6
    with pytest.warns(UserWarning, match="random until trained"):
        Encoder.from_pretrained(str(tiny_llama_folder), pooling="latent_attention")


def test_repeated_texts_are_encoded_once(tiny_encoder, sentences):
    repeated = sentences + sentences[:3] + [("classify the sentiment of the review", sentences[0])]
    out, stats = tiny_encoder.encode(repeated, batch_size=2, return_stats=True)
    assert stats.encoded == len(sentences) + 1  # the instruction makes the last one distinct
    assert np.array_equal(out[len(sentences):len(sentences) + 3], out[:3])
    assert np.abs(out[-1] - out[0]).max() > 1e-4
    assert np.abs(out[: len(sentences)] - tiny_encoder.encode(sentences)).max() < 1e-6
