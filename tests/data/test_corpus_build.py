"""The tiny offline corpus end to end: manifests, determinism, disjoint splits, plausible audio,
code-switch segments, noise, resume after a kill, errors and the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from babelora.cli.main import main
from babelora.config import load_config
from babelora.data.audio import SAMPLE_RATE
from babelora.data.corpus import CorpusConfig, build_corpus, espeak, preset_config, render
from babelora.data.corpus import build as build_module
from babelora.data.corpus.espeak import VoiceSettings, speech_bounds, speech_languages, synthesize
from babelora.data.corpus.noise import snr_db
from babelora.data.corpus.text_sources import norm, text_languages, text_pairs
from babelora.data.manifest import read_manifest
from babelora.errors import ConfigError, DependencyError, LanguageError

LANGS = ("de", "fr")
NOISE = ("white", "pink", "babble")
MANIFESTS = ("train", "dev", "test", "train_cs", "dev_cs", "test_cs", "test_noisy")


def _cfg(**kw):
    return preset_config("tiny", langs=LANGS, noise=NOISE, **kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "tiny"
    build_corpus(_cfg(), out, jobs=1)
    return out


def _manifests(out: Path) -> dict:
    return {name: read_manifest(out / f"{name}.jsonl") for name in MANIFESTS}


def _audio_hashes(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((out / "audio").rglob("*"))
        if p.is_file()
    }


def _manifest_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.jsonl"))}


def test_manifests_validate_and_hold_every_task(tiny):
    m = _manifests(tiny)
    assert sorted(p.stem for p in tiny.glob("*.jsonl")) == sorted(MANIFESTS)
    for split, n in (("train", 3), ("dev", 2), ("test", 2)):
        kinds = {}
        for u in m[split]:
            key = (u.lang, u.task, u.target_lang)
            kinds[key] = kinds.get(key, 0) + 1
        expected = {("en", "asr", None): n}
        for x in LANGS:
            expected |= {(x, "asr", None): n, (x, "st", "en"): n, ("en", "st", x): n}
        assert kinds == expected, split
        for u in m[split]:
            assert Path(u.audio_filepath).is_file()
            assert u.source["corpus"] == "babelora-espeak"
            assert u.source["text"]["kind"] in ("gettext", "cldr", "numbers")
            assert {"voice", "variant", "rate", "pitch", "tts"} <= set(u.source["speech"])
            if u.task == "st" and u.lang != "en":
                assert u.target_lang == "en"
    for split, n in (("train_cs", 3), ("dev_cs", 1), ("test_cs", 3)):
        assert len(m[split]) == 2 * n * len(LANGS)
        for u in m[split]:
            assert u.segments and u.lang in LANGS
            assert u.task == "asr" or (u.target_lang == "en" and u.translation)
    patterns = {u.source["text"]["pattern"] for u in m["train_cs"] + m["test_cs"]}
    assert patterns == {"halves", "embedded", "xy"}


def test_same_seed_gives_same_manifests_and_audio_bytes_for_any_jobs(tiny, tmp_path):
    again = tmp_path / "again"
    build_corpus(_cfg(), again, jobs=2)
    assert _manifest_bytes(again) == _manifest_bytes(tiny)
    assert _audio_hashes(again) == _audio_hashes(tiny)
    assert (again / "card.json").read_text() == (tiny / "card.json").read_text()


def test_other_seed_in_the_same_folder_replaces_the_old_build(tiny, tmp_path):
    out = tmp_path / "reseeded"
    shutil.copytree(tiny, out)
    result = build_corpus(_cfg(seed=1), out, jobs=1)
    assert _manifest_bytes(out) != _manifest_bytes(tiny)
    assert result.removed  # files of the seed-0 build that seed 1 does not use
    used = set()
    for utts in _manifests(out).values():
        used |= {Path(u.audio_filepath).relative_to(out).as_posix() for u in utts}
    wavs = {p for p in _audio_hashes(out) if p.endswith(".wav")}
    assert wavs == used


def _texts_of(u, lookup) -> set[str]:
    if u.source["text"]["kind"] == "codeswitch":
        out = set()
        for part in u.source["text"]["parts"]:
            p = lookup[part["lang"]][part["pair"]]
            out |= {norm(p.en), norm(p.text)}
        return out
    return {norm(u.text)} | ({norm(u.translation)} if u.translation else set())


def test_splits_are_disjoint_by_text_in_every_language(tiny):
    m = _manifests(tiny)
    lookup = {lang: {p.key: p for p in text_pairs(lang)} for lang in LANGS}
    texts = {}
    for split in ("train", "dev", "test"):
        texts[split] = set()
        for u in m[split] + m[f"{split}_cs"]:
            texts[split] |= _texts_of(u, lookup)
    assert not texts["train"] & texts["dev"]
    assert not texts["train"] & texts["test"]
    assert not texts["dev"] & texts["test"]


def test_each_clip_is_speech_of_plausible_duration(tiny):
    m = _manifests(tiny)
    for u in m["train"] + m["dev"] + m["test"]:
        info = sf.info(u.audio_filepath)
        assert info.samplerate == SAMPLE_RATE and info.channels == 1 and info.subtype == "PCM_16"
        assert u.duration == pytest.approx(info.frames / SAMPLE_RATE, abs=1e-4)
        wave, _ = sf.read(u.audio_filepath, dtype="float32")
        lo, hi = speech_bounds(wave)
        assert (hi - lo) / len(wave) > 0.4, u.id
        assert np.abs(wave).max() > 0.05, u.id
        assert 0.03 <= u.duration / len(u.text) <= 0.4, (u.id, u.text, u.duration)
        assert 0.3 <= u.duration < 30


def test_codeswitch_segments_cover_the_audio_with_the_right_labels(tiny):
    m = _manifests(tiny)
    for u in m["train_cs"] + m["dev_cs"] + m["test_cs"]:
        meta = json.loads(Path(u.audio_filepath).with_suffix(".json").read_text("utf-8"))
        spans = meta["spans"]
        merged = [lang for i, (lang, _) in enumerate(spans) if i == 0 or spans[i - 1][0] != lang]
        assert [s.lang for s in u.segments] == merged
        assert u.text == " ".join(t for _, t in spans)
        assert u.segments[0].start == 0.0
        assert u.segments[-1].end == pytest.approx(u.duration, abs=1e-3)
        for a, b in zip(u.segments, u.segments[1:]):
            assert a.end == b.start
        wave, _ = sf.read(u.audio_filepath, dtype="float32")
        for seg in u.segments:
            piece = wave[int(seg.start * SAMPLE_RATE) : int(seg.end * SAMPLE_RATE)]
            assert np.abs(piece).max() > 0.05, (u.id, seg)
        pattern = u.source["text"]["pattern"]
        langs = {s.lang for s in u.segments}
        assert u.lang in langs and len(langs) == 2
        assert ("en" in langs) == (pattern != "xy")


def _as_pcm16(wave: np.ndarray) -> np.ndarray:
    """The int16 samples libsndfile stores for `wave` (same conversion as the corpus' files)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1, 1), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    buf.seek(0)
    return sf.read(buf, dtype="int16")[0]


def test_codeswitch_segment_holds_the_span_spoken_alone(tiny):
    u = next(u for u in read_manifest(tiny / "test_cs.jsonl") if u.task == "st")
    meta = json.loads(Path(u.audio_filepath).with_suffix(".json").read_text("utf-8"))
    sp = meta["settings"]
    voices = u.source["speech"]["voices"]
    wave, _ = sf.read(u.audio_filepath, dtype="int16")
    for (lang, text), seg in zip(meta["spans"], u.segments):
        alone = synthesize(
            text, VoiceSettings(voices[lang], sp["variant"], sp["rate"], sp["pitch"])
        )
        lo, hi = speech_bounds(alone)
        want = _as_pcm16(alone[lo:hi])
        piece = wave[int(seg.start * SAMPLE_RATE) : int(seg.end * SAMPLE_RATE) + 1]
        windows = np.lib.stride_tricks.sliding_window_view(piece, len(want))
        assert (windows == want).all(axis=1).any(), (lang, text)  # inside its own segment


def test_noisy_copies_record_their_noise(tiny):
    test = read_manifest(tiny / "test.jsonl")
    noisy = read_manifest(tiny / "test_noisy.jsonl")
    assert [u.id + "-noisy" for u in test] == [u.id for u in noisy]
    test_clips = {Path(u.audio_filepath).relative_to(tiny).as_posix() for u in test}
    kinds = set()
    for clean, u in zip(test, noisy):
        noise = u.source["speech"]["noise"]
        kinds.add(noise["type"])
        assert 5.0 <= noise["snr_db"] <= 20.0
        assert set(noise["talkers"]) <= test_clips  # babble only from the same split
        a, _ = sf.read(clean.audio_filepath, dtype="float32")
        b, _ = sf.read(u.audio_filepath, dtype="float32")
        assert len(a) == len(b) and u.duration == clean.duration
        assert snr_db(a, b) == pytest.approx(noise["snr_db"], abs=0.5)
    assert len(kinds) >= 2


def test_card_and_config_are_written(tiny):
    card = (tiny / "README.md").read_text("utf-8")
    assert "| de | ST de->en |" in card and "| en | ST en->fr |" in card
    assert "hours" in card and "Django" in card and "espeak-ng" in card
    stats = json.loads((tiny / "card.json").read_text("utf-8"))
    assert stats["manifests"]["train"]["lines"] == 3 * 3 * len(LANGS) + 3
    cfg = load_config(tiny / "config.yaml", CorpusConfig)
    assert cfg == _cfg()


def test_resume_after_a_kill_finishes_without_duplicates(tiny, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    real = render.render
    calls = {"n": 0}

    def dying(job, root, *rest):
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt  # the process is killed part-way
        return real(job, root, *rest)

    monkeypatch.setattr(render, "render", dying)
    with pytest.raises(KeyboardInterrupt):
        build_corpus(_cfg(), out, jobs=1)
    monkeypatch.setattr(render, "render", real)
    done = [p for p in (out / "audio").rglob("*.wav")]
    assert 0 < len(done) <= 12 and not list(out.glob("*.jsonl"))
    # a clip being written when the kill came: a partial temporary file
    (done[0].parent / f"{done[0].stem}{render.TMP_MARK}999.wav").write_bytes(b"RIFF\x00")
    result = build_corpus(_cfg(), out, jobs=2)
    assert result.reused >= len(done)
    assert _manifest_bytes(out) == _manifest_bytes(tiny)
    assert _audio_hashes(out) == _audio_hashes(tiny)


def test_damaged_clips_are_rendered_again_and_counted(tiny, tmp_path, capsys, caplog):
    """A clip cut short after it was written (header intact, half its samples gone) would pass a
    header check and go into the manifest at half its duration; the re-run decodes every clip
    it reuses to the end, renders damaged ones again and says how many."""
    out = tmp_path / "damaged"
    shutil.copytree(tiny, out)
    wavs = sorted((out / "audio" / "speech").rglob("*.wav"))
    data = wavs[0].read_bytes()
    wavs[0].write_bytes(data[: 44 + (len(data) - 44) // 2])  # a partial copy
    wavs[1].write_bytes(b"RIFF" + bytes(300))  # garbage under a clip's name
    frames = sf.info(str(wavs[2])).frames
    sf.write(str(wavs[2]), np.zeros(frames, np.float32), SAMPLE_RATE, subtype="PCM_16")  # silent
    total = len(list((tiny / "audio").rglob("*.wav")))
    args = ["corpus", "build", "--langs", ",".join(LANGS), "--size", "tiny", "--jobs", "1"]
    assert main([*args, "--noise", ",".join(NOISE), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"0 clips rendered, {total - 3} reused, 3 re-rendered (found damaged)" in printed
    assert _audio_hashes(out) == _audio_hashes(tiny)
    assert _manifest_bytes(out) == _manifest_bytes(tiny)
    damaged = [r.getMessage() for r in caplog.records if "damaged clip" in r.getMessage()]
    assert len(damaged) == 3 and "truncated" in " ".join(damaged)
    assert "silent" in " ".join(damaged)


def test_silent_clips_are_left_out_with_their_rows_and_counted(tiny, tmp_path, capsys, monkeypatch):
    """A synthesizer that speaks a sentence (or one span of a code-switched clip) as silence:
    the clip is not written, no manifest row points at it (nor at a noisy copy of it), and the
    build says how many clips and rows were left out."""
    plan = build_module.plan_corpus(_cfg())
    speech = sorted(j.spans[0][1] for j in plan.jobs.values() if len(j.spans) == 1)
    cs = sorted(j.spans[-1][1] for j in plan.jobs.values() if j.is_codeswitch)
    mute = {speech[0], speech[1], cs[0]}
    real = render.synthesize

    def muted(text, settings):
        wave = real(text, settings)
        return wave * 1e-4 if text in mute else wave

    monkeypatch.setattr(render, "synthesize", muted)
    out = tmp_path / "silent"
    args = ["corpus", "build", "--langs", ",".join(LANGS), "--size", "tiny", "--jobs", "1"]
    assert main([*args, "--noise", ",".join(NOISE), "--out", str(out)]) == 0
    silent = {p for p, j in plan.jobs.items() if j.spans and any(t in mute for _, t in j.spans)}
    assert len(silent) >= 3
    stats = json.loads((out / "card.json").read_text("utf-8"))
    noisy = {p for p, j in plan.jobs.items() if j.noise is not None and j.noise.base in silent}
    assert set(stats["silent_clips"]) >= silent and stats["silent_rows"] > 0
    printed = capsys.readouterr().out
    assert f"{len(stats['silent_clips'])} silent (left out with their lines)" in printed
    rows = 0
    for name in MANIFESTS:
        for u in read_manifest(out / f"{name}.jsonl"):
            rel = Path(u.audio_filepath).relative_to(out).as_posix()
            assert rel not in silent and rel not in noisy
            wave, _ = sf.read(u.audio_filepath, dtype="float32")
            assert np.abs(wave).max() > render.SILENCE_PEAK
            rows += 1
    full = sum(len(read_manifest(tiny / f"{n}.jsonl")) for n in MANIFESTS)
    assert rows == full - stats["silent_rows"]
    assert not any((out / p).exists() for p in silent)


def test_bad_languages_and_config():
    with pytest.raises(LanguageError, match="'xx'.*available: .*de"):
        build_module.plan_corpus(preset_config("tiny", langs=("xx",)))
    with pytest.raises(LanguageError, match="Django"):
        build_module.plan_corpus(preset_config("tiny", langs=("haw",)))
    no_voice = sorted(set(text_languages()) - set(speech_languages()))
    if no_voice:
        with pytest.raises(LanguageError, match="no espeak-ng voice"):
            build_module.plan_corpus(preset_config("tiny", langs=(no_voice[0],)))
    with pytest.raises(LanguageError, match="besides English"):
        build_module.plan_corpus(preset_config("tiny", langs=("en",)))
    with pytest.raises(ConfigError, match="unknown corpus size"):
        preset_config("huge")
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        preset_config("tiny", trian=3)
    with pytest.raises(ConfigError, match="noise"):
        preset_config("tiny", noise=("brown",))


def test_missing_espeak_stops_the_build_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(espeak.shutil, "which", lambda name: None)
    with pytest.raises(DependencyError, match="apt-get install espeak-ng"):
        build_corpus(preset_config("tiny", langs=("de",)), tmp_path / "x")
    assert (
        main(["corpus", "build", "--langs", "de", "--size", "tiny", "--out", str(tmp_path / "y")])
        == 2
    )


def test_cli_build_langs_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["corpus", "build", "--langs", "de", "--size", "tiny", "--out", str(out), "--jobs", "1"]
    assert main([*args, "--set", "cs_train=0", "--noise", "white", "--snr", "10,12"]) == 0
    printed = capsys.readouterr().out
    assert "test_noisy.jsonl" in printed and "clips rendered" in printed
    assert read_manifest(out / "train_cs.jsonl") == []  # written, empty: cs_train=0
    noisy = read_manifest(out / "test_noisy.jsonl")
    assert all(10 <= u.source["speech"]["noise"]["snr_db"] <= 12 for u in noisy)
    assert main(["corpus", "langs"]) == 0
    assert "de\tgerman" in capsys.readouterr().out
    assert main(["corpus", "build", "--langs", "de,xx", "--out", str(tmp_path / "z")]) == 2
    assert "'xx'" in capsys.readouterr().err
    assert main([*args, "--snr", "loud"]) == 2


def test_default_plan_has_unique_ids_full_sizes_and_disjoint_splits():
    """The default preset, planned without audio: catches collisions that tiny builds miss."""
    cfg = preset_config("default")
    plan = build_module.plan_corpus(cfg)
    n_langs = len(cfg.langs)
    lookup = {lang: {p.key: p for p in text_pairs(lang)} for lang in cfg.langs}
    texts = {}
    for split in ("train", "dev", "test"):
        rows = [row for row, _ in plan.rows[split]]
        cs = [row for row, _ in plan.rows[f"{split}_cs"]]
        assert len(rows) == cfg.pairs(split) * (3 * n_langs + 1)
        assert len(cs) == 2 * cfg.cs_items(split) * n_langs
        ids = [row["id"] for row in rows + cs]
        assert len(ids) == len(set(ids))
        texts[split] = set()
        for row in rows:
            texts[split] |= {norm(row["text"]), norm(row.get("translation") or row["text"])}
        for row in cs:
            for part in row["source"]["text"]["parts"]:
                p = lookup[part["lang"]][part["pair"]]
                texts[split] |= {norm(p.en), norm(p.text)}
    assert not texts["train"] & texts["dev"]
    assert not texts["train"] & texts["test"]
    assert not texts["dev"] & texts["test"]
    for size in ("tiny", "default", "large"):
        assert preset_config(size).size == size
