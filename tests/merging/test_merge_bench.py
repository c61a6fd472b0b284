"""bench/merging.py to the evaluation protocol: a `--budget smoke` run of the whole table on a
tiny corpus (kept hypotheses re-scored by babelora.evaluate give the stored cells), plus its
normalised performance and merge recipes."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from reference.corpus import with_st, write_corpus

from babelora.merging.recipe import load_recipe

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load("merging")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, bench):
    root = tmp_path_factory.mktemp("corpus")
    for name, seed in (("train", 0), ("test", 2), ("test_noisy", 3)):
        with_st(write_corpus(root, {"de": 3, "fr": 3}, seed=seed, name=name))
    real = tmp_path_factory.mktemp("real")
    with_st(write_corpus(real, {"de": 2}, seed=4, name="fillets"))
    out = tmp_path_factory.mktemp("out")
    argv = ["--budget", "smoke", "--data", str(root), "--real", str(real / "fillets.jsonl"),
            "--langs", "de,fr", "--threads", "1", "--work", str(out / "work"),
            "--out", str(out / "results" / "merging.json")]  # fmt: skip
    bench.main(argv)
    report = json.loads((out / "results" / "merging.json").read_text())
    return report, out / "results"


@pytest.mark.slow  # ~40 s: nine `babelora merge` subprocesses
def test_smoke_table_has_every_row_and_setting(smoke, bench):
    report, results = smoke
    assert report["systems"][0] == "zero_shot"
    assert report["systems"] == list(bench.SYSTEMS)
    assert set(report["test_sets"]) == {"test", "test_noisy", "real"}
    assert report["test_sets"]["test"]["rows"] == 8  # 2 per (language, task)
    settings = report["settings"]
    assert settings["zero_shot"]["trains"] == "nothing"
    for system in bench.SYSTEMS[1:]:  # decoder-only, from the encoder-state cache
        assert settings[system]["trains"] == "decoder", system
        assert settings[system]["encoder_cache"], system
    for name, run in report["train"].items():  # multi-task: the fine-tunes' total steps
        assert run["steps"] == (2 * 2 if name.startswith("multi_task") else 2), name
    # every trained row keeps the base encoder bit for bit: decoded from the memo
    decoded = {k: v for k, v in report["decode"].items() if k != "encoder_memo"}
    assert len(decoded) == len(bench.SYSTEMS) * 3
    assert all(v["encoder_memo"] for v in decoded.values())
    assert report["decode"]["encoder_memo"]["hits"] > 0
    assert report["expansion"]["0"]["max_abs_diff_vs_fresh"] < 1e-5
    for system in bench.SYSTEMS:
        entry = report["results"][system]["0"]["real"]
        assert {"vs_zero_shot", "scores", "np", "np_fine"} <= set(entry)
        assert ("vs_multi_task" in entry) == (system not in ("zero_shot", "multi_task"))
    table = (results / "merging.md").read_text()
    first = [line for line in table.splitlines() if line.startswith("| zero_shot")]
    assert first and all("Δ" not in line for line in first)
    assert table.index("| zero_shot") < table.index("| multi_task") < table.index("| lors |")


@pytest.mark.slow
def test_hypotheses_are_kept_and_rescored_by_babelora_evaluate(smoke, bench):
    from babelora.data.manifest import read_manifest
    from babelora.evaluate import ScoreConfig, score
    from babelora.evaluate.compare import compare
    from babelora.evaluate.hypotheses import parse_hypothesis

    report, results = smoke
    hyps = results / "merging"

    def read(system: str, test: str) -> dict:
        with gzip.open(hyps / f"{system}.{test}.jsonl.gz", "rt") as f:
            rows = [json.loads(x) for x in f]
        assert len(rows) == report["test_sets"][test]["rows"]
        return {r["id"]: parse_hypothesis(r, "test") for r in rows}

    for test in report["test_sets"]:
        utts = read_manifest(hyps / f"{test}.manifest.jsonl")
        assert len(utts) == report["test_sets"][test]["rows"]
        zero, multi = read("zero_shot", test), read("multi_task", test)
        for system in bench.SYSTEMS:
            mine = read(system, test)
            entry = report["results"][system]["0"][test]
            got = [d.to_json() for d in compare(zero, mine, utts)]
            assert got == entry["vs_zero_shot"], (system, test)
            if "vs_multi_task" in entry:
                got = [d.to_json() for d in compare(multi, mine, utts)]
                assert got == entry["vs_multi_task"], (system, test)
            texts = {k: h.hypothesis for k, h in mine.items()}
            rows = score(texts, utts, ScoreConfig(langid=False)).rows
            wer = {r.lang: r.score for r in rows if r.task == "asr"}
            assert wer == {k: v["wer"] for k, v in entry["scores"].items() if "wer" in v}


def test_normalised_inverts_error_rates_and_skips_zero_references(bench):
    ref = {"de": {"wer": 40.0, "bleu": 20.0}, "fr": {"wer": 120.0, "bleu": 10.0}}
    got = {"de": {"wer": 70.0, "bleu": 10.0}, "fr": {"wer": 50.0, "bleu": 10.0}}
    out = bench.normalised(got, ref, ["de", "fr"], ("wer", "bleu"))
    # de: (100-70)/(100-40) = 0.5, 10/20 = 0.5; fr: WER reference accuracy 0 -> skipped, 1.0
    assert out == {"value": pytest.approx(2.0 / 3.0), "pairs": 3, "skipped": 1}
    assert bench.normalised(ref, ref, ["de"], ("wer", "bleu"))["value"] == 1.0
    assert bench.accuracy_like("cer", 130.0) == 0.0


def test_merge_recipes_validate_and_keep_a_frozen_encoder(bench, tmp_path):
    inputs = {"de": tmp_path / "de", "fr": tmp_path / "fr"}
    for name, (method, params) in bench.METHODS.items():
        for frozen in (True, False):
            data = bench.merge_recipe(
                tmp_path / "base", inputs, method, params, tmp_path / name, 0, frozen
            )
            recipe = load_recipe(data)
            assert recipe.method == method and recipe.output.kind == "full"
            assert recipe.exclude == (("model.encoder.*",) if frozen else ())
    expand = {"merged": str(tmp_path / "lors"), "renormalize": True}
    data = bench.merge_recipe(
        tmp_path / "base", {"pt": tmp_path / "pt"}, "lors", {}, tmp_path / "x", 0, True, expand
    )
    assert load_recipe(data).expand.renormalize


def test_multi_task_trains_the_six_fine_tunes_total_steps(bench, tmp_path):
    b = bench.BUDGETS["cpu"]
    assert not b.whole_model and bench.BUDGETS["full"].whole_model
    langs = list(bench.LANGS)
    one = bench.train_overrides(b, ["de"], "base", tmp_path / "t", tmp_path / "de", 0)
    six = bench.train_overrides(b, langs, "base", tmp_path / "t", tmp_path / "mt", 0)
    assert f"max_steps={b.steps}" in one and f"max_steps={6 * b.steps}" in six
    assert "recipe.params.train_encoder=False" in one
