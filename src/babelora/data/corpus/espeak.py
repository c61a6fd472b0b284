"""Speech from espeak-ng: one language voice per language, speakers from espeak's voice variants
(`de+f3`), speaking rate (words per minute, `-s`) and pitch (0-99, `-p`).

espeak-ng is deterministic: the same text and arguments give the same samples, so the corpus is
reproducible byte for byte. Its 22.05 kHz output is resampled to 16 kHz mono (float32).
"""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from babelora.data.audio import SAMPLE_RATE
from babelora.data.corpus.debian import package_version
from babelora.errors import AudioError, DependencyError, LanguageError

INSTALL_HINT = (
    "install it with `apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng`"
)
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
"""The espeak variants used as speakers: its plain male and female voices (no robot/whisper)."""

# Accents to draw from, main one first. Other languages use the voice named like the code.
_VOICES = {
    "en": ("en-us", "en-gb"),
    "fr": ("fr-fr", "fr-be"),
    "es": ("es", "es-419"),
    "pt": ("pt",),  # European: Django's `pt` catalog and Babel's pt_PT are European Portuguese
    "zh": ("cmn",),
    "no": ("nb",),
}


@dataclass(frozen=True)
class VoiceSettings:
    """How one clip is spoken: engine voice, variant (espeak speaker), rate (wpm), pitch (0-99).

    `engine` picks the synthesizer (`babelora.data.corpus.voices`): for `espeak` the voice is a
    language voice (`de`, `en-gb`) and the variant the speaker (`m3`); for `mbrola` the voice is
    espeak-ng's MBROLA voice (`mb-de2`); for `pico` a Pico language (`de-DE`); both without a
    variant. Rate and pitch keep espeak's scales for every engine."""

    voice: str
    variant: str = "m1"
    rate: int = 175
    pitch: int = 50
    engine: str = "espeak"

    def __post_init__(self) -> None:
        if not 80 <= self.rate <= 450:
            raise ValueError(f"VoiceSettings.rate must be in 80..450 wpm, got {self.rate}")
        if not 0 <= self.pitch <= 99:
            raise ValueError(f"VoiceSettings.pitch must be in 0..99, got {self.pitch}")

    def with_voice(self, voice: str) -> VoiceSettings:
        return VoiceSettings(voice, self.variant, self.rate, self.pitch, self.engine)

    @property
    def speaker(self) -> str:
        """The speaker id: `espeak:<variant>` (one timbre across languages and accents),
        `mbrola:<database>` or `pico:<language>` (one recorded person each)."""
        if self.engine == "espeak":
            return f"espeak:{self.variant}"
        if self.engine == "mbrola":
            return f"mbrola:{self.voice.removeprefix('mb-')}"
        return f"{self.engine}:{self.voice}"

    def to_dict(self) -> dict:
        """The settings plus the synthesizer and its version, for provenance."""
        return {"tts": tts_version(self.engine), "speaker": self.speaker, **vars(self)}


