"""Render audio clips in parallel, atomically and resumably.

A `ClipJob` says what one file holds: spans of (lang, text) spoken with `VoiceSettings`, or a
noisy copy of another clip. File names are hashes of the job, so a finished file is never
redone, and a re-run after a kill only renders what is missing. Every file is written to a
temporary name and moved into place with `os.replace`, so a file that exists was complete when
written; a clip damaged since (e.g. cut short by a partial copy) is found by decoding it to the
end before it is reused, and rendered again. Workers die with the build (`lifeline`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from babelora.data.audio import SAMPLE_RATE, wav_shortfall
from babelora.data.corpus.codeswitch import join_spans
from babelora.data.corpus.espeak import VoiceSettings
from babelora.data.corpus.lifeline import worker_init
from babelora.data.corpus.noise import make_noise, mix_at_snr
from babelora.data.corpus.voices import synthesize
from babelora.errors import AudioError

log = logging.getLogger(__name__)
TMP_MARK = ".tmp-"
RENDERED, REUSED, RERENDERED = "rendered", "reused", "re-rendered"
SILENT = "silent"
SILENCE_PEAK = 1e-3
"""Peak amplitude (-60 dBFS) under which synthesized speech counts as silent: such a clip is not
written and its manifest rows are left out (counted), so no row points at silent audio."""


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
    voices: tuple[tuple[str, VoiceSettings], ...] = ()
    """(lang, who says it) of each span language of a code-switched clip."""
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
    status: str = RENDERED
    """RENDERED (new), REUSED (found complete), RERENDERED (found damaged, made again) or SILENT
    (the synthesizer gave silence: no file, rows left out)."""


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


def _whole_frames(wav: Path) -> int | str:
    """An existing clip's frame count when it is whole, else why it cannot be reused: its header
    must match the file's size (what babelora's reader checks), it must decode, to the last
    frame, to as many 16 kHz frames as the header declares, and it must not be silent."""
    import soundfile as sf

    try:
        info = sf.info(str(wav))
        if info.format != "WAV" or info.samplerate != SAMPLE_RATE or info.frames == 0:
            return f"not a 16 kHz WAV with samples ({info.format}, {info.samplerate} Hz)"
        short = wav_shortfall(wav)
        if short:
            return f"truncated: {short}"
        data = sf.read(str(wav), dtype="int16", always_2d=True)[0]
    except (RuntimeError, sf.LibsndfileError, ValueError, TypeError, OSError) as err:
        return f"does not decode ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    if len(data) != info.frames:
        return f"decodes to {len(data)} frames, its header declares {info.frames}"
    if int(np.abs(data.astype(np.int32)).max()) < SILENCE_PEAK * 32768:
        return "silent (peak below -60 dBFS)"
    return len(data)


def _existing(job: ClipJob, root: Path) -> ClipInfo | str | None:
    """The finished clip's info; None when there is no clip; why it must be made again when a
    clip (or a code-switched clip's segment file) is there but damaged."""
    wav = root / job.path
    meta = wav.with_suffix(".json")
    if not os.path.lexists(wav):
        return None  # a segment file alone is a kill between the two writes, not damage
    if not wav.is_file():
        return "not a regular file"
    frames = _whole_frames(wav)
    if isinstance(frames, str):
        return frames
    segments = None
    if job.is_codeswitch:
        try:
            segments = json.loads(meta.read_text("utf-8"))["segments"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"its segment file {meta.name} is unreadable ({type(err).__name__})"
    return ClipInfo(job.path, frames / SAMPLE_RATE, segments, REUSED)


def is_silent(wave: np.ndarray) -> bool:
    """True for audio without a sample above SILENCE_PEAK (or with non-finite samples)."""
    return wave.size == 0 or not np.isfinite(wave).all() or float(np.abs(wave).max()) < SILENCE_PEAK


def render(job: ClipJob, root: str | Path, silent: frozenset[str] = frozenset()) -> ClipInfo:
    """Make one clip under `root` unless it is already there; return its info. A clip whose
    speech (any span of it) comes out silent, or a noisy copy of a clip in `silent`, is not
    written: its info has status SILENT."""
    root = Path(root)
    if job.noise is not None and (job.noise.base in silent or set(job.noise.talkers) & silent):
        return ClipInfo(job.path, 0.0, None, SILENT)
    done = _existing(job, root)
    if isinstance(done, ClipInfo):
        return done
    status = RENDERED
    if done is not None:
        log.warning("%s: re-rendering a damaged clip: %s", job.path, done)
        status = RERENDERED
    segments = None
    if job.noise is not None:
        spec = job.noise
        clean = _read_wav(root / spec.base)
        rng = np.random.default_rng(spec.seed)
        talkers = [_read_wav(root / t) for t in spec.talkers]
        wave = mix_at_snr(clean, make_noise(spec.kind, len(clean), rng, talkers), spec.snr_db)
    elif job.settings is not None and len(job.spans) == 1:
        wave = synthesize(job.spans[0][1], job.settings)
        if is_silent(wave):
            return _silent(job, job.spans[0][1])
    elif job.settings is not None and job.spans:
        voices = dict(job.voices)
        waves = [synthesize(text, voices.get(lang, job.settings)) for lang, text in job.spans]
        for (_, text), span in zip(job.spans, waves):
            if is_silent(span):
                return _silent(job, text)
        wave, segments = join_spans(waves, [lang for lang, _ in job.spans], job.pause)
        meta = {"segments": segments, "spans": job.spans, "settings": asdict(job.settings)}
        meta["voices"] = {lang: asdict(s) for lang, s in job.voices}
        _atomic_write(
            (root / job.path).with_suffix(".json"),
            lambda p: p.write_text(json.dumps(meta, ensure_ascii=False), "utf-8"),
        )
    else:
        raise AudioError(f"{job.path}: clip job has neither text nor noise")
    _write_wav(root / job.path, wave)
    return ClipInfo(job.path, len(wave) / SAMPLE_RATE, segments, status)


def _silent(job: ClipJob, text: str) -> ClipInfo:
    log.warning("%s: %s spoke %r as silence; its rows are left out", job.path, job.settings, text)
    return ClipInfo(job.path, 0.0, None, SILENT)


def _render_star(args: tuple[ClipJob, str, frozenset[str]]) -> ClipInfo:
    return render(*args)


def render_all(
    jobs: Sequence[ClipJob],
    root: str | Path,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
    silent: frozenset[str] = frozenset(),
) -> dict[str, ClipInfo]:
    """Render `jobs` with a pool of `workers` processes (1: in this process); {path: info}.
    `silent`: clips found silent earlier (noisy copies of them are skipped)."""
    out: dict[str, ClipInfo] = {}
    args = [(job, str(root), silent) for job in jobs]
    if workers <= 1 or len(jobs) < 2:
        results = map(_render_star, args)
        for info in results:
            out[info.path] = info
            if progress:
                progress(1)
        return out
    # workers end when this process dies, even by SIGKILL (lifeline); a forkserver's workers
    # are its children, not ours, and follow it (it ends with us)
    method = multiprocessing.get_start_method()
    parent = None if method == "forkserver" else os.getpid()
    with ProcessPoolExecutor(
        max_workers=workers, initializer=worker_init, initargs=(parent,)
    ) as pool:
        for info in pool.map(_render_star, args, chunksize=8):
            out[info.path] = info
            if progress:
                progress(1)
    return out
