"""Every YAML under configs/, in any folder (a new folder is covered without a new test), loads
with the loader its kind needs and validates: training configs with their recipe's params,
multi-stage files with each stage's config, merge recipes with their method's params."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from babelora.merging.recipe import load_recipe
from babelora.methods.registry import load_config, validate
from babelora.methods.speech_llm.stages import _stage_train_config, load_stages

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(CONFIGS.rglob("*.yaml"))


def kind(path: Path) -> str:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if "stages" in data:
        return "stages"
    if "method" in data:
        return "merge"
    return "train"


def test_configs_are_found_in_every_folder():
    folders = {p.parent.name for p in ALL}
    assert {"experts", "merge", "molora", "speech_llm", "train"} <= folders
    assert {kind(p) for p in ALL} == {"stages", "merge", "train"}


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_config_loads_and_validates(path):
    which = kind(path)
    if which == "merge":
        assert load_recipe(path).method
    elif which == "stages":
        stages = load_stages(path)
        assert stages.stages
        for stage in stages.stages:
            validate(_stage_train_config(stages, stage, path.parent, []))
    else:
        cfg = load_config(path)
        assert cfg.data.train and cfg.recipe.name
