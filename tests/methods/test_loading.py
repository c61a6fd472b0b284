"""Putting adapters on a base for decoding: the base check, and adapters that change nothing."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from babelora.adapters import LoRAConfig, export_peft, inject, language_experts, save_adapter_set
from babelora.errors import ModelLoadError
from babelora.methods.loading import apply_peft_adapter, load_expert_set
from babelora.models.base_check import BaseMismatchError, write_base_signature
from babelora.models.whisper import tiny_random_whisper

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A PEFT adapter (non-zero B) and an expert set trained on seed 0, with signatures."""
    root = tmp_path_factory.mktemp("loading")
    handle = tiny_random_whisper(seed=0)
    adapter = inject(handle.model, language_experts(LoRAConfig(rank=2), ("de", "fr")))
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.lora_B.normal_(0, 0.5)
    export_peft(adapter, root / "peft", lang="de")
    write_base_signature(root / "peft", handle.model, handle.name)
    save_adapter_set(adapter, root / "set")
    write_base_signature(root / "set", handle.model, handle.name)
    return root


def fc1(handle) -> torch.Tensor:
    return handle.model.model.encoder.layers[0].fc1.weight.detach().clone()


def test_a_peft_adapter_changes_the_weights(folders):
    handle = tiny_random_whisper(seed=0)
    before = fc1(handle)
    apply_peft_adapter(handle, folders / "peft")
    assert not torch.equal(fc1(handle), before)


def test_peft_adapter_whose_keys_match_no_module(folders, tmp_path):
    """PEFT only warns about such keys and leaves B = 0: the plain base would decode."""
    folder = shutil.copytree(folders / "peft", tmp_path / "renamed")
    state = load_file(str(folder / WEIGHTS))
    save_file({k.replace(".model.", ".whisper.", 1): v for k, v in state.items()}, folder / WEIGHTS)
    handle = tiny_random_whisper(seed=0)
    with pytest.raises(ModelLoadError) as err:
        apply_peft_adapter(handle, folder)
    msg = str(err.value)
    assert "\n" not in msg and str(folder) in msg
    assert f"{len(state)} of {len(state)} adapter tensors match no module" in msg
    assert "base_model.whisper.model.decoder" in msg and "more" in msg
    assert not any("lora" in n for n, _ in handle.model.named_parameters())  # given back bare


def test_peft_adapter_with_some_unmatched_keys(folders, tmp_path):
    folder = shutil.copytree(folders / "peft", tmp_path / "partly")
    state = load_file(str(folder / WEIGHTS))
    moved = {k for k in state if "encoder.layers.0.fc1" in k}
    renamed = {
        k.replace("layers.0.fc1", "layers.7.fc1") if k in moved else k: v for k, v in state.items()
    }
    save_file(renamed, folder / WEIGHTS)
    with pytest.raises(ModelLoadError, match=f"{len(moved)} of {len(state)} adapter tensors"):
        apply_peft_adapter(tiny_random_whisper(seed=0), folder)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_adapter_weights_are_a_clean_error(folders, tmp_path, damage):
    folder = shutil.copytree(folders / "peft", tmp_path / damage)
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(
        data[: len(data) // 2] if damage == "truncated" else b"\x00" * 64
    )
    with pytest.raises(ModelLoadError, match=f"{WEIGHTS}: cannot read safetensors"):
        apply_peft_adapter(tiny_random_whisper(seed=0), folder)


@pytest.mark.parametrize("kind", ["peft", "set"])
def test_adapters_for_another_checkpoint_are_refused(folders, kind):
    load = apply_peft_adapter if kind == "peft" else load_expert_set
    other = tiny_random_whisper(seed=1)  # same architecture, other weights
    with pytest.raises(BaseMismatchError, match=r"trained on tiny-random-whisper\(seed=0\), not"):
        load(other, folders / kind)
    load(tiny_random_whisper(seed=1), folders / kind, check=False)  # the explicit escape


def test_expert_set_with_another_d_model_signature(folders, tmp_path):
    import json

    folder = shutil.copytree(folders / "set", tmp_path / "set512")
    sig = json.loads((folder / "babelora_base.json").read_text())
    sig["shapes"]["d_model"] = 512
    (folder / "babelora_base.json").write_text(json.dumps(sig))
    with pytest.raises(BaseMismatchError, match="d_model=512 there, d_model=64 here"):
        load_expert_set(tiny_random_whisper(seed=0), folder)


def test_the_lora_recipe_exports_its_base_signature(corpus_dir, tmp_path):
    """`lora` runs export plain PEFT folders: they carry the signature too, so `--adapter`
    refuses them on another base (the base is signed before training)."""
    from reference.corpus import base_config

    from babelora.config import build_dataclass
    from babelora.methods.finetune.recipe import LoraParams, build_lora
    from babelora.train.config import TrainConfig

    cfg = build_dataclass(TrainConfig, base_config(corpus_dir, tmp_path / "run"))
    recipe = build_lora(cfg, LoraParams(rank=2))
    recipe.export(recipe.model, tmp_path / "final")
    assert (tmp_path / "final" / "babelora_base.json").is_file()
    apply_peft_adapter(tiny_random_whisper(seed=0), tmp_path / "final")
    with pytest.raises(BaseMismatchError, match=r"tiny-random-whisper\(seed=0\), not"):
        apply_peft_adapter(tiny_random_whisper(seed=1), tmp_path / "final")
