"""Shared set-up for the benchmarks: the model folders, the official llm2vec interpreter, the STS-B sentences."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
RESULTS = ROOT / "benchmarks" / "results"
DATA = Path(os.environ.get("L2V_DATA", ROOT.parent / "shared" / "data"))


def official_python() -> str:
    candidate = os.environ.get("L2V_OFFICIAL_PYTHON") or str(ROOT / ".venv-llm2vec" / "bin" / "python")
    if not Path(candidate).exists():
        sys.exit(
            f"the official llm2vec interpreter {candidate} is missing: run `bash benchmarks/setup_official.sh` "
            "(or set L2V_OFFICIAL_PYTHON)"
        )
    return candidate


def model_folders(name: str = "smollm2-135m") -> tuple[Path, Path]:
    """(l2v's converted folder, a transformers-4.44-readable copy for the official package)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _legacy_folder import write_legacy_folder

    from l2v.registry import builtin_folder

    folder = builtin_folder(name)
    legacy = write_legacy_folder(folder, OUT / f"legacy-{folder.name}")
    return folder, legacy


def stsb_test_sentences() -> list[str]:
    path = DATA / "sts" / "stsb_test.tsv"
    if not path.exists():
        sys.exit(f"{path} not found: set L2V_DATA to the folder holding sts/stsb_test.tsv")
    rows = [line.rstrip("\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    return [r[0] for r in rows] + [r[1] for r in rows]


def run_worker(python: str, library: str, folder: Path, sentences_file: Path, out_file: Path, batch_size: int, *extra: str) -> dict:
    command = [python, str(Path(__file__).parent / "_worker.py"), library, str(folder), str(sentences_file), str(out_file), str(batch_size), *extra]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        sys.exit(f"{library} worker failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def smollm2_skeleton(folder: Path, **sizes) -> Path:
    """A random model with SmolLM2-135M's config and tokenizer but small sizes (default: hidden 36 = 9 heads of 4,
    MLP 96; ``sizes`` override any config key): the same code runs, the arithmetic is small."""
    import transformers

    from l2v.registry import builtin_folder

    source = builtin_folder("smollm2-135m")
    config = json.loads((source / "config.json").read_text())
    config.update({"hidden_size": 36, "intermediate_size": 96, "head_dim": 4, **sizes})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(folder)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((source / name).read_bytes())
    return folder
