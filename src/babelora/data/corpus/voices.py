"""The corpus' voices: one small interface over three synthesizers.

A `Voice` is one speaker of one language: `engine` (espeak, mbrola, pico), `name` (the engine's
voice), `lang`, `licence`, and `render(text)` -> 16 kHz mono float32. Its `speaker` id is what
the manifests record and what speaker-disjoint splits hold apart:
- `espeak:<variant>` (m1..m7, f1..f5): espeak-ng's formant voices; one variant is one timbre in
  every language and accent (the accent, e.g. en-us/en-gb, is drawn per clip);
- `mbrola:<database>` (de2, fr4, ...): diphones recorded from one person each (`mbrola.py`);
- `pico:<language>` (de-DE, en-GB, ...): SVOX Pico's one voice per language (`pico.py`).

Engines are chosen with `--voices espeak,pico` (a whole engine's default voices) or by naming
voices (`mbrola:es1`). The default is espeak + Pico: both licences let the audio be used for any
purpose (espeak-ng GPL-3.0, whose licence does not cover its output; Pico Apache-2.0). MBROLA
is opt-in because its voice databases may not be sold or built into a product that is sold.
A requested engine or voice that is not installed stops the build with the exact install step;
there is no fallback to fewer voices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from babelora.data.corpus import espeak, mbrola, pico
from babelora.data.corpus.espeak import VoiceSettings
from babelora.errors import AudioError, ConfigError, LanguageError

ENGINES = ("espeak", "mbrola", "pico")
DEFAULT_VOICES = ("espeak", "pico")
ESPEAK_LICENCE = "GPL-3.0-or-later (espeak-ng; does not cover its output)"


@dataclass(frozen=True)
class Voice:
    """One speaker of one language. For espeak, `accents` are the language voices it may speak
    with (drawn per clip); other engines have one."""

    engine: str
    name: str  # espeak: variant (m3); mbrola: database (de2); pico: language (de-DE)
    lang: str
    licence: str
    gender: str = ""
    accents: tuple[str, ...] = ()

    @property
    def speaker(self) -> str:
        return f"{self.engine}:{self.name}"

    def settings(
        self, rate: int = 175, pitch: int = 50, accent: str | None = None
    ) -> VoiceSettings:
        """The clip settings that make this voice speak at `rate` (wpm) and `pitch` (0-99)."""
        if self.engine == "espeak":
            return VoiceSettings(accent or self.accents[0], self.name, rate, pitch, "espeak")
        if self.engine == "mbrola":
            return VoiceSettings(f"mb-{self.name}", "", rate, pitch, "mbrola")
        return VoiceSettings(self.name, "", rate, pitch, self.engine)

    def render(self, text: str, rate: int = 175, pitch: int = 50) -> np.ndarray:
        return synthesize(text, self.settings(rate, pitch))


def synthesize(text: str, settings: VoiceSettings) -> np.ndarray:
    """Speak `text` with the engine `settings.engine`; 16 kHz mono float32."""
    if settings.engine == "espeak":
        return espeak.synthesize(text, settings)
    if settings.engine == "mbrola":
        return mbrola.synthesize(text, settings.voice, settings.rate, settings.pitch)
    if settings.engine == "pico":
        return pico.synthesize(text, settings.voice, settings.rate, settings.pitch)
    raise AudioError(f"unknown speech engine {settings.engine!r}; expected one of {ENGINES}")


# --- which voices a build uses -------------------------------------------------------------------


def _espeak_voices(lang: str, variants: Sequence[str], accents: bool) -> list[Voice]:
    langs = espeak.voices_for(lang)
    if not langs:
        return []
    langs = langs if accents else langs[:1]
    have = [v for v in variants if v in espeak.installed_variants()] or ["m1"]
    return [Voice("espeak", v, lang, ESPEAK_LICENCE, v[0], tuple(langs)) for v in have]


def _mbrola_voice(v: mbrola.MbrolaVoice) -> Voice:
    return Voice("mbrola", v.name, v.lang, mbrola.licence_of(v), v.gender)


def _pico_voice(lang: str, name: str) -> Voice:
    return Voice("pico", name, lang, pico.LICENCE, pico.GENDER)


def known_voices(engine: str, lang: str) -> list[str]:
    """Names of every voice `engine` has for `lang`, installed or not (for error messages)."""
    if engine == "mbrola":
        return [v.name for v in mbrola.VOICES if v.lang == lang]
    if engine == "pico":
        return list(pico.VOICES.get(lang, ()))
    return list(espeak.VARIANTS)


def parse_selection(tokens: Iterable[str]) -> tuple[str, ...]:
    """Check a voice selection: engine names (`pico`) or single voices (`mbrola:es1`)."""
    out: list[str] = []
    for token in tokens:
        engine, _, name = token.partition(":")
        if engine not in ENGINES:
            raise ConfigError(
                f"corpus.voices: unknown engine {engine!r} in {token!r}; expected one of "
                f"{', '.join(ENGINES)}, or engine:voice such as mbrola:de2"
            )
        if name:
            names = {n for lang in _all_langs() for n in known_voices(engine, lang)}
            if name not in names:
                known = ", ".join(sorted(names))
                raise ConfigError(f"corpus.voices: {engine} has no voice {name!r}; known: {known}")
        if token not in out:
            out.append(token)
    if not out:
        raise ConfigError(f"corpus.voices is empty; e.g. {','.join(DEFAULT_VOICES)}")
    return tuple(out)


def _all_langs() -> set[str]:
    return {v.lang for v in mbrola.VOICES} | set(pico.VOICES)


def language_voices(
    lang: str,
    selection: Sequence[str] = DEFAULT_VOICES,
    variants: Sequence[str] = espeak.VARIANTS,
    accents: bool = True,
) -> tuple[Voice, ...]:
    """The voices of `selection` that speak `lang`, checked to be installed (DependencyError
    with the install step otherwise), sorted by speaker id. Empty when no engine asked for has
    a voice for `lang` (the caller says so)."""
    out: dict[str, Voice] = {}
    for token in parse_selection(selection):
        engine, _, name = token.partition(":")
        if engine == "espeak":
            espeak.espeak_binary()  # DependencyError with the install step when missing
            for v in _espeak_voices(lang, variants, accents):
                if not name or v.name == name:
                    out[v.speaker] = v
        elif engine == "mbrola":
            chosen = [
                v
                for v in mbrola.VOICES
                if v.lang == lang and (v.name == name or (not name and v.default))
            ]
            if chosen:
                espeak.espeak_binary()
                mbrola.check_installed(chosen)
            out.update({f"mbrola:{v.name}": _mbrola_voice(v) for v in chosen})
        else:
            names = [n for n in pico.VOICES.get(lang, ()) if not name or n == name]
            if names:
                pico.check_installed(names)
            out.update({f"pico:{n}": _pico_voice(lang, n) for n in names})
    return tuple(out[k] for k in sorted(out))


def check_languages(
    langs: Sequence[str],
    selection: Sequence[str],
    variants: Sequence[str] = espeak.VARIANTS,
    accents: bool = True,
) -> dict[str, tuple[Voice, ...]]:
    """{lang: voices} for every language of a build (English included); LanguageError naming
    the engines when a language has none."""
    out = {}
    for lang in ("en", *[x for x in langs if x != "en"]):
        voices = language_voices(lang, selection, variants, accents)
        if not voices:
            raise LanguageError(
                f"no voice speaks {lang!r} among --voices {','.join(selection)}; "
                + "; ".join(
                    f"{e} speaks {', '.join(_engine_langs(e))}" for e in _engines(selection)
                )
            )
        out[lang] = voices
    return out


def _engines(selection: Sequence[str]) -> list[str]:
    return sorted({t.partition(":")[0] for t in selection})


def _engine_langs(engine: str) -> list[str]:
    if engine == "espeak":
        return ["most languages (`babelora corpus langs`)"]
    if engine == "mbrola":
        return sorted({v.lang for v in mbrola.VOICES})
    return sorted(pico.VOICES)


def speaker_licence(speaker: str) -> str:
    """The licence of a speaker id's voice (for the dataset card)."""
    engine, _, name = speaker.partition(":")
    if engine == "espeak":
        return ESPEAK_LICENCE
    if engine == "mbrola" and name in mbrola.BY_NAME:
        return mbrola.licence_of(mbrola.BY_NAME[name])
    if engine == "pico":
        return pico.LICENCE
    return "?"
