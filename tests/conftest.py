import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import save_tiny_causal_lm  # noqa: E402


SHARED_DATA = Path(os.environ.get("L2V_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def require_shared_data(relative: str) -> Path:
    """``SHARED_DATA / relative``; skipped where the shared data is absent, a failure under CI=true."""
    path = SHARED_DATA / relative
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"shared data not found at {path} (set L2V_DATA)")
        pytest.skip(f"shared data not found at {path} (set L2V_DATA)")
    return path


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory) -> Path:
    return save_tiny_causal_lm(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_llama_folder):
    from l2v import Encoder

    return Encoder.from_pretrained(str(tiny_llama_folder))


SENTENCES = [
    "a man is playing a guitar",
    "the cat sits on the mat while the dog sleeps",
    "what is the capital of france ?",
    "paris",
    "scientists discovered a new species of frog in the rainforest",
    "",
    "she plays the piano every evening",
]


@pytest.fixture
def sentences():
    return list(SENTENCES)
