"""Speech from SVOX Pico (`pico2wave`, Debian `libttspico-utils`): one recorded voice per
language, unit-selection/HMM synthesis that Whisper hears about as well as real speech.

Pico speaks de-DE, fr-FR, es-ES, it-IT, en-US and en-GB. Rate and pitch come on espeak's scales
(words per minute, 0-99) and are passed as Pico's markup `<speed level="%">` and
`<pitch level="%">`: rate 165 wpm is speed 100 %, and pitch 0-99 maps to 75-125 %.
pico2wave writes only to a file named `*.wav` (16 kHz mono 16-bit), so each call gets a
temporary folder. Output is deterministic. Licence: Apache-2.0 (the voice data ship without
source, which is why Debian files them under non-free).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from babelora.data.audio import SAMPLE_RATE, resample
from babelora.data.corpus.debian import apt_hint
from babelora.errors import AudioError, DependencyError

LANG_ROOT = Path("/usr/share/pico/lang")
VOICES = {"de": ("de-DE",), "fr": ("fr-FR",), "es": ("es-ES",), "it": ("it-IT",)}
VOICES["en"] = ("en-US", "en-GB")
GENDER = "f"  # every Pico voice is a woman's
LICENCE = "Apache-2.0 (SVOX Pico)"
PACKAGES = ("libttspico-utils", "libttspico-data")
_FILES = {"de-DE": "gl0", "fr-FR": "nk0", "es-ES": "zl0", "it-IT": "cm0"}
_FILES |= {"en-US": "lh0", "en-GB": "kh0"}


def pico_binary() -> str | None:
    return shutil.which("pico2wave")


def installed(voice: str, root: Path | None = None) -> bool:
    """Pico's two data files for `voice` (text analysis and signal generation) are there
    (`root`: default LANG_ROOT)."""
    root = root or LANG_ROOT
    sg = _FILES.get(voice)
    return sg is not None and all(
        (root / f"{voice}_{part}.bin").is_file() for part in ("ta", f"{sg}_sg")
    )


def check_installed(voices: list[str] | tuple[str, ...]) -> None:
    """DependencyError with the install step when pico2wave or a voice's data is missing."""
    if pico_binary() is None or not all(installed(v) for v in voices):
        missing = [v for v in voices if not installed(v)]
        what = "pico2wave is not installed" if pico_binary() is None else ""
        what = what or f"Pico's data for {', '.join(missing)} is missing"
        raise DependencyError(f"SVOX Pico: {what}; " + apt_hint(PACKAGES, non_free=True))


def markup(text: str, rate: int, pitch: int) -> str:
    """`text` (XML-escaped) inside Pico's speed and pitch tags."""
    speed = round(100 * rate / 165)
    level = round(75 + 50 * pitch / 99)
    return f'<speed level="{speed}"><pitch level="{level}">{escape(text)}</pitch></speed>'


def synthesize(text: str, voice: str, rate: int = 165, pitch: int = 50) -> np.ndarray:
    """Speak `text` with Pico voice `voice` (`de-DE`); 16 kHz mono float32."""
    import soundfile as sf

    text = " ".join(text.split())
    if not text:
        raise AudioError("cannot synthesize an empty text")
    binary = pico_binary()
    if binary is None:
        check_installed((voice,))
    with tempfile.TemporaryDirectory(prefix="babelora-pico-") as tmp:
        out = Path(tmp) / "out.wav"
        try:
            proc = subprocess.run(
                [str(binary), "-l", voice, "-w", str(out), markup(text, rate, pitch)],
                capture_output=True,
                check=False,
            )
        except OSError as err:
            raise DependencyError(f"cannot run pico2wave ({err}); " + apt_hint(PACKAGES)) from None
        if proc.returncode != 0 or not out.is_file():
            msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            why = msg[-1] if msg else f"exit status {proc.returncode}"
            raise AudioError(f"pico2wave -l {voice} failed on {text[:40]!r}: {why}")
        try:
            data, sr = sf.read(str(out), dtype="float32", always_2d=True)
        except (RuntimeError, sf.LibsndfileError) as err:
            raise AudioError(
                f"pico2wave returned unreadable audio for {text[:40]!r}: {err}"
            ) from None
    if data.shape[0] == 0:
        raise AudioError(f"pico2wave returned no audio for {text[:40]!r} ({voice})")
    return resample(data[:, 0], sr, SAMPLE_RATE).astype(np.float32)
