"""The streaming merge driver on tiny Whisper checkpoints and PEFT adapters."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import pytest
import torch
from lors_reference import lors_reference
from merging_zoo import LANGS, LORA_CONVENTIONS, peft_merged_state, read

from babelora.merging import merge, plan
from babelora.merging.driver import execute
from babelora.merging.ops import MERGE_METHODS, WHISPER_LORS_TARGETS
from babelora.merging.recipe import match_any

IDENTITY_PARAMS = {  # settings under which one input at weight 1 must come back unchanged
    "average": {},
    "task_arithmetic": {},
    "ties": {"density": 1.0},
    "dare": {"drop_rate": 0.0},
    "dare_ties": {"drop_rate": 0.0},
    "magnitude_prune": {"density": 1.0},
    "svd_lowrank": {"rank": 10_000},
    "lors": {"density": 1.0},
}
ORDER_PARAMS = {  # non-trivial settings for the order-invariance test
    "average": {},
    "task_arithmetic": {},
    "ties": {"density": 0.3},
    "dare": {"drop_rate": 0.5},
    "dare_ties": {"drop_rate": 0.5},
    "magnitude_prune": {"density": 0.2},
    "svd_lowrank": {},
    "lors": {},
}


def recipe(zoo, inputs, out: Path | None, method="task_arithmetic", **extra):
    data = {
        "base": str(zoo["base"]),
        "inputs": [i if isinstance(i, dict) else {"path": str(zoo[i]), "name": i} for i in inputs],
        "method": method,
        "progress": False,
        "output": {"path": str(out) if out else None},
    }
    for key, value in extra.items():
        if key == "output":
            data["output"].update(value)
        else:
            data[key] = value
    return data


def test_registry_and_tests_cover_the_same_methods():
    assert set(MERGE_METHODS) == set(IDENTITY_PARAMS) == set(ORDER_PARAMS)


@pytest.mark.parametrize("method", sorted(IDENTITY_PARAMS))
def test_one_full_input_at_weight_one_is_returned_exactly(zoo, tmp_path, method):
    result = merge(recipe(zoo, ["de"], tmp_path / "out", method, params=IDENTITY_PARAMS[method]))
    out, expected = read(result.output), read(zoo["de"])
    assert out.keys() == expected.keys()
    for key in expected:
        assert torch.equal(out[key], expected[key]), key


@pytest.mark.parametrize("convention", sorted(LORA_CONVENTIONS))
def test_one_lora_input_equals_peft_merge_and_unload(zoo, tmp_path, convention):
    name = f"lora_{convention}"
    result = merge(recipe(zoo, [name], tmp_path / "out", "lors", params={"density": 1.0}))
    out = read(result.output)
    oracle = peft_merged_state(zoo["model"], zoo[name])
    changed = 0
    for key, value in out.items():
        # we add scale*B@A in float64 and round once; PEFT rounds B@A and the sum in float32,
        # about 1 ulp each (the random embedding LoRA reaches |delta| ~ 19)
        torch.testing.assert_close(value, oracle[key], rtol=1e-6, atol=1e-6, msg=key)
        changed += not torch.equal(value, read(zoo["base"])[key])
    assert changed > 0


def test_lora_output_reloads_in_peft_with_the_same_update(zoo, tmp_path):
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    result = merge(
        recipe(zoo, ["lora_de", "lora_fr"], tmp_path / "out", output={"kind": "lora", "rank": 8})
    )
    folder = result.output
    assert (folder / "adapter_config.json").is_file()
    lora = result.report["lora"]
    assert lora["modules"] == 2 * 3 * 2 + 2 * 2  # q, v in self+cross (decoder) + fc1, 2+2 layers
    assert lora["max_error"] < 1e-6  # rank 8 = 4 + 4 holds the sum of two rank-4 updates
    # the re-factorised adapter gives the same model as the full-output merge
    full = read(merge(recipe(zoo, ["lora_de", "lora_fr"], tmp_path / "full")).output)
    base = WhisperForConditionalGeneration.from_pretrained(zoo["base"])
    merged = PeftModel.from_pretrained(base, folder).merge_and_unload().state_dict()
    for key, value in full.items():
        torch.testing.assert_close(merged[key], value, rtol=0, atol=1e-5, msg=key)


def test_lora_output_reports_truncation_error(zoo, tmp_path):
    result = merge(
        recipe(zoo, ["lora_de", "lora_fr"], tmp_path / "out", output={"kind": "lora", "rank": 2})
    )
    errors = [s["lora_error"] for s in result.report["tensors"].values() if "lora_error" in s]
    assert errors and all(0.05 < e < 1 for e in errors)


def test_lora_inputs_are_merged_on_delta_w(zoo, tmp_path):
    """TIES on two adapters equals TIES on their full updates B@A * scale (PEFT's delta)."""
    from peft.utils import merge_utils as peft_ops

    result = merge(
        recipe(zoo, ["lora_de", "lora_fr"], tmp_path / "out", "ties", params={"density": 0.3})
    )
    out, base = read(result.output), read(zoo["base"])
    key = "model.encoder.layers.0.fc1.weight"
    merged = [peft_merged_state(zoo["model"], zoo[f"lora_{x}"]) for x in ("de", "fr")]
    deltas = [m[key] - base[key] for m in merged]
    expected = base[key] + peft_ops.ties(deltas, torch.ones(2), 0.3)
    torch.testing.assert_close(out[key], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", sorted(ORDER_PARAMS))
def test_order_of_inputs_does_not_matter(zoo, tmp_path, method):
    params = ORDER_PARAMS[method]
    one = read(merge(recipe(zoo, ["de", "fr", "es"], tmp_path / "a", method, params=params)).output)
    two = read(merge(recipe(zoo, ["es", "de", "fr"], tmp_path / "b", method, params=params)).output)
    for key in one:
        # float sums in another order: 1e-6 bounds the fp32 rounding of the float64 result
        torch.testing.assert_close(one[key], two[key], rtol=0, atol=1e-6, msg=key)


def test_lors_matches_the_dense_reference_end_to_end(zoo, tmp_path):
    result = merge(recipe(zoo, list(LANGS), tmp_path / "out", "lors"))
    out, base = read(result.output), read(zoo["base"])
    models = [read(zoo[x]) for x in LANGS]
    checked = 0
    for key, value in base.items():
        deltas = [m[key].double() - value.double() for m in models]
        if match_any(key, WHISPER_LORS_TARGETS):
            merged = lors_reference(deltas, [1.0] * 3, rank=1, density=0.2, scale=1 / 3)
            checked += 1
        else:
            merged = sum(deltas) / 3
        torch.testing.assert_close(out[key], (value.double() + merged).float(), rtol=0, atol=1e-6)
    assert checked == 2 * (4 + 2) + 2 * (4 + 4 + 2)  # encoder: self-attn + fc; decoder: + cross
    ranks = {s.get("rank") for s in result.report["tensors"].values() if s.get("targeted")}
    assert ranks == {1}  # max(1, int(0.01 * d_model 64))


def test_output_loads_in_transformers(zoo, tmp_path):
    from transformers import WhisperForConditionalGeneration

    result = merge(recipe(zoo, ["de", "fr"], tmp_path / "out", "ties", output={"dtype": "float16"}))
    assert (result.output / "config.json").is_file()
    assert read(result.output)["model.encoder.layers.0.fc1.weight"].dtype == torch.float16
    model = WhisperForConditionalGeneration.from_pretrained(result.output, dtype="auto")
    assert model.model.encoder.layers[0].fc1.weight.dtype == torch.float16
    assert torch.equal(model.proj_out.weight, model.model.decoder.embed_tokens.weight)


def test_include_exclude_and_overrides(zoo, tmp_path):
    from peft.utils import merge_utils as peft_ops

    result = merge(
        recipe(
            zoo,
            ["de", "fr"],
            tmp_path / "out",
            "ties",
            params={"density": 0.5},
            exclude=["*.fc2.weight"],
            overrides=[
                {
                    "match": ["model.decoder.*"],
                    "method": "task_arithmetic",
                    "params": {"scale": 0.5},
                },  # noqa: E501
                {"match": ["re:model\\.encoder\\.layers\\.1\\..*"], "weights": {"fr": 0.0}},
            ],
        )
    )
    out, base, de, fr = (read(x) for x in (result.output, zoo["base"], zoo["de"], zoo["fr"]))
    key = "model.encoder.layers.0.fc2.weight"
    assert torch.equal(out[key], base[key])  # excluded: copied from the base
    key = "model.decoder.layers.0.fc1.weight"
    expected = base[key].double() + 0.5 * ((de[key].double() - base[key]) + (fr[key] - base[key]))
    torch.testing.assert_close(out[key], expected.float(), rtol=0, atol=1e-6)
    assert result.report["tensors"][key]["method"] == "task_arithmetic"
    # fr weighted 0 here; under PEFT's TIES convention it still votes and counts in the mean
    key = "model.encoder.layers.1.self_attn.q_proj.bias"
    taus = [de[key] - base[key], fr[key] - base[key]]
    expected = base[key] + peft_ops.ties(taus, torch.tensor([1.0, 0.0]), 0.5)
    torch.testing.assert_close(out[key], expected, rtol=0, atol=1e-6)


def test_dare_repeats_with_a_seed(zoo, tmp_path):
    def run(name, seed):
        r = recipe(zoo, ["de", "fr"], tmp_path / name, "dare", seed=seed)
        return (merge(r).output / "model.safetensors").read_bytes()

    assert run("a", 1) == run("b", 1)
    assert run("a2", 1) != run("c", 2)


def test_driver_holds_one_tensor_per_input(zoo, tmp_path):
    """Instrument every source: when a tensor is read, no earlier tensor from it is alive."""
    dry = merge(recipe(zoo, ["de", "fr", "lora_es"], tmp_path / "o", "lors"), dry_run=True)
    merge_plan = plan(dry.plan.recipe)
    peaks: dict[str, int] = {}

    def instrument(source, label):
        live = set()
        get = source.get

        def counted_get(key):
            tensor = get(key)
            peaks[label] = max(peaks.get(label, 0), len(live) + 1)
            token = object()
            live.add(token)
            weakref.finalize(tensor, live.discard, token)
            return tensor

        source.get = counted_get

    instrument(merge_plan.base, "base")
    for inp in merge_plan.inputs:
        instrument(inp.source, inp.label)
    execute(merge_plan)
    assert peaks["base"] == peaks["de"] == peaks["fr"] == 1
    assert 1 <= peaks["lora_es"] <= 2  # a LoRA module is its A and its B


def test_language_expansion_equals_a_fresh_merge(zoo, tmp_path):
    first = merge(recipe(zoo, ["de", "fr"], tmp_path / "two", "lors")).output
    assert json.loads((first / "merge_report.json").read_text())["num_languages"] == 2
    expand = {"merged": str(first), "renormalize": True}  # num_merged read from the report
    grown = merge(recipe(zoo, ["es"], tmp_path / "three", "lors", expand=expand))
    fresh = merge(recipe(zoo, ["de", "fr", "es"], tmp_path / "fresh", "lors"))
    for key, value in read(fresh.output).items():
        torch.testing.assert_close(read(grown.output)[key], value, rtol=0, atol=2e-6, msg=key)
    assert grown.report["num_languages"] == 3
    # without renormalising, the new language gets lambda = 1/N of the old merge
    added = merge(
        recipe(zoo, ["es"], tmp_path / "added", "task_arithmetic", expand={"merged": str(first)})
    )
    key = "model.encoder.layers.0.fc1.bias"
    base, two, es = read(zoo["base"])[key], read(first)[key], read(zoo["es"])[key]
    expected = two.double() + 0.5 * (es.double() - base.double())
    torch.testing.assert_close(read(added.output)[key], expected.float(), rtol=0, atol=1e-6)


def test_expansion_rejects_non_separable_methods(zoo, tmp_path):
    first = merge(recipe(zoo, ["de"], tmp_path / "one")).output
    from babelora.errors import MergeError

    with pytest.raises(MergeError, match="not separable"):
        merge(recipe(zoo, ["fr"], tmp_path / "x", "ties", expand={"merged": str(first)}))


def test_dry_run_writes_nothing(zoo, tmp_path):
    result = merge(recipe(zoo, ["de", "lora_fr"], tmp_path / "out", "lors"), dry_run=True)
    assert result.output is None and not (tmp_path / "out").exists()
    summary = result.plan.summary()
    assert "method lors" in summary and "rank [1]" in summary and "input lora_fr: lora" in summary


def test_python_state_dict_sources(zoo, tmp_path):
    state = {k: v + 1 for k, v in read(zoo["base"]).items() if v.is_floating_point()}
    state.update({k: v for k, v in read(zoo["base"]).items() if not v.is_floating_point()})
    result = merge(
        recipe(zoo, [{"name": "mine"}], tmp_path / "out"),
        sources={"mine": state, "base": read(zoo["base"])},
    )
    out = read(result.output)
    for key, value in state.items():
        assert torch.equal(out[key], value), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_matches_cpu(zoo, tmp_path):
    # DARE's draws come from per-device generators, so only deterministic methods are compared
    cpu = read(merge(recipe(zoo, list(LANGS), tmp_path / "cpu", "lors")).output)
    gpu = read(merge(recipe(zoo, list(LANGS), tmp_path / "gpu", "lors", device="cuda")).output)
    for key, value in cpu.items():
        torch.testing.assert_close(gpu[key], value, rtol=0, atol=1e-6, msg=key)


def test_expansion_keeps_excluded_tensors_and_accepts_a_lora_merge(zoo, tmp_path):
    first = merge(recipe(zoo, ["de", "fr"], tmp_path / "two")).output
    expand = {"merged": str(first), "num_merged": 2}
    result = merge(recipe(zoo, ["es"], tmp_path / "x", expand=expand, exclude=["*.fc1.*"]))
    out = read(result.output)
    key = "model.encoder.layers.0.fc1.weight"
    assert torch.equal(out[key], read(first)[key])  # excluded: the merged model's value
    # a merged LoRA adapter (rank 8 holds two rank-4 updates exactly) expands like a full merge
    as_lora = {"kind": "lora", "rank": 8}
    lora = merge(recipe(zoo, ["lora_de", "lora_fr"], tmp_path / "l2", output=as_lora))
    expand = {"merged": str(lora.output), "renormalize": True}
    grown = read(merge(recipe(zoo, ["lora_es"], tmp_path / "l3", expand=expand)).output)
    fresh = read(merge(recipe(zoo, ["lora_de", "lora_fr", "lora_es"], tmp_path / "f3")).output)
    for key, value in fresh.items():
        torch.testing.assert_close(grown[key], value, rtol=0, atol=1e-6, msg=key)


def test_average_with_zero_total_weight_is_a_clear_error(zoo, tmp_path):
    from babelora.errors import MergeError

    inputs = [{"path": str(zoo["de"]), "name": "de", "weight": 0.0}]
    with pytest.raises(MergeError, match="weights sum to 0"):
        merge(recipe(zoo, inputs, tmp_path / "out", "average"))


def test_a_part_frozen_in_every_input_is_copied_without_the_maths(zoo, tmp_path, monkeypatch):
    """Zero task vectors everywhere (an encoder frozen in every fine-tune): the method is not run
    there (no SVD of zero matrices) and the base comes back exactly; other tensors still merge."""
    import dataclasses

    from safetensors.torch import save_file

    base = read(zoo["base"])
    inputs = []
    for lang in ("de", "fr"):
        state = {k: base[k].clone() if ".encoder." in k else v for k, v in read(zoo[lang]).items()}
        (tmp_path / lang).mkdir()
        save_file(state, str(tmp_path / lang / "model.safetensors"))
        inputs.append({"path": str(tmp_path / lang), "name": lang})
    seen: list[str] = []
    spec = MERGE_METHODS["lors"]

    def spy(taus, weights, params, ctx):
        seen.append(ctx.name)
        return spec.combine(taus, weights, params, ctx)

    monkeypatch.setitem(MERGE_METHODS, "lors", dataclasses.replace(spec, combine=spy))
    result = merge(recipe(zoo, inputs, tmp_path / "out", "lors"))
    out = read(result.output)
    encoder = [k for k in base if ".encoder." in k and base[k].is_floating_point()]
    assert encoder and not any(".encoder." in k for k in seen)
    assert any(".decoder." in k for k in seen)
    for key in encoder:
        assert torch.equal(out[key], base[key]), key
        assert result.report["tensors"][key]["zero_task_vectors"] is True
