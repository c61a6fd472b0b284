"""Checkpoint / adapter reading, the streaming writer, atomic output and every user error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from merging_zoo import make_lora, read, save_model, set_adapter_base, tiny_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from babelora.errors import ConfigError, MergeError
from babelora.merging import merge
from babelora.merging.io import SafetensorsWriter, atomic_folder
from babelora.merging.lora_io import LoraAdapter, factorise, relative_error
from babelora.merging.recipe import load_recipe, match_any
from babelora.merging.sources import StateDictSource, open_checkpoint


def recipe(zoo, inputs, out, method="task_arithmetic", **extra):
    data = {
        "base": str(zoo["base"]),
        "inputs": [{"path": str(p), "name": f"in{i}"} for i, p in enumerate(inputs)],
        "method": method,
        "progress": False,
        "output": {"path": str(out)},
    }
    data.update(extra)
    return data


# ----------------------------------------------------------------------------- readers/writers
def test_streaming_writer_round_trip(tmp_path):
    tensors = {
        "b": torch.randn(3, 2).to(torch.bfloat16),
        "a": torch.arange(5),
        "scalar": torch.tensor(1.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3, dtype=torch.float16),
        "mask": torch.tensor([True, False]),
    }
    path = tmp_path / "x.safetensors"
    writer = SafetensorsWriter(path, [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()])
    for key, value in tensors.items():
        writer.write(key, value)
    writer.close()
    loaded = load_file(str(path))
    assert loaded.keys() == tensors.keys()
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value), key
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"format": "pt"}  # transformers requires it


def test_writer_refuses_out_of_order_tensors(tmp_path):
    writer = SafetensorsWriter(tmp_path / "x.safetensors", [("a", (2,), torch.float32)])
    with pytest.raises(MergeError, match="header expects"):
        writer.write("b", torch.zeros(2))
    writer.abort()


def test_sharded_folder_reads_like_one_file(zoo, tmp_path):
    full = read(zoo["base"])
    keys = sorted(full)
    half = len(keys) // 2
    folder = tmp_path / "sharded"
    folder.mkdir()
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: full[k] for k in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    source = open_checkpoint(folder)
    assert sorted(source.names()) == keys
    for key in keys:
        assert torch.equal(source.get(key), full[key])
        assert source.meta(key).shape == tuple(full[key].shape)


def test_state_dict_source_drops_tied_duplicates():
    model = tiny_model(0)
    source = StateDictSource(model.state_dict())
    assert "proj_out.weight" not in source.names()  # tied to the decoder's embed_tokens
    assert "model.decoder.embed_tokens.weight" in source.names()


def test_factorise_is_exact_at_full_rank_and_reports_the_tail():
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(12, 3, generator=gen, dtype=torch.float64) @ torch.randn(
        3, 9, generator=gen, dtype=torch.float64
    )
    b, a = factorise(delta, 5)  # rank 3 matrix, rank 5 requested: zero-padded
    assert b.shape == (12, 5) and a.shape == (5, 9)
    assert relative_error(delta, b, a) < 1e-12
    b, a = factorise(delta, 1)
    s = torch.linalg.svdvals(delta)
    expected = float(s[1:].square().sum().sqrt() / s.square().sum().sqrt())
    assert relative_error(delta, b, a) == pytest.approx(expected, rel=1e-9)


def test_patterns_glob_and_regex():
    name = "model.encoder.layers.0.fc1.weight"
    assert match_any(name, ["*.fc1.weight"])
    assert match_any(name, [r"re:.*\.fc[12]\.weight"])
    assert not match_any(name, ["fc1"])  # full-name match, not a substring
    assert not match_any(name, [r"re:fc1"])


def test_atomic_folder_leaves_the_target_untouched_on_error(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert (target / "keep.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind
    with atomic_folder(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_merge_failure_keeps_an_existing_output(zoo, tmp_path, monkeypatch):
    out = tmp_path / "out"
    merge(recipe(zoo, [zoo["de"]], out))
    before = (out / "model.safetensors").read_bytes()
    from babelora.merging import inputs

    def broken(self, key, base):
        raise MergeError(f"cannot read {key}")

    monkeypatch.setattr(inputs.FullInput, "task_vector", broken)
    with pytest.raises(MergeError, match="cannot read"):
        merge(recipe(zoo, [zoo["fr"]], out, output={"path": str(out), "overwrite": True}))
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_partial_input_leaves_missing_tensors_at_the_base(zoo, tmp_path):
    de = read(zoo["de"])
    key = "model.encoder.layers.0.fc1.weight"
    save_file({key: de[key]}, str(tmp_path / "trainable.safetensors"))
    spec = {"path": str(tmp_path / "trainable.safetensors"), "name": "de", "partial": True}
    result = merge(recipe(zoo, [], tmp_path / "out") | {"inputs": [spec]})
    out, base = read(result.output), read(zoo["base"])
    for name, value in out.items():
        assert torch.equal(value, de[key] if name == key else base[name]), name


# ----------------------------------------------------------------------------- errors
def test_different_architecture(zoo, tmp_path):
    other = save_model(tiny_model(0, d_model=32), tmp_path / "small")
    with pytest.raises(MergeError, match=r"d_model=32 .*different architectures"):
        merge(recipe(zoo, [zoo["de"], other], tmp_path / "out"))


def test_shape_mismatch_names_the_tensor(zoo, tmp_path):
    state = read(zoo["de"])
    state["model.encoder.layers.0.fc1.bias"] = torch.zeros(7)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(MergeError, match=r"'model.encoder.layers.0.fc1.bias' has shape \(7,\)"):
        merge(recipe(zoo, [tmp_path / "bad.safetensors"], tmp_path / "out"))


def test_missing_and_extra_tensors(zoo, tmp_path):
    state = read(zoo["de"])
    del state["model.decoder.layer_norm.bias"]
    save_file(state, str(tmp_path / "missing.safetensors"))
    with pytest.raises(MergeError, match=r"missing tensor 'model.decoder.layer_norm.bias'"):
        merge(recipe(zoo, [tmp_path / "missing.safetensors"], tmp_path / "out"))
    # an excluded tensor need not be present
    missing = tmp_path / "missing.safetensors"
    merge(recipe(zoo, [missing], tmp_path / "ok", exclude=["*layer_norm*"]))
    state = read(zoo["de"]) | {"model.extra.weight": torch.zeros(2)}
    save_file(state, str(tmp_path / "extra.safetensors"))
    with pytest.raises(MergeError, match=r"'model.extra.weight' that the base .* lacks"):
        merge(recipe(zoo, [tmp_path / "extra.safetensors"], tmp_path / "out"))


def test_missing_files(zoo, tmp_path):
    with pytest.raises(MergeError, match="nowhere: no such file or folder"):
        merge(recipe(zoo, [tmp_path / "nowhere"], tmp_path / "out"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MergeError, match="no model.safetensors"):
        merge(recipe(zoo, [empty], tmp_path / "out"))
    with pytest.raises(MergeError, match="base '.*nobase'"):
        merge(recipe(zoo, [zoo["de"]], tmp_path / "out") | {"base": str(tmp_path / "nobase")})


def test_pickle_is_refused_unless_allowed(zoo, tmp_path):
    torch.save(read(zoo["de"]), tmp_path / "de.pt")
    with pytest.raises(MergeError, match="allow_pickle: true"):
        merge(recipe(zoo, [tmp_path / "de.pt"], tmp_path / "out"))
    result = merge(recipe(zoo, [tmp_path / "de.pt"], tmp_path / "out", allow_pickle=True))
    assert read(result.output).keys() == read(zoo["de"]).keys()
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled object, not weights
    with pytest.raises(MergeError, match="not a weights-only state dict"):
        merge(recipe(zoo, [tmp_path / "module.pt"], tmp_path / "out2", allow_pickle=True))


def test_lora_for_another_base_name(zoo, tmp_path):
    folder = shutil.copytree(zoo["lora_de"], tmp_path / "lora")
    set_adapter_base(folder, "openai/whisper-large-v3")
    with pytest.raises(MergeError, match="LoRA for base 'openai/whisper-large-v3'"):
        merge(recipe(zoo, [folder], tmp_path / "out"))
    spec = {"path": str(folder), "name": "de", "check_base": False}
    merge(recipe(zoo, [], tmp_path / "out") | {"inputs": [spec]})
    set_adapter_base(folder, "/some/where/base")  # same last path component as the base folder
    merge(recipe(zoo, [folder], tmp_path / "out2"))


def test_lora_for_another_architecture(zoo, tmp_path):
    adapter = make_lora(tiny_model(0, d_model=32), tmp_path / "lora32", seed=0)
    with pytest.raises(MergeError, match=r"has shape \(32, 32\) .* base does not match"):
        merge(recipe(zoo, [adapter], tmp_path / "out"))
    folder = shutil.copytree(zoo["lora_de"], tmp_path / "renamed")
    state = load_file(str(folder / "adapter_model.safetensors"))
    state = {k.replace("layers.0.fc1", "layers.9.fc1"): v for k, v in state.items()}
    save_file(state, str(folder / "adapter_model.safetensors"))
    with pytest.raises(MergeError, match=r"adapts 'model.decoder.layers.9.fc1.weight', which"):
        merge(recipe(zoo, [folder], tmp_path / "out"))


def test_lora_config_rank_disagreeing_with_weights(zoo, tmp_path):
    folder = shutil.copytree(zoo["lora_de"], tmp_path / "lora")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["r"] = 5
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match="rank 4 in the weights but adapter_config says r=5"):
        LoraAdapter(folder)


def test_dora_is_refused(zoo, tmp_path):
    adapter = make_lora(zoo["model"], tmp_path / "dora", seed=0, use_dora=True)
    with pytest.raises(MergeError, match="DoRA"):
        merge(recipe(zoo, [adapter], tmp_path / "out"))


def test_existing_output_needs_overwrite(zoo, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(MergeError, match="output exists; set output.overwrite"):
        merge(recipe(zoo, [zoo["de"]], tmp_path / "out"))
    output = {"path": str(tmp_path / "out"), "overwrite": True}
    merge(recipe(zoo, [zoo["de"]], tmp_path / "out", output=output))
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "change,message",
    [
        ({"method": "slerp"}, "unknown method 'slerp'"),
        ({"method": "ties", "params": {"density": 2}}, "density must be in"),
        ({"params": {"densty": 0.2}}, "unknown config key 'params.densty'"),
        ({"colour": 1}, "unknown config key 'colour'"),
        ({"inputs": []}, "at least one input"),
        ({"inputs": [{"path": "a/de"}, {"path": "b/de"}]}, "input names must be unique"),
        ({"output": {"path": "x", "kind": "lora"}}, "output.rank"),
        ({"overrides": [{"match": ["*"], "weights": {"xx": 1}}]}, "unknown inputs"),
        ({"method": "lors", "overrides": [{"match": ["*"], "params": {"rank": 0}}]}, "rank must"),
    ],
)
def test_recipe_errors(zoo, tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(recipe(zoo, [zoo["de"]], tmp_path / "out") | change)


def test_rank_needs_d_model_when_the_base_has_no_config(zoo, tmp_path):
    base_file = tmp_path / "base.safetensors"
    shutil.copy(zoo["base"] / "model.safetensors", base_file)
    data = recipe(zoo, [zoo["de"]], tmp_path / "out", "lors") | {"base": str(base_file)}
    with pytest.raises(ConfigError, match="set params.rank or d_model"):
        merge(data)
    result = merge(data | {"params": {"d_model": 300}})  # int(0.01 * 300) = 3
    ranks = {s["rank"] for s in result.report["tensors"].values() if s.get("targeted")}
    assert ranks == {3}
