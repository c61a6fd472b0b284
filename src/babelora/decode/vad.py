"""Voice-activity trimming for long-form transcription: cut long silences out, map times back.

Whisper hallucinates in long silences and spends windows on them. `trim_silences` keeps the
speech regions of a recording (each padded by `pad_seconds`; gaps shorter than
`min_silence_seconds` are kept), concatenates them, and returns a `TimeMap` that turns times
in the trimmed audio back into times in the original, so segment timestamps refer to the file
the user gave (faster-whisper's `vad_filter` does the same).

Two detectors:
- `energy` (default, no dependency): a 30 ms frame is speech when its level is within
  `threshold_db` of the recording's loud level (97th percentile of frame levels) and above the
  absolute floor `floor_db` dBFS. Enough to find long pauses and silent stretches in speech
  recordings; it does not tell speech from loud noise or music.
- `silero`: the Silero VAD network (ONNX) that faster-whisper ships, via
  `faster_whisper.vad.get_speech_timestamps` (needs faster-whisper and onnxruntime installed;
  optional). Better on noisy audio.
Known limit: an end time the model places just after a cut (in the next kept region) maps to
after the cut silence, so such a segment's end can be late by the silence cut (faster-whisper's
map behaves the same); start times are exact.
Defaults follow faster-whisper's VadOptions: silences of 2 s or more are cut, 0.4 s of padding.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from babelora.data.audio import SAMPLE_RATE
from babelora.errors import BabeloraError

VAD_METHODS = ("energy", "silero")


@dataclass(frozen=True)
class VadOptions:
    """How silences are found and cut (see module docstring)."""

    method: str = "energy"  # "energy" (built in) or "silero" (faster-whisper's ONNX model)
    min_silence_seconds: float = 2.0  # only silences at least this long are cut
    pad_seconds: float = 0.4  # audio kept on each side of a speech region
    threshold_db: float = 35.0  # energy: speech is within this many dB of the loud level
    floor_db: float = -60.0  # energy: frames quieter than this (dBFS) are silence
    frame_seconds: float = 0.03  # energy: frame length

    def __post_init__(self) -> None:
        if self.method not in VAD_METHODS:
            raise BabeloraError(
                f"unknown VAD method {self.method!r}; choose one of {', '.join(VAD_METHODS)}"
            )
        if self.min_silence_seconds <= 0 or self.pad_seconds < 0 or self.frame_seconds <= 0:
            raise BabeloraError(
                "VAD: min_silence_seconds and frame_seconds must be > 0, pad_seconds >= 0"
            )


def energy_regions(wave: np.ndarray, options: VadOptions) -> list[tuple[int, int]]:
    """Speech regions (start, end) in samples by frame energy (before merging and padding)."""
    frame = max(1, int(options.frame_seconds * SAMPLE_RATE))
    count = len(wave) // frame
    if count == 0:
        return []
    power = (wave[: count * frame].astype(np.float64).reshape(count, frame) ** 2).mean(axis=1)
    level = 10 * np.log10(power + 1e-20)
    loud = float(np.percentile(level, 97))
    speech = (level > loud - options.threshold_db) & (level > options.floor_db)
    regions, start = [], None
    for i, on in enumerate(speech.tolist() + [False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            regions.append((start * frame, i * frame))
            start = None
    return regions


def silero_regions(wave: np.ndarray, options: VadOptions) -> list[tuple[int, int]]:
    """Speech regions (start, end) in samples by faster-whisper's Silero VAD."""
    try:
        from faster_whisper.vad import VadOptions as FwVadOptions
        from faster_whisper.vad import get_speech_timestamps
    except ImportError as err:
        raise BabeloraError(
            f"--vad silero needs faster-whisper and onnxruntime ({err}); use --vad energy"
        ) from None
    chunks = get_speech_timestamps(
        wave,
        FwVadOptions(
            min_silence_duration_ms=int(options.min_silence_seconds * 1000),
            speech_pad_ms=int(options.pad_seconds * 1000),
        ),
    )
    return [(int(c["start"]), int(c["end"])) for c in chunks]


def merge_regions(
    regions: list[tuple[int, int]], length: int, options: VadOptions
) -> list[tuple[int, int]]:
    """Regions padded by `pad_seconds` (within the audio), with gaps shorter than
    `min_silence_seconds` closed."""
    pad = int(options.pad_seconds * SAMPLE_RATE)
    gap = int(options.min_silence_seconds * SAMPLE_RATE)
    merged: list[list[int]] = []
    for start, end in sorted(regions):
        start, end = max(0, start - pad), min(length, end + pad)
        if merged and start - merged[-1][1] < gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged if e > s]


@dataclass(frozen=True)
class TimeMap:
    """Kept regions (start, end) in original samples, in order; maps trimmed times back."""

    regions: tuple[tuple[int, int], ...]

    def original(self, seconds: float, is_end: bool = False) -> float:
        """The original time of `seconds` in the trimmed audio. A time exactly on the joint of
        two regions belongs to the earlier one when `is_end` (a segment ending there), else to
        the later one."""
        if not self.regions:
            return seconds
        sample = int(round(seconds * SAMPLE_RATE))
        ends, total = [], 0
        for start, end in self.regions:
            total += end - start
            ends.append(total)
        index = bisect.bisect_left(ends, sample) if is_end else bisect.bisect_right(ends, sample)
        index = min(index, len(ends) - 1)
        trimmed_start = ends[index] - (self.regions[index][1] - self.regions[index][0])
        return (self.regions[index][0] + sample - trimmed_start) / SAMPLE_RATE


def trim_silences(
    wave: np.ndarray, options: VadOptions = VadOptions()
) -> tuple[np.ndarray, TimeMap]:
    """The speech of `wave` with long silences cut out, and the map back to original times.
    Audio without any speech gives an empty array."""
    find = silero_regions if options.method == "silero" else energy_regions
    regions = merge_regions(find(wave, options), len(wave), options)
    if not regions:
        return wave[:0], TimeMap(())
    kept = np.concatenate([wave[s:e] for s, e in regions])
    return kept, TimeMap(tuple(regions))
