"""espeak-ng synthesis, additive noise and code-switched audio assembly."""

from __future__ import annotations

import random

import numpy as np
import pytest

from babelora.data.audio import SAMPLE_RATE
from babelora.data.corpus import espeak
from babelora.data.corpus.codeswitch import embedded, halves, join_spans, make_items, xy
from babelora.data.corpus.espeak import (
    VoiceSettings,
    check_voice,
    speech_bounds,
    synthesize,
    voices_for,
)
from babelora.data.corpus.noise import (
    make_noise,
    mix_at_snr,
    pink_noise,
    snr_db,
    white_noise,
)
from babelora.data.corpus.text_sources import TextPair, text_pairs
from babelora.errors import ConfigError, DependencyError, LanguageError


def test_synthesis_is_deterministic_and_plausible():
    s = VoiceSettings("de", "f3", 160, 60)
    a = synthesize("Guten Tag, wie geht es Ihnen?", s)
    b = synthesize("Guten Tag, wie geht es Ihnen?", s)
    assert a.dtype == np.float32 and a.ndim == 1
    assert np.array_equal(a, b)
    seconds = len(a) / SAMPLE_RATE
    assert 1.0 < seconds < 4.0
    lo, hi = speech_bounds(a)
    assert (hi - lo) / len(a) > 0.6
    faster = synthesize("Guten Tag, wie geht es Ihnen?", VoiceSettings("de", "f3", 260, 60))
    assert len(faster) < 0.8 * len(a)
    other = synthesize("Guten Tag, wie geht es Ihnen?", VoiceSettings("de", "m3", 160, 60))
    assert not np.array_equal(a[: len(other)], other[: len(a)])


def test_voice_settings_validate():
    with pytest.raises(ValueError, match="rate"):
        VoiceSettings("de", rate=20)
    with pytest.raises(ValueError, match="pitch"):
        VoiceSettings("de", pitch=120)
    assert VoiceSettings("de").to_dict()["tts"].startswith("espeak-ng ")


def test_voices_and_language_errors():
    assert voices_for("en")[0] == "en-us" and "en-gb" in voices_for("en")
    assert voices_for("pt") == ("pt",)
    assert check_voice("fr") == "fr-fr"
    with pytest.raises(LanguageError, match="no voice for language 'xx'.*de"):
        check_voice("xx")


def test_missing_espeak_is_a_dependency_error(monkeypatch):
    monkeypatch.setattr(espeak.shutil, "which", lambda name: None)
    with pytest.raises(DependencyError, match="apt-get install espeak-ng"):
        espeak.espeak_binary()
    with pytest.raises(DependencyError, match="apt-get install espeak-ng"):
        synthesize("Hallo", VoiceSettings("de"))


def test_speech_bounds():
    wave = np.zeros(16000, dtype=np.float32)
    assert speech_bounds(wave) == (0, 0)
    wave[4000:8000] = 0.5 * np.sin(np.arange(4000) * 0.3)
    lo, hi = speech_bounds(wave)
    assert 3800 <= lo <= 4000 and 8000 <= hi <= 8200


