"""Audio in, log-mel out: load any rate/channel count, resample to 16 kHz, Whisper's front end.

Whisper's features (Radford et al. 2022): 25 ms Hann window (n_fft 400), 10 ms hop (160),
80 (or 128) Slaney mel bins up to 8 kHz, log10 clamped to 8 decades below the max, scaled by
(x + 4) / 4. Frames: 100 per second; the encoder halves them (conv2 stride 2).
"""

from __future__ import annotations

import math
import stat
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from babelora.errors import AudioError

if TYPE_CHECKING:  # torch is imported inside mel_filters and log_mel, its only users, so that
    import torch  # reading audio and the corpus commands do without its seconds of start-up

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples in a 30 s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a 30 s window


def resample(wave: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy), exact for rational ratios such as 22050 -> 16000."""
    if orig_sr == target_sr:
        return wave
    from scipy.signal import resample_poly

    g = math.gcd(int(orig_sr), int(target_sr))
    return resample_poly(wave, target_sr // g, orig_sr // g).astype(np.float32)


def check_wave(wave: np.ndarray, name: str, min_seconds: float = 0.0) -> np.ndarray:
    """Raise AudioError for empty or non-finite audio; return float32 mono."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise AudioError(f"{name}: expected mono samples, got shape {wave.shape}")
    if wave.size == 0:
        raise AudioError(f"{name}: audio is empty (0 samples)")
    if not np.isfinite(wave).all():
        bad = int((~np.isfinite(wave)).sum())
        raise AudioError(f"{name}: audio has {bad} NaN or infinite samples")
    if wave.size < min_seconds * SAMPLE_RATE:
        raise AudioError(
            f"{name}: audio is {wave.size / SAMPLE_RATE:.3f} s, shorter than {min_seconds} s"
        )
    return wave


def wav_shortfall(path: str | Path) -> str | None:
    """Why a RIFF/WAVE file is truncated (its data chunk declares more bytes than the file
    holds), or None. libsndfile silently decodes the part that is there, so a file cut short by
    a crash or a partial copy would otherwise pass as shorter audio. A data size of 0 or
    0xFFFFFFFF (a WAV streamed with unknown length) is not a truncation."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            name, declared = chunk[:4], int.from_bytes(chunk[4:], "little")
            if name == b"data":
                held = size - pos - 8
                if declared in (0, 0xFFFFFFFF) or held >= declared:
                    return None
                return f"its data chunk declares {declared} bytes but the file holds {held}"
            pos += 8 + declared + (declared & 1)
    return None


def check_regular_file(path: Path) -> None:
    """AudioError unless `path` (after symlinks) is a regular file. Opening a FIFO blocks until a
    writer comes, and a device or socket never ends, so they are refused before any read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise AudioError(f"{path}: audio file not found") from None
    except OSError as err:
        raise AudioError(f"{path}: cannot read audio file ({err.strerror or err})") from None
    if stat.S_ISREG(mode):
        return
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    raise AudioError(f"{path}: is {kind}, not an audio file")


def load_audio(
    path: str | Path,
    sample_rate: int = SAMPLE_RATE,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Read a WAV/FLAC/OGG file as float32 mono at `sample_rate` (channels averaged).

    Raises AudioError naming the file when it is missing, unreadable, truncated (WAV), empty or
    non-finite.
    """
    import soundfile as sf

    path = Path(path)
    check_regular_file(path)
    try:
        info = sf.info(str(path))
        short = wav_shortfall(path) if info.format == "WAV" else None
        start = int(round(offset * info.samplerate))
        frames = -1 if duration is None else int(round(duration * info.samplerate))
        data, sr = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, ValueError, TypeError) as err:
        raise AudioError(f"{path}: cannot decode audio ({str(err).splitlines()[0]})") from None
    if short:
        raise AudioError(f"{path}: truncated WAV file, cut short ({short})")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    wave = check_wave(wave, str(path))
    return check_wave(resample(wave, sr, sample_rate), str(path))


def write_audio(path: str | Path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write mono float audio as 16-bit PCM WAV or FLAC (by suffix)."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")
    return path


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above (as librosa's default)."""
    freq = np.asarray(freq, dtype=np.float64)
    mel = freq / (200.0 / 3)
    log_part = freq >= 1000.0
    mel = np.where(
        log_part, 15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel
    )
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    freq = mel * (200.0 / 3)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), freq)


@lru_cache(maxsize=4)
def mel_filters(
    n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """Slaney-normalised triangular mel filter bank, shape (n_mels, n_fft // 2 + 1)."""
    import torch

    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2)
    hz_pts = _mel_to_hz(mel_pts)
    fdiff = np.diff(hz_pts)
    ramps = hz_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_pts[2 : n_mels + 2] - hz_pts[:n_mels]))[:, None]
    return torch.from_numpy(weights.astype(np.float32))


def log_mel(
    wave: np.ndarray | torch.Tensor,
    n_mels: int = 80,
    pad_to_30s: bool = False,
) -> torch.Tensor:
    """Whisper log-mel features of one 16 kHz waveform, shape (n_mels, frames).

    Without `pad_to_30s` the output has len(wave) // 160 frames (the STFT's last frame dropped,
    as Whisper does); with it the wave is zero-padded to 30 s first, giving exactly 3000 frames.
    """
    import torch

    audio = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    if pad_to_30s:
        audio = torch.nn.functional.pad(audio[:N_SAMPLES], (0, max(0, N_SAMPLES - audio.numel())))
    window = torch.hann_window(N_FFT)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2
    mel = mel_filters(n_mels) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0
