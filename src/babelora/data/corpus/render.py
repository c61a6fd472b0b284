"""Render audio clips in parallel, atomically and resumably.

A `ClipJob` says what one file holds: spans of (lang, text) spoken with `VoiceSettings`, or a
noisy copy of another clip. File names are hashes of the job, so a finished file is never
redone, and a re-run after a kill only renders what is missing. Every file is written to a
temporary name and moved into place with `os.replace`, so a file that exists is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from babelora.data.audio import SAMPLE_RATE
from babelora.data.corpus.codeswitch import join_spans
from babelora.data.corpus.espeak import VoiceSettings, synthesize, voices_for
from babelora.data.corpus.noise import make_noise, mix_at_snr
from babelora.errors import AudioError

TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class NoiseSpec:
    """Noise added to clip `base`: type, SNR (dB), RNG seed, babble talkers (clip paths)."""

    base: str
    kind: str
    snr_db: float
    seed: int
    talkers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClipJob:
    """One audio file to make, at `path` (relative to the corpus folder)."""

    path: str
    spans: tuple[tuple[str, str], ...] = ()
    settings: VoiceSettings | None = None
    noise: NoiseSpec | None = None
    voices: tuple[tuple[str, str], ...] = ()
    """(lang, espeak voice) of each span language of a code-switched clip."""
    pause: float = 0.12

    @property
    def is_codeswitch(self) -> bool:
        return len(self.spans) > 1


@dataclass(frozen=True)
class ClipInfo:
    """What the manifests need from a rendered clip."""

    path: str
    duration: float
    segments: list[dict[str, Any]] | None = None


def clip_name(kind: str, lang: str, payload: Any) -> str:
    """`audio/<kind>/<lang>/<lang>-<hash>.wav`, the hash over the job's content."""
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode())
    return f"audio/{kind}/{lang}/{lang}-{digest.hexdigest()[:16]}.wav"


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}{TMP_MARK}{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_wav(path: Path, wave: np.ndarray) -> None:
    import soundfile as sf

    def write(tmp: Path) -> None:
        sf.write(str(tmp), np.clip(wave, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")

    _atomic_write(path, write)


def _read_wav(path: Path) -> np.ndarray:
    import soundfile as sf

    data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return data[:, 0]


def _existing(job: ClipJob, root: Path) -> ClipInfo | None:
    """The finished clip's info, or None if it must be (re)made."""
    import soundfile as sf

    wav = root / job.path
    meta = wav.with_suffix(".json")
    if not wav.is_file() or (job.is_codeswitch and not meta.is_file()):
        return None
    try:
        info = sf.info(str(wav))
        segments = json.loads(meta.read_text("utf-8"))["segments"] if job.is_codeswitch else None
    except (RuntimeError, sf.LibsndfileError, ValueError, KeyError):
        return None
    if info.frames == 0 or info.samplerate != SAMPLE_RATE:
        return None
    return ClipInfo(job.path, info.frames / SAMPLE_RATE, segments)


def render(job: ClipJob, root: str | Path) -> ClipInfo:
    """Make one clip under `root` unless it is already there; return its info."""
    root = Path(root)
    done = _existing(job, root)
    if done is not None:
        return done
    segments = None
    if job.noise is not None:
        spec = job.noise
        clean = _read_wav(root / spec.base)
        rng = np.random.default_rng(spec.seed)
        talkers = [_read_wav(root / t) for t in spec.talkers]
        wave = mix_at_snr(clean, make_noise(spec.kind, len(clean), rng, talkers), spec.snr_db)
    elif job.settings is not None and len(job.spans) == 1:
        wave = synthesize(job.spans[0][1], job.settings)
    elif job.settings is not None and job.spans:
        voices = dict(job.voices)
        waves = []
        for lang, text in job.spans:
            voice = voices.get(lang) or voices_for(lang)[0]
            waves.append(synthesize(text, job.settings.with_voice(voice)))
        wave, segments = join_spans(waves, [lang for lang, _ in job.spans], job.pause)
        meta = {"segments": segments, "spans": job.spans, "settings": asdict(job.settings)}
        _atomic_write(
            (root / job.path).with_suffix(".json"),
            lambda p: p.write_text(json.dumps(meta, ensure_ascii=False), "utf-8"),
        )
    else:
        raise AudioError(f"{job.path}: clip job has neither text nor noise")
    _write_wav(root / job.path, wave)
    return ClipInfo(job.path, len(wave) / SAMPLE_RATE, segments)


def _render_star(args: tuple[ClipJob, str]) -> ClipInfo:
    return render(*args)


def render_all(
    jobs: Sequence[ClipJob],
    root: str | Path,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> dict[str, ClipInfo]:
    """Render `jobs` with a pool of `workers` processes (1: in this process); {path: info}."""
    out: dict[str, ClipInfo] = {}
    args = [(job, str(root)) for job in jobs]
    if workers <= 1 or len(jobs) < 2:
        results = map(_render_star, args)
        for info in results:
            out[info.path] = info
            if progress:
                progress(1)
        return out
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for info in pool.map(_render_star, args, chunksize=8):
            out[info.path] = info
            if progress:
                progress(1)
    return out