def espeak_binary() -> str:
    """Path of the espeak-ng program, or DependencyError with the install command."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise DependencyError(f"espeak-ng is not installed (not found on PATH); {INSTALL_HINT}")
    return path


def _run(args: list[str], text: str | None = None) -> bytes:
    try:
        proc = subprocess.run(
            [espeak_binary(), *args],
            input=None if text is None else text.encode("utf-8"),
            capture_output=True,
            check=False,
        )
    except OSError as err:
        raise DependencyError(f"cannot run espeak-ng ({err}); {INSTALL_HINT}") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise AudioError(
            f"espeak-ng {' '.join(args[:6])} failed: {msg[-1] if msg else proc.returncode}"
        )
    return proc.stdout


@lru_cache(maxsize=1)
def espeak_version() -> str:
    out = _run(["--version"]).decode("utf-8", "replace")
    m = re.search(r"(\d+\.\d+(?:\.\d+)?)", out)
    return m.group(1) if m else out.strip()


@lru_cache(maxsize=8)
def tts_version(engine: str) -> str:
    """The synthesizer behind an engine with its version: `espeak-ng 1.51`, `mbrola 3.3+dfsg-9
    via espeak-ng 1.51`, `svox-pico 1.0+git20130326-13` (Debian's package versions)."""
    if engine == "espeak":
        return f"espeak-ng {espeak_version()}"
    if engine == "mbrola":
        return f"mbrola {package_version('mbrola') or '?'} via espeak-ng {espeak_version()}"
    if engine == "pico":
        return f"svox-pico {package_version('libttspico-utils') or '?'}"
    return engine


@lru_cache(maxsize=1)
def installed_voices() -> frozenset[str]:
    """Lower-cased language names of the installed espeak-ng voices (`de`, `en-us`, ...)."""
    lines = _run(["--voices"]).decode("utf-8", "replace").splitlines()[1:]
    return frozenset(line.split()[1].lower() for line in lines if len(line.split()) > 1)


@lru_cache(maxsize=1)
def installed_variants() -> tuple[str, ...]:
    """The members of VARIANTS that this espeak-ng installation has."""
    lines = _run(["--voices=variant"]).decode("utf-8", "replace").splitlines()[1:]
    have = {line.split()[-1].split("/")[-1].lower() for line in lines if line.split()}
    found = tuple(v for v in VARIANTS if v in have)
    return found or ("m1",)


def voices_for(lang: str) -> tuple[str, ...]:
    """The espeak voices (accents) for a babelora language code, main one first; empty if none."""
    have = installed_voices()
    wanted = _VOICES.get(lang, (lang,))
    return tuple(v for v in wanted if v in have)


def speech_languages() -> tuple[str, ...]:
    """babelora language codes (Whisper's list) that espeak-ng can speak here."""
    from babelora.languages import LANG_CODES

    return tuple(c for c in LANG_CODES if voices_for(c))


def check_voice(lang: str) -> str:
    """The main voice for `lang`, or LanguageError listing the languages espeak-ng can speak."""
    voices = voices_for(lang)
    if not voices:
        raise LanguageError(
            f"espeak-ng has no voice for language {lang!r}; languages it can speak: "
            + ", ".join(speech_languages())
        )
    return voices[0]


def synthesize(text: str, settings: VoiceSettings) -> np.ndarray:
    """Speak `text` with espeak-ng; float32 mono samples at 16 kHz."""
    args = ["-v", f"{settings.voice}+{settings.variant}", "-s", str(settings.rate)]
    return speak(text, [*args, "-p", str(settings.pitch)], str(settings))


def speak(text: str, voice_args: list[str], label: str) -> np.ndarray:
    """Run espeak-ng with `voice_args` (voice, rate, pitch) on `text` (UTF-8 on stdin) and return
    its WAV output as 16 kHz mono float32; `label` names the voice in errors."""
    import soundfile as sf

    text = " ".join(text.split())
    if not text:
        raise AudioError("cannot synthesize an empty text")
    raw = _run([*voice_args, "-b", "1", "--stdin", "--stdout"], text)
    try:
        data, sr = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise AudioError(f"espeak-ng returned unreadable audio for {text[:40]!r}: {err}") from None
    if data.shape[0] == 0:
        raise AudioError(f"espeak-ng returned no audio for {text[:40]!r} ({label})")
    return to_16k(data[:, 0], sr)


@lru_cache(maxsize=4)
def _lowpass(up: int, down: int) -> np.ndarray:
    """The anti-aliasing filter `scipy.signal.resample_poly` designs for (up, down), float32."""
    from scipy.signal import firwin

    n = max(up, down)
    return firwin(2 * 10 * n + 1, 1.0 / n, window=("kaiser", 5.0)).astype(np.float32)


def to_16k(wave: np.ndarray, rate: int) -> np.ndarray:
    """`wave` (float32) at `rate` Hz resampled to 16 kHz, as `babelora.data.audio.resample` does
    (same samples), with the filter designed once per rate pair instead of once per clip (about
    2 ms of CPU a clip, a tenth of espeak-ng's time)."""
    wave = np.asarray(wave, dtype=np.float32)
    if rate == SAMPLE_RATE:
        return wave
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), SAMPLE_RATE)
    up, down = SAMPLE_RATE // g, int(rate) // g
    return resample_poly(wave, up, down, window=_lowpass(up, down)).astype(np.float32)


def speech_bounds(
    wave: np.ndarray, threshold_db: float = -35.0, frame: int = 160
) -> tuple[int, int]:
    """First and last sample of the part louder than `threshold_db` below the peak frame energy
    (10 ms frames); (0, 0) for silence. Used to trim spans and to check clips contain speech."""
    n = len(wave) // frame
    if n == 0:
        return (0, 0)
    energy = (wave[: n * frame].reshape(n, frame).astype(np.float64) ** 2).mean(axis=1)
    if energy.max() <= 0:
        return (0, 0)
    loud = np.flatnonzero(10 * np.log10(energy / energy.max() + 1e-20) > threshold_db)
    return int(loud[0] * frame), int(min(len(wave), (loud[-1] + 1) * frame))