@pytest.mark.parametrize("kind", ["white", "pink", "babble"])
@pytest.mark.parametrize("target", [0.0, 10.0, 20.0])
def test_mix_hits_the_snr(kind, target):
    rng = np.random.default_rng(0)
    t = np.arange(32000) / SAMPLE_RATE
    clean = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    talkers = [np.sin(np.arange(5000) * f).astype(np.float32) for f in (0.05, 0.11, 0.23)]
    noise = make_noise(kind, len(clean), rng, talkers)
    assert noise.shape == clean.shape
    assert np.sqrt(np.mean(noise.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
    noisy = mix_at_snr(clean, noise, target)
    assert np.abs(noisy).max() <= 0.99 + 1e-6
    assert snr_db(clean, noisy) == pytest.approx(target, abs=0.3)


def test_pink_noise_falls_3_db_per_octave():
    rng = np.random.default_rng(1)
    pink = pink_noise(1 << 16, rng)
    white = white_noise(1 << 16, rng)
    spec = np.abs(np.fft.rfft(pink)) ** 2
    f = np.fft.rfftfreq(1 << 16, 1 / SAMPLE_RATE)

    def band(lo):
        return spec[(f >= lo) & (f < 2 * lo)].mean()

    slopes = [10 * np.log10(band(2 * lo) / band(lo)) for lo in (250, 500, 1000, 2000)]
    assert np.mean(slopes) == pytest.approx(-3.0, abs=0.5)  # power ~ 1/f: -3 dB per octave
    wspec = np.abs(np.fft.rfft(white)) ** 2
    wb = [wspec[(f >= lo) & (f < 2 * lo)].mean() for lo in (250, 2000)]
    assert 10 * np.log10(wb[1] / wb[0]) == pytest.approx(0.0, abs=0.5)


def test_unknown_noise_and_babble_without_talkers():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="unknown noise type"):
        make_noise("brown", 100, rng)
    with pytest.raises(ConfigError, match="babble"):
        make_noise("babble", 100, rng, [])


def _pair(lang, en, text, field=None):
    src = {"kind": "cldr", "field": field} if field else {"kind": "gettext"}
    return TextPair(lang, en, text, src)


def test_codeswitch_texts_and_targets():
    a = _pair("de", "Change password", "Passwort ändern")
    b = _pair("de", "Log in again.", "Erneut anmelden.")
    h = halves("de", a, b)
    assert h.spans == (("de", "Passwort ändern,"), ("en", "Log in again."))
    assert h.text == "Passwort ändern, Log in again."
    assert h.translation == "Change password, Log in again."
    y = xy("de", b, _pair("fr", "Close", "Fermer la fenêtre"))
    assert y.spans == (("de", "Erneut anmelden."), ("fr", "Fermer la fenêtre"))
    assert y.translation == "Log in again. Close"
    days = [
        _pair("de", e, x, "day_name")
        for e, x in (("Monday", "Montag"), ("Tuesday", "Dienstag"), ("Friday", "Freitag"))
    ]
    e = embedded("de", days, 1)
    assert e.spans == (("de", "Montag,"), ("en", "Tuesday"), ("de", "und Freitag"))
    assert e.text == "Montag, Tuesday und Freitag"
    assert e.translation == "Monday, Tuesday, and Friday"
    first = embedded("de", days, 0)
    assert first.spans == (("en", "Monday,"), ("de", "Dienstag und Freitag"))
    assert first.text == "Monday, Dienstag und Freitag"
    assert e.source()["pattern"] == "embedded" and len(e.source()["parts"]) == 3


def test_make_items_uses_every_pattern_and_only_its_pools():
    pool = text_pairs("de")[::4]
    others = {"fr": text_pairs("fr")[:50]}
    items = make_items("de", pool, others, 9, random.Random(0))
    assert [i.pattern for i in items] == ["halves", "embedded", "xy"] * 3
    allowed = {p.key for p in pool} | {p.key for p in others["fr"]}
    for item in items:
        assert {p.key for p in item.pairs} <= allowed
        assert item.lang == "de" and len(item.spans) >= 2
        assert len({lang for lang, _ in item.spans}) == 2


def test_join_spans_segments_tile_the_audio_and_match_each_span():
    s = VoiceSettings("de", "m2", 170, 50)
    waves = [
        synthesize("Passwort ändern", s),
        synthesize("Log in again", s.with_voice("en-us")),
        synthesize("und Freitag", s),
    ]
    audio, segments = join_spans(waves, ["de", "en", "de"], pause=0.12)
    duration = len(audio) / SAMPLE_RATE
    assert [seg["lang"] for seg in segments] == ["de", "en", "de"]
    assert segments[0]["start"] == 0 and segments[-1]["end"] == pytest.approx(duration, abs=1e-4)
    for a, b in zip(segments, segments[1:]):
        assert a["end"] == b["start"]
    for seg, wave in zip(segments, waves):
        piece = audio[int(seg["start"] * SAMPLE_RATE) : int(seg["end"] * SAMPLE_RATE)]
        lo, hi = speech_bounds(wave)
        speech = wave[lo:hi]
        # the span's speech lies inside its own segment, sample for sample
        idx = _find(piece, speech[:400])
        assert idx >= 0 and np.array_equal(piece[idx : idx + len(speech)], speech)
    _, segs = join_spans(waves[:2] + waves[:1], ["de", "de", "en"])
    assert [s["lang"] for s in segs] == ["de", "en"]  # adjacent same-language spans merge


def _find(haystack: np.ndarray, needle: np.ndarray) -> int:
    for i in range(len(haystack) - len(needle) + 1):
        if haystack[i] == needle[0] and np.array_equal(haystack[i : i + len(needle)], needle):
            return i
    return -1


def test_make_items_never_repeats_an_item():
    pool = [
        _pair("de", f"Sentence number {w}", f"Satz Nummer {w}") for w in ("eins", "zwei", "drei")
    ]
    items = make_items("de", pool, {}, 10, random.Random(0))
    keys = [(i.text, i.translation) for i in items]
    assert len(keys) == len(set(keys)) == 6  # 3 sentences give 6 ordered halves, no more
