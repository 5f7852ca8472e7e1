"""The shipped configs parse (unknown keys would be errors) and point at the built-in model."""

from pathlib import Path

import pytest

from l2v.train.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_parses(path):
    config = load_config(path)
    assert config.model == "smollm2-135m" and config.stage in path.name
    assert config.lora.r == 16 and config.lora.alpha == 32 and config.lora.dropout == 0.05


def test_there_are_configs_for_each_unsupervised_stage():
    assert {p.name for p in CONFIGS} >= {"smollm2-mntp.yaml", "smollm2-simcse.yaml"}
