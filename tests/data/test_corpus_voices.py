"""Voice engines of the corpus (espeak-ng, MBROLA, SVOX Pico) behind one interface: audio of a
known sentence, determinism, licences, and the errors for missing engines and voices."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from babelora.data.audio import SAMPLE_RATE
from babelora.data.corpus import espeak, mbrola, pico, voices
from babelora.data.corpus.espeak import VoiceSettings, speech_bounds
from babelora.data.corpus.voices import Voice, check_languages, language_voices, parse_selection
from babelora.errors import AudioError, ConfigError, DependencyError, LanguageError

SENTENCES = {
    "de": "Guten Tag, wie geht es Ihnen heute?",
    "en": "Good morning, how are you today?",
    "fr": "Bonjour, comment allez-vous aujourd'hui ?",
}


def _need(engine: str) -> None:
    """Skip (with the reason shown by pytest -rs) when an engine is not installed here."""
    if engine == "mbrola" and (
        mbrola.mbrola_binary() is None or not mbrola.installed(mbrola.BY_NAME["de2"])
    ):
        pytest.skip("MBROLA is not installed: bash scripts/install_system_deps.sh --mbrola")
    if engine == "pico" and (pico.pico_binary() is None or not pico.installed("de-DE")):
        pytest.skip("SVOX Pico (libttspico-utils) is not installed")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")


@pytest.mark.parametrize(
    ("engine", "name", "lang"),
    [
        ("espeak", "f3", "de"),
        ("mbrola", "de2", "de"),
        ("mbrola", "us1", "en"),
        ("pico", "de-DE", "de"),
        ("pico", "en-GB", "en"),
        ("pico", "fr-FR", "fr"),
    ],
)
def test_each_engine_speaks_a_known_sentence(engine, name, lang):
    _need(engine)
    (voice,) = [v for v in language_voices(lang, (f"{engine}:{name}",)) if v.name == name]
    assert voice.speaker == f"{engine}:{name}" and voice.licence
    wave = voice.render(SENTENCES[lang], rate=165, pitch=50)
    assert wave.dtype == np.float32 and wave.ndim == 1
    seconds = len(wave) / SAMPLE_RATE
    assert 1.2 < seconds < 4.5, seconds  # about 2-3 s for six words
    lo, hi = speech_bounds(wave)
    assert (hi - lo) / len(wave) > 0.6 and np.abs(wave).max() > 0.05
    assert np.array_equal(wave, voice.render(SENTENCES[lang], rate=165, pitch=50))
    faster = voice.render(SENTENCES[lang], rate=260, pitch=50)
    assert len(faster) < 0.85 * len(wave)  # the rate reaches the engine


def test_pico_pitch_and_markup():
    _need("pico")
    assert pico.markup("a < b & c", 165, 50) == (
        '<speed level="100"><pitch level="100">a &lt; b &amp; c</pitch></speed>'
    )
    assert pico.markup("x", 140, 30) == '<speed level="85"><pitch level="90">x</pitch></speed>'
    low = pico.synthesize("Bonjour tout le monde", "fr-FR", 165, 0)
    high = pico.synthesize("Bonjour tout le monde", "fr-FR", 165, 99)
    assert _f0(high) > 1.3 * _f0(low)  # the pitch markup reaches the voice
    assert len(pico.synthesize("Tom & Jerry <3", "en-US")) > SAMPLE_RATE // 2


def _f0(wave: np.ndarray) -> float:
    """Median pitch (Hz) of the voiced 40 ms frames, by autocorrelation (70-400 Hz)."""
    frame, out = 640, []
    for i in range(0, len(wave) - frame, frame):
        x = wave[i : i + frame] - wave[i : i + frame].mean()
        if np.abs(x).max() < 0.05:
            continue
        ac = np.correlate(x, x, "full")[frame - 1 :]
        lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 70
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.4 * ac[0]:
            out.append(SAMPLE_RATE / lag)
    return float(np.median(out))


def test_settings_and_speaker_ids():
    v = Voice("espeak", "m3", "en", voices.ESPEAK_LICENCE, "m", ("en-us", "en-gb"))
    s = v.settings(150, 40, "en-gb")
    assert s == VoiceSettings("en-gb", "m3", 150, 40, "espeak") and s.speaker == "espeak:m3"
    m = Voice("mbrola", "de2", "de", "x").settings(150, 40)
    assert (m.voice, m.variant, m.engine, m.speaker) == ("mb-de2", "", "mbrola", "mbrola:de2")
    p = Voice("pico", "en-GB", "en", "x").settings()
    assert (p.voice, p.engine, p.speaker) == ("en-GB", "pico", "pico:en-GB")
    assert VoiceSettings("de").to_dict()["tts"].startswith("espeak-ng ")
    with pytest.raises(AudioError, match="unknown speech engine 'festival'"):
        voices.synthesize("Hallo", VoiceSettings("de", engine="festival"))


def test_voice_selection_and_defaults():
    assert voices.DEFAULT_VOICES == ("espeak", "pico")  # licences allow any use: see voices.py
    assert parse_selection(["pico", "mbrola:es1", "pico"]) == ("pico", "mbrola:es1")
    with pytest.raises(ConfigError, match="unknown engine 'festival'"):
        parse_selection(["festival"])
    with pytest.raises(ConfigError, match="mbrola has no voice 'zz9'; known: .*de2"):
        parse_selection(["mbrola:zz9"])
    with pytest.raises(ConfigError, match="empty"):
        parse_selection([])
    defaults = {v.name for v in mbrola.VOICES if v.default}
    assert not defaults & {"es1", "es2", "mx1", "mx2", "nl1"}  # a fifth of diphones missing
    assert all(v.missing <= 0.2 for v in mbrola.VOICES if v.default)


def test_every_language_needs_a_voice_of_the_selection():
    _need("pico")
    with pytest.raises(LanguageError, match="no voice speaks 'nl' among --voices pico.*de, en"):
        check_languages(["de", "nl"], ("pico",))
    found = check_languages(["de"], ("espeak", "pico"))
    assert set(found) == {"en", "de"}
    assert {v.engine for v in found["de"]} == {"espeak", "pico"}
    assert len(found["de"]) == 13  # 12 espeak variants + Pico's de-DE


def test_missing_mbrola_voice_is_an_error_with_the_install_step(tmp_path, monkeypatch):
    monkeypatch.setattr(mbrola, "VOICE_ROOT", tmp_path)  # no database installed
    with pytest.raises(DependencyError) as err:
        language_voices("de", ("espeak", "mbrola"))
    msg = str(err.value)
    assert "sudo apt-get install -y mbrola-de1 mbrola-de2" in msg and "mbrola-de8" not in msg
    assert "contrib/non-free" in msg and "install_system_deps.sh" in msg
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "mbrola" else which(name))
    with pytest.raises(DependencyError, match=r"apt-get install -y mbrola mbrola-de1"):
        language_voices("de", ("mbrola:de1",))


def test_missing_pico_is_an_error_with_the_install_step(tmp_path, monkeypatch):
    monkeypatch.setattr(pico, "LANG_ROOT", tmp_path)  # no voice data installed
    with pytest.raises(DependencyError, match="data for de-DE is missing.*libttspico-data"):
        language_voices("de", ("espeak", "pico"))
    assert language_voices("nl", ("espeak", "pico"))  # Pico has no Dutch: no package missing
    monkeypatch.setattr(pico.shutil, "which", lambda name: None)
    with pytest.raises(DependencyError, match="pico2wave is not installed.*libttspico-utils"):
        language_voices("en", ("pico",))


def test_recorded_mbrola_licences_match_the_installed_copyright_files():
    found = [v for v in mbrola.VOICES if Path(f"/usr/share/doc/{v.package}/copyright").is_file()]
    if not found:
        pytest.skip("no MBROLA voice installed (bash scripts/install_system_deps.sh --mbrola)")
    for v in found:
        text = " ".join(Path(f"/usr/share/doc/{v.package}/copyright").read_text().split())
        if v.licence == "mbrola-roger":
            assert "University of Edinburgh" in text and "for any purpose" in text, v.name
            continue
        assert "may not be sold" in text or "sold without" in text, v.name
        assert ("military" in text) == (v.licence == "mbrola-nc-nomil"), v.name
        assert str(Path(f"/usr/share/doc/{v.package}/copyright")) in voices.speaker_licence(
            f"mbrola:{v.name}"
        )
    assert voices.speaker_licence("pico:de-DE").startswith("Apache-2.0")
    assert voices.speaker_licence("espeak:m1").startswith("GPL-3.0")


def test_empty_text_and_engine_failures_are_audio_errors(monkeypatch):
    _need("pico")
    with pytest.raises(AudioError, match="empty"):
        pico.synthesize("  ", "de-DE")
    with pytest.raises(AudioError, match="pico2wave -l xx-XX failed"):
        pico.synthesize("Hallo", "xx-XX")
    with pytest.raises(AudioError, match="empty"):
        espeak.speak(" ", ["-v", "de"], "de")


def test_espeak_resampling_matches_the_library_resampler():
    """`espeak.to_16k` designs resample_poly's filter once per rate pair instead of per clip; its
    samples must equal babelora.data.audio.resample (scipy's own filter design) exactly."""
    from babelora.data.audio import resample

    rng = np.random.default_rng(0)
    for rate in (22050, 44100, 24000):
        for n in (1, 7, 4410, 77471):
            x = rng.standard_normal(n).astype(np.float32)
            got = espeak.to_16k(x, rate)
            assert got.dtype == np.float32
            assert np.array_equal(got, resample(x, rate, SAMPLE_RATE)), (rate, n)
    x = rng.standard_normal(100).astype(np.float32)
    assert np.array_equal(espeak.to_16k(x, SAMPLE_RATE), x)
