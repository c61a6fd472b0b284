"""The merge checks a LoRA's base signature (babelora_base.json) against the recipe's base
weights, not only the base's name, and writes one beside the LoRA it outputs."""

from __future__ import annotations

import json
import shutil

import pytest
from merging_zoo import finetuned, write_recipe

from babelora.cli.main import main
from babelora.errors import MergeError
from babelora.merging import merge
from babelora.models.base_check import (
    BASE_FILE,
    BaseMismatchError,
    check_base,
    write_base_signature,
)


def recipe(zoo, inputs, out) -> dict:
    return {
        "base": str(zoo["base"]),
        "inputs": [{"path": str(p), "name": f"in{i}"} for i, p in enumerate(inputs)],
        "progress": False,
        "output": {"path": str(out)},
    }


@pytest.fixture
def signed(zoo, tmp_path):
    """zoo's German LoRA as babelora exports it: its base's signature and name beside it."""
    folder = shutil.copytree(zoo["lora_de"], tmp_path / "lora")
    write_base_signature(folder, zoo["model"], "zoo-base")
    return folder


@pytest.fixture
def perturbed_base(zoo, tmp_path):
    """zoo's German full fine-tune (the base + 5 % noise) in a folder named like the base, so
    that the old name check passed it."""
    return shutil.copytree(zoo["de"], tmp_path / "copy" / zoo["base"].name)


def test_lora_onto_a_perturbed_base_is_refused(zoo, signed, perturbed_base, tmp_path):
    out = tmp_path / "out"
    data = recipe(zoo, [signed], out) | {"base": str(perturbed_base)}
    with pytest.raises(MergeError) as err:
        merge(data)
    msg = str(err.value)
    assert isinstance(err.value, BaseMismatchError) and "\n" not in msg
    assert msg.startswith("input 'in0': ") and "trained on zoo-base, not on" in msg
    assert str(perturbed_base) in msg and "sampled values differ" in msg
    assert "check_base: false" in msg
    assert not out.exists()
    data["inputs"][0]["check_base"] = False  # the explicit escape
    assert merge(data).output == out


def test_the_signature_decides_over_the_name(zoo, signed, tmp_path):
    """A signature that matches is enough: the adapter's base name need not match the path."""
    config = json.loads((signed / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "somewhere/else"
    (signed / "adapter_config.json").write_text(json.dumps(config))
    merge(recipe(zoo, [signed], tmp_path / "out"))


def test_cli_flag_ignores_the_mismatch(zoo, signed, perturbed_base, tmp_path, capsys):
    data = recipe(zoo, [signed], tmp_path / "out") | {"base": str(perturbed_base)}
    path = write_recipe(tmp_path / "r.yaml", data)
    assert main(["merge", str(path)]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert line.startswith("babelora merge: error: input 'in0': ") and "zoo-base" in line
    assert main(["merge", str(path), "--ignore-base-mismatch"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_a_lora_output_carries_its_base_signature(zoo, tmp_path):
    out = tmp_path / "lora_out"
    data = recipe(zoo, [zoo["lora_de"], zoo["lora_fr"]], out) | {
        "output": {"path": str(out), "kind": "lora", "rank": 4}
    }
    merge(data)
    assert (out / BASE_FILE).is_file()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(zoo["base"])
    check_base(out, zoo["model"])
    with pytest.raises(BaseMismatchError):
        check_base(out, finetuned(zoo["model"], seed=3))
