"""A merge never writes where it reads: an output.path that is, lies inside or contains the base
or an input is refused (with output.overwrite it would replace or delete that input)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from babelora.cli.main import main
from babelora.errors import MergeError
from babelora.merging import merge


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def models(zoo, tmp_path) -> dict[str, Path]:
    """Private copies of base/, de/, fr/ under tmp/models (a refused merge must not touch them,
    and a broken check must not destroy the shared zoo)."""
    root = tmp_path / "models"
    return {name: shutil.copytree(zoo[name], root / name) for name in ("base", "de", "fr")}


def _recipe(models: dict[str, Path], out: Path, **extra) -> dict:
    return {
        "base": str(models["base"]),
        "inputs": [{"path": str(models[x]), "name": x} for x in ("de", "fr")],
        "method": "task_arithmetic",
        "progress": False,
        "output": {"path": str(out), "overwrite": True},
        **extra,
    }


@pytest.mark.parametrize(
    "where, words",
    [
        (lambda m: m["de"], "is input 'de'"),
        (lambda m: m["base"], "is the base"),
        (lambda m: m["fr"] / "merged", "lies inside input 'fr'"),
        (lambda m: m["de"].parent, "contains the base"),  # models/ holds all three
        (lambda m: m["de"] / ".." / "de", "is input 'de'"),  # spelled another way
    ],
    ids=["input", "base", "inside-input", "contains", "dotdot"],
)
def test_output_on_an_input_is_refused_and_the_input_kept(models, where, words):
    before = {name: _hashes(path) for name, path in models.items()}
    out = where(models)
    with pytest.raises(MergeError, match="choose an output.path outside") as err:
        merge(_recipe(models, out))
    assert words in str(err.value) and str(out) in str(err.value)
    assert {name: _hashes(path) for name, path in models.items()} == before
    assert not (models["fr"] / "merged").exists()


def test_output_through_a_symlink_to_an_input_is_refused(models, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(models["de"], target_is_directory=True)
    before = _hashes(models["de"])
    with pytest.raises(MergeError, match="is input 'de'"):
        merge(_recipe(models, link))
    assert _hashes(models["de"]) == before and link.is_symlink()


def test_expand_into_the_merged_model_is_refused(models, tmp_path):
    merged = merge(_recipe(models, tmp_path / "m", inputs=[{"path": str(models["de"])}])).output
    before = _hashes(merged)
    expand = {"merged": str(merged), "num_merged": 1}
    recipe = _recipe(models, merged, inputs=[{"path": str(models["fr"])}], expand=expand)
    with pytest.raises(MergeError, match="is expand.merged"):
        merge(recipe)
    assert _hashes(merged) == before


def test_a_sibling_with_a_common_prefix_is_fine(models, tmp_path):
    out = models["de"].parent / "de2"  # starts with models/de, is not inside it
    assert merge(_recipe(models, out)).output == out
    assert (out / "model.safetensors").is_file()


def test_cli_refuses_with_one_line(models, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(models, models["fr"])), encoding="utf-8")
    assert main(["merge", str(path), "--dry-run"]) == 2  # a dry run checks it too
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert line.startswith("babelora merge: error: output.path ") and "is input 'fr'" in line
