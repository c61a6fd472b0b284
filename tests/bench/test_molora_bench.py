"""bench/molora.py to the evaluation protocol: a `--budget smoke` run of the whole MoLoRA vs LoRA
table on a tiny corpus (every row's setting, zero-shot first, kept hypotheses that babelora's
scoring re-derives), and the encoder memo under MGRF (the memo serves the base encoder's states,
MGRF still runs on them)."""

from __future__ import annotations

import copy
import gzip
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference.corpus import write_corpus

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str):
    """A bench/ script as a module (bench/ on sys.path for its own imports)."""
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def with_st(manifest: Path) -> None:
    """Add an ST X->en row for every ASR row (same audio), as corpus builds have."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    out = []
    for r in rows:
        out.append({**r, "task": "asr"})
        out.append({**r, "id": r["id"] + "-st", "task": "st", "target_lang": "en",
                    "translation": "good " + r["text"]})  # fmt: skip
    manifest.write_text("".join(json.dumps(r) + "\n" for r in out))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for name, seed in (("train", 0), ("test", 2), ("test_noisy", 3)):
        with_st(write_corpus(root, {"de": 3, "fr": 3}, seed=seed, name=name))
    real = tmp_path_factory.mktemp("real")
    with_st(write_corpus(real, {"de": 2}, seed=4, name="fillets"))
    out = tmp_path_factory.mktemp("out")
    molora = load("molora")
    argv = ["--budget", "smoke", "--data", str(root), "--real", str(real / "fillets.jsonl"),
            "--langs", "de,fr", "--threads", "1", "--work", str(out / "work"),
            "--out", str(out / "results" / "molora.json")]  # fmt: skip
    molora.main(argv)
    report = json.loads((out / "results" / "molora.json").read_text())
    return report, out / "results", molora


def read_rows(path):
    with gzip.open(path, "rt") as f:
        return [json.loads(x) for x in f]


@pytest.mark.slow
def test_smoke_table_rows_settings_and_routing(smoke):
    report, results, molora = smoke
    assert report["systems"] == list(molora.SYSTEMS)
    assert report["systems"][0] == "zero_shot"
    assert set(report["test_sets"]) == {"test", "test_noisy", "real"}
    assert report["test_sets"]["test"]["rows"] == 8  # 2 per (language, task)
    settings = report["settings"]
    assert settings["zero_shot"] == {**settings["zero_shot"], "trains": "nothing", "parameters": 0}
    for system in molora.SYSTEMS[1:]:
        st = settings[system]
        assert st["language"] == "given"
        if system == "molora_lang_mgrf":  # MGRF trains after the encoder: live, not cached
            assert st["trains"] == "encoder+decoder" and not st["encoder_cache"]
            assert st["parameters_by_part"]["encoder"] > 0 and "mgrf" in st
        else:  # decoder-side: from the encoder-state cache
            assert st["trains"] == "decoder" and st["encoder_cache"], system
    assert settings["lora_r8"]["adapter"] == "LoRA rank 2 on decoder"
    assert settings["lora_r56"]["adapter"] == "LoRA rank 6 on decoder"  # 2 x (1 shared + 2)
    assert report["budget"]["equal_parameter_rank"] == 6
    assert report["matched_parameters"]["equal"]
    assert settings["molora_lang"]["router"].startswith("language")
    assert settings["molora_learned"]["router"].startswith("learned (top-2")
    assert settings["molora_hybrid"]["router"].startswith("hybrid")
    # every row's decoding used the memo, MGRF's too (its hook runs on the memoised states)
    decode = report["decode"]
    assert all(decode[f"{s}/0/{t}"]["encoder_memo"] for s in molora.SYSTEMS for t in ("test",))
    assert decode["encoder_memo"]["hits"] > 0
    for system in molora.ROUTED:
        r = report["routing"][f"{system}/0"]
        assert set(r["usage"]["languages"]) == {"de", "fr"}
        assert r["chance_purity"] - 1e-9 <= r["purity"]["all"] <= 1.0
    assert set(report["routing"]["molora_hybrid/0"]["own_expert_share"]["all"]) == {"de", "fr"}
    table = (results / "molora.md").read_text()
    first = [line for line in table.splitlines() if line.startswith("| zero_shot")]
    assert first and all("Δ" not in line and "*" not in line for line in first)
    assert table.index("| zero_shot") < table.index("| lora_r8 |")
    vs = report["results"]["molora_lang"]["0"]["test_noisy"]
    assert {"scores", "vs_zero_shot", "vs_lora_r56"} <= set(vs)
    assert "vs_lora_r56" not in report["results"]["lora_r56"]["0"]["test"]


@pytest.mark.slow
def test_kept_hypotheses_rescore_to_the_stored_cells(smoke, tmp_path):
    from babelora.data.manifest import read_manifest
    from babelora.evaluate.hypotheses import parse_hypothesis
    from babelora.evaluate.report import score

    report, results, molora = smoke
    hyps = results / "molora"
    for test, meta in report["test_sets"].items():
        utts = read_manifest(hyps / f"{test}.manifest.jsonl")
        assert len(utts) == meta["rows"]
        for system in molora.SYSTEMS:
            rows = read_rows(hyps / f"{system}.{test}.jsonl.gz")
            assert [r["id"] for r in rows] == [u.id for u in utts]
            parsed = {r["id"]: parse_hypothesis(r, "kept") for r in rows}
            stored = report["results"][system]["0"][test]["scores"]
            assert score(parsed, utts).to_json()["averages"] == stored["averages"], system
    # the stored difference vs the matched-parameter LoRA, re-derived by `babelora score`
    out = tmp_path / "diff.json"
    cmd = [sys.executable, "-m", "babelora.cli.main", "score",
           "--manifest", str(hyps / "test_noisy.manifest.jsonl"),
           "--hyps", str(hyps / "molora_lang_mgrf.test_noisy.jsonl.gz"),
           "--baseline", str(hyps / "lora_r56.test_noisy.jsonl.gz"),
           "--compare-out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    stored = report["results"]["molora_lang_mgrf"]["0"]["test_noisy"]["vs_lora_r56"]
    assert json.loads(out.read_text())["rows"] == stored


def mgrf_model(tiny_handle):
    """The tiny model with decoder-side MoLoRA and an MGRF whose fusion is not the identity."""
    from babelora.adapters import LoRAConfig, MoLoRAConfig, inject
    from babelora.adapters.mgrf import MGRFConfig
    from babelora.methods.molora.model import attach_mgrf

    model = copy.deepcopy(tiny_handle.model).eval()
    lora = LoRAConfig(rank=2, alpha=4.0, targets=("whisper-decoder",))
    adapter = inject(model, MoLoRAConfig(lora=lora, languages=("de", "fr"), router="language"))
    mgrf = attach_mgrf(model, adapter, MGRFConfig())
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in mgrf.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model, adapter


def test_encoder_memo_keeps_mgrf_on_the_memoised_base_states(tiny_handle):
    protocol = load("protocol")
    base = copy.deepcopy(tiny_handle.model).eval()
    model, adapter = mgrf_model(tiny_handle)
    feats = torch.randn(3, 80, 64)
    with torch.no_grad():
        plain = base.get_encoder()(feats).last_hidden_state
        live = model.get_encoder()(feats).last_hidden_state  # base encoder + MGRF
        assert not torch.allclose(live, plain, atol=1e-3)  # MGRF changes the states
        memo = protocol.EncoderMemo(base.get_encoder())
        assert not memo.attach(copy.deepcopy(model))  # MGRF's weights: not the base encoder
        assert protocol.attach_memo_below(memo, model)
        assert memo.attach(model)  # already served (what protocol.decode asks)
        first = model.get_encoder()(feats).last_hidden_state
        again = model.get_encoder()(feats[[2, 0]]).last_hidden_state  # from the memo
    torch.testing.assert_close(first, live, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again, live[[2, 0]], rtol=1e-5, atol=1e-6)
    assert (memo.hits, memo.misses) == (2, 3)
    stored = torch.stack(list(memo.states.values()))
    torch.testing.assert_close(stored, plain, rtol=1e-5, atol=1e-6)  # the memo holds base states
    # the whole model (teacher-forced, as routing usage runs it) through the memo = live
    ids = torch.tensor([[50258, 50259, 50359]] * 3)
    adapter.set_routing(langs=["de", "fr", "de"])
    with torch.no_grad():
        memoised = model(input_features=feats, decoder_input_ids=ids, use_cache=False).logits
        fresh, fresh_adapter = mgrf_model(tiny_handle)
        fresh_adapter.set_routing(langs=["de", "fr", "de"])
        want = fresh(input_features=feats, decoder_input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(memoised, want, rtol=1e-5, atol=1e-5)


def test_encoder_memo_below_refuses_another_encoder(tiny_handle):
    protocol = load("protocol")
    model, _ = mgrf_model(tiny_handle)
    memo = protocol.EncoderMemo(tiny_handle.model.get_encoder())
    with torch.no_grad():
        model.get_encoder().layers[0].fc1.weight.add_(1e-3)
    assert not protocol.attach_memo_below(memo, model)


def test_equal_parameter_rank_is_read_from_the_config():
    molora = load("molora")
    assert molora.equal_parameter_rank(8, molora.LANGS) == 56  # 8 x (1 shared + 6 languages)
    assert molora.equal_parameter_rank(2, ["de", "fr"]) == 6
