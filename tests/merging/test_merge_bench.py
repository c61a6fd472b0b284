"""Helpers of bench/merging.py: test subset, normalised performance, encoder cache, recipes."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from babelora.merging.recipe import load_recipe

BENCH = Path(__file__).resolve().parents[2] / "bench" / "merging.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_merging", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def utt(uid, lang, task, audio, target=None):
    return SimpleNamespace(id=uid, lang=lang, task=task, audio_filepath=audio, target_lang=target)


def test_subset_pairs_st_with_the_asr_audio_and_tops_up(bench):
    utts = [
        utt("de-st-b", "de", "st", "b", "en"),
        utt("de-asr-a", "de", "asr", "a"),
        utt("de-asr-b", "de", "asr", "b"),
        utt("de-asr-c", "de", "asr", "c"),
        utt("en-st-de", "en", "st", "e", "de"),  # en->X: never chosen
        utt("de-st-a", "de", "st", "a", "en"),
        utt("de-st-z", "de", "st", "z", "en"),
        utt("fr-asr-f", "fr", "asr", "f"),
    ]
    chosen = [u.id for u in bench.test_subset(utts, ["de", "fr"], 2)]
    assert chosen == ["de-asr-a", "de-asr-b", "de-st-a", "de-st-b", "fr-asr-f"]
    three = [u.id for u in bench.test_subset(utts, ["de"], 3)]
    assert three == ["de-asr-a", "de-asr-b", "de-asr-c", "de-st-a", "de-st-b", "de-st-z"]


def test_normalised_inverts_error_rates_and_skips_zero_references(bench):
    ref = {"de": {"wer": 40.0, "bleu": 20.0}, "fr": {"wer": 120.0, "bleu": 10.0}}
    got = {"de": {"wer": 70.0, "bleu": 10.0}, "fr": {"wer": 50.0, "bleu": 10.0}}
    out = bench.normalised(got, ref, ["de", "fr"], ("wer", "bleu"))
    # de: (100-70)/(100-40) = 0.5, 10/20 = 0.5; fr: WER reference accuracy 0 -> skipped, 1.0
    assert out == {"value": pytest.approx(2.0 / 3.0), "pairs": 3, "skipped": 1}
    assert bench.normalised(ref, ref, ["de"], ("wer", "bleu"))["value"] == 1.0
    assert bench.accuracy_like("cer", 130.0) == 0.0
    assert bench.averages(got, ["de", "fr"]) == {"wer": 60.0, "bleu": 10.0}


def test_bootstrap_halfwidth(bench):
    assert bench.bootstrap_halfwidth({"de": [(1, 4)] * 10, "fr": [(0, 3)] * 5}) == 0.0
    noisy = {"de": [(0, 2), (2, 2)] * 10}
    width = bench.bootstrap_halfwidth(noisy, iters=2000)
    # per-utterance rates 0 or 100, n = 20: standard error 50 / sqrt(20) = 11.2, 95 % ~ 22
    assert 15 < width < 30
    assert width == bench.bootstrap_halfwidth(noisy, iters=2000)  # seeded
    assert bench.bootstrap_halfwidth({"de": []}) is None


def test_encoder_cache_reuses_outputs_only_for_the_base_encoder(bench):
    from merging_zoo import tiny_model

    base = tiny_model(0)
    cache = bench.EncoderCache(base.get_encoder().state_dict())
    feats = torch.randn(2, 80, 64)
    expected = base.get_encoder()(feats).last_hidden_state
    model = copy.deepcopy(base)
    assert cache.attach(model)
    first = model.get_encoder()(feats).last_hidden_state
    second = model.get_encoder()(feats.clone()).last_hidden_state
    assert torch.equal(first, expected) and second is first
    assert (cache.hits, cache.misses) == (1, 1)
    other = copy.deepcopy(base)
    with torch.no_grad():
        other.get_encoder().layers[0].fc1.weight.add_(1e-3)
    assert not cache.attach(other)


def test_merge_recipes_validate(bench, tmp_path):
    settings = SimpleNamespace(seed=0)
    inputs = {"de": tmp_path / "de", "fr": tmp_path / "fr"}
    for mode in ("full", "lora"):
        for name, (method, params) in bench.METHODS.items():
            data = bench.merge_recipe(
                settings, tmp_path / "base", inputs, method, params, tmp_path / name, mode, 16
            )
            recipe = load_recipe(data)
            assert recipe.method == method and recipe.output.kind == mode
            assert all(s.check_base == (mode == "full") for s in recipe.inputs)
    expand = {"merged": str(tmp_path / "lors"), "renormalize": True}
    data = bench.merge_recipe(
        settings,
        tmp_path / "base",
        {"pt": tmp_path / "pt"},
        "lors",
        {},
        tmp_path / "x",
        "lora",
        24,
        expand,
    )
    recipe = load_recipe(data)
    assert recipe.expand.renormalize and recipe.output.rank == 24
