"""The shipped configs parse (unknown keys would be errors) and point at the built-in model."""

from pathlib import Path

import pytest
import yaml

from l2v.train.config import load_config
from l2v.train.convert import load_convert_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
RECIPES = [p for p in CONFIGS if "stages" in yaml.safe_load(p.read_text())]
STAGE_CONFIGS = [p for p in CONFIGS if p not in RECIPES]


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda p: p.name)
def test_shipped_stage_config_parses(path):
    config = load_config(path)
    assert config.model == "smollm2-135m" and config.stage in path.name
    assert config.lora.r == 16 and config.lora.alpha == 32 and config.lora.dropout == 0.05


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_parses(path):
    plan = load_convert_config(path)
    assert list(plan["stages"])[0] == "mntp"
    assert all(c.model == "smollm2-135m" for c in plan["stages"].values())
    mntp = plan["stages"]["mntp"]
    for stage, config in plan["stages"].items():
        if stage != "mntp":
            assert config.adapters == [str(Path(mntp.output) / "encoder" / "adapter")]


def test_the_two_recipes_share_one_mntp_run():
    """Same folder and the same settings: the second recipe reuses the first one's MNTP (the trainer would refuse
    a shared folder with other settings, so they must be equal)."""
    unsup, sup = (load_convert_config(p)["stages"]["mntp"] for p in sorted(RECIPES, key=lambda p: "unsup" not in p.name))
    assert unsup == sup and unsup.output == "runs/smollm2-l2v-mntp"


def test_there_are_configs_for_each_stage_and_recipe():
    names = {p.name for p in CONFIGS}
    assert names >= {"smollm2-mntp.yaml", "smollm2-simcse.yaml", "smollm2-supervised.yaml",
                     "smollm2-l2v-unsup.yaml", "smollm2-l2v-sup.yaml"}
