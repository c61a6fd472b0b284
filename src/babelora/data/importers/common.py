"""What every corpus importer shares: a report of imported and skipped rows, file checks that
name the folder the user should fix, audio placement (reference or convert) and manifest output.

A bad row is skipped with a message naming its file and row; the good rows still import and the
report says how many were skipped. A missing index file or folder is a ManifestError at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from babelora.data.audio import SAMPLE_RATE, load_audio
from babelora.data.manifest import Utterance, write_manifest
from babelora.errors import AudioError, LanguageError, ManifestError
from babelora.languages import check_lang

log = logging.getLogger(__name__)
AUDIO_MODES = ("link", "wav")
"""`link`: manifests point at the corpus' own audio files; `wav`: audio is converted to 16 kHz
mono WAV under the output folder (faster to load in training, needs disk space)."""
SHOW_SKIPPED = 10


class SkipRow(Exception):
    """Raised inside an importer's row loop: the row is skipped with this reason."""


@dataclass
class ImportReport:
    """Counts of one import: lines written per manifest, rows skipped with their reasons."""

    corpus: str
    manifests: dict[str, Path] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def skip(self, where: str, reason: str) -> None:
        message = f"{where}: {reason}"
        if len(self.skipped) < SHOW_SKIPPED:
            log.warning("skipped %s", message)
        self.skipped.append(message)

    @property
    def imported(self) -> int:
        return sum(self.lines.values())

    def summary(self) -> str:
        text = f"{self.corpus}: wrote {self.imported} lines to {len(self.manifests)} manifest(s)"
        text += f", skipped {len(self.skipped)} row(s)"
        for name, n in self.lines.items():
            text += f"\n  {self.manifests[name]}: {n} lines"
        for message in self.skipped[:SHOW_SKIPPED]:
            text += f"\n  skipped {message}"
        if len(self.skipped) > SHOW_SKIPPED:
            text += f"\n  ... and {len(self.skipped) - SHOW_SKIPPED} more"
        return text


def need_file(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_file():
        raise ManifestError(f"{path}: {what} not found" + (f"; {hint}" if hint else ""))
    return path


def need_dir(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_dir():
        raise ManifestError(f"{path}: {what} folder not found" + (f"; {hint}" if hint else ""))
    return path


def lang_code(code: str, where: str) -> str:
    """ISO 639-1 from a corpus' code (`de`, `sv-SE`, `zh-CN`, `de_de`); errors name `where`."""
    try:
        return check_lang(code)
    except LanguageError as err:
        raise LanguageError(f"{where}: {err}") from None


def audio_seconds(path: Path) -> float:
    """Duration from the file header; SkipRow when the file is missing or unreadable."""
    import soundfile as sf

    if not path.is_file():
        raise SkipRow(f"audio file {path} not found")
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as err:
        raise SkipRow(f"audio file {path} is unreadable ({str(err).splitlines()[0]})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise SkipRow(f"audio file {path} is empty")
    return info.frames / info.samplerate


def write_wav_atomic(path: Path, wave: np.ndarray) -> None:
    """16-bit 16 kHz WAV written to a temporary name, then moved into place."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.wav")
    try:
        sf.write(str(tmp), np.clip(wave, -1, 1), SAMPLE_RATE, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def place_audio(src: Path, out_dir: Path, rel: str, mode: str) -> tuple[str, float]:
    """(path for the manifest, duration): the original file (`link`) or a 16 kHz WAV copy made
    once under `out_dir/rel` (`wav`). SkipRow for missing or undecodable audio."""
    if mode == "link":
        return str(src.resolve()), audio_seconds(src)
    target = out_dir / rel
    if not target.is_file():
        try:
            wave = load_audio(src)
        except AudioError as err:
            raise SkipRow(str(err)) from None
        write_wav_atomic(target, wave)
    return str(target), audio_seconds(target)


def check_mode(mode: str) -> str:
    if mode not in AUDIO_MODES:
        raise ManifestError(f"audio mode {mode!r} is unknown; expected one of {AUDIO_MODES}")
    return mode


def check_tasks(tasks: Iterable[str]) -> tuple[str, ...]:
    tasks = tuple(tasks)
    if not tasks or any(t not in ("asr", "st") for t in tasks):
        raise ManifestError(f"tasks must be a non-empty subset of ('asr', 'st'), got {tasks}")
    return tasks


def write_lines(
    report: ImportReport, name: str, utts: Iterable[Utterance], out_dir: Path, where: str
) -> None:
    """Write one manifest; ManifestError if no row of `where` was usable."""
    utts = list(utts)
    if not utts:
        first = f" (first: {report.skipped[0]})" if report.skipped else ""
        raise ManifestError(f"{where}: no usable rows{first}")
    path = write_manifest(utts, out_dir / f"{name}.jsonl")
    report.manifests[name] = path
    report.lines[name] = len(utts)
