"""TrainConfig: shipped configs load; bad keys, types and combinations give clear ConfigErrors."""

from __future__ import annotations

from pathlib import Path

import pytest
from reference.corpus import base_config

from babelora.config import build_dataclass
from babelora.errors import ConfigError
from babelora.methods.registry import build_recipe
from babelora.train.config import TrainConfig, load_train_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr'"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("max_steps=abc", "max_steps: expected an integer"),
        ("epochs=2", "exactly one of max_steps and epochs"),
        ("optim.grad_accum=0", "optim.grad_accum must be >= 1"),
        ("data.batch_seconds=-1", "data.batch_seconds must be > 0"),
        ("data.languages=[de,xx]", "unknown language code 'xx'"),
        ("data.budget=tokens", "must be one of"),
        ("mixed_precision=fp8", "must be one of"),
        ("checkpoint.keep_last=0", "checkpoint.keep_last must be >= 1"),
    ],
)
def test_bad_values(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_train_config(CONFIGS / "lora_tiny.yaml", [override])


def test_keep_best_needs_evaluated_checkpoints():
    with pytest.raises(ConfigError, match="save_every a multiple of eval.every"):
        load_train_config(CONFIGS / "lora_tiny.yaml", ["eval.every=0"])
    with pytest.raises(ConfigError, match="save_every a multiple of eval.every"):
        load_train_config(CONFIGS / "lora_tiny.yaml", ["eval.every=150"])
    load_train_config(CONFIGS / "lora_tiny.yaml", ["eval.every=0", "checkpoint.keep_best=0"])


def test_recipe_errors(tmp_path):
    cfg = build_dataclass(
        TrainConfig, base_config(tmp_path, tmp_path / "run", **{"recipe.name": "nope"})
    )
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; known: .*full.*lora"):
        build_recipe(cfg)
    cfg = build_dataclass(
        TrainConfig, base_config(tmp_path, tmp_path / "run", **{"recipe.params": {"rnk": 4}})
    )
    with pytest.raises(ConfigError, match="unknown config key 'recipe.params.rnk'"):
        build_recipe(cfg)
    cfg = build_dataclass(
        TrainConfig,
        base_config(tmp_path, tmp_path / "run", **{"recipe.params": {"parts": ["middle"]}}),
    )
    with pytest.raises(ConfigError, match="recipe.params.parts"):
        build_recipe(cfg)


def test_balanced_dev_subset():
    from babelora.data.manifest import Utterance
    from babelora.train.data import balanced_subset

    utts = [Utterance(f"de{i}", "/a.wav", 1.0, "de") for i in range(5)]
    utts += [Utterance(f"fr{i}", "/a.wav", 1.0, "fr") for i in range(2)]
    utts += [Utterance("st0", "/a.wav", 1.0, "de", "st", "x", "y", "en")]
    assert [u.id for u in balanced_subset(utts, 5)] == ["de0", "fr0", "st0", "de1", "fr1"]
    assert len(balanced_subset(utts, 100)) == len(utts)
