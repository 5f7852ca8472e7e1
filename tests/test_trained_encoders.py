"""The trained built-in encoders shipped with l2v (slow: loads SmolLM2 + the shipped LoRA adapters)."""

import json

import numpy as np
import pytest
from conftest import require_shared_data
from scipy.stats import spearmanr

from l2v import Encoder
from l2v.registry import TRAINED_ENCODERS, trained_encoder_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stsb_pairs():
    path = require_shared_data("sts/stsb_test.tsv")
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:301]]
    return [r[0] for r in rows], [r[1] for r in rows], np.array([float(r[2]) for r in rows])


def spearman(encoder, pairs) -> float:
    first, second, gold = pairs
    a, b = encoder.encode(first), encoder.encode(second)
    return float(spearmanr((a * b).sum(1), gold).correlation)


@pytest.mark.parametrize("name", sorted(TRAINED_ENCODERS))
def test_shipped_encoder_loads_offline_and_beats_the_untrained_model(name, stsb_pairs):
    folder = trained_encoder_folder(name)
    config = json.loads((folder / "l2v_config.json").read_text())
    assert config["base_model"] == "smollm2-135m" and config["adapters"] and config["merged_adapters"]
    for adapter in [config["adapters"], *config["merged_adapters"]]:
        assert (folder / adapter / "adapter_model.safetensors").exists()
        assert not list((folder / adapter).glob("*.bin"))
    encoder = Encoder.from_pretrained(name)
    assert encoder.info()["bidirectional_verified"] is True
    trained = spearman(encoder, stsb_pairs)
    untrained = spearman(Encoder.from_pretrained("smollm2-135m"), stsb_pairs)
    assert trained > untrained + 0.2, (trained, untrained)
    assert json.loads((folder / "provenance.json").read_text())["recipe"] == TRAINED_ENCODERS[name].recipe
