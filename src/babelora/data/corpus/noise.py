"""Additive noise at a chosen signal-to-noise ratio, for robustness experiments.

Types: `white` (flat spectrum), `pink` (power ~ 1/f, shaped in the frequency domain) and
`babble` (several other utterances of the same split summed, each at unit RMS).
SNR is measured over the whole clip: 10 log10(mean(clean^2) / mean(noise^2)).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from babelora.errors import ConfigError

NOISE_TYPES = ("white", "pink", "babble")


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return (x / rms).astype(np.float32) if rms > 0 else x.astype(np.float32)


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise, unit RMS."""
    return _unit_rms(rng.standard_normal(n))


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f power) noise, unit RMS: white noise with its amplitude spectrum scaled by
    1/sqrt(f) (the DC bin gets the first bin's gain)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    return _unit_rms(np.fft.irfft(spec / np.sqrt(f), n))


def babble_noise(n: int, talkers: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Sum of `talkers` (each tiled to length n from a random offset, unit RMS), unit RMS."""
    if not talkers:
        raise ConfigError("babble noise needs at least one other utterance in the split")
    out = np.zeros(n, dtype=np.float64)
    for wave in talkers:
        reps = int(np.ceil((n + len(wave)) / len(wave)))
        start = int(rng.integers(0, len(wave)))
        out += _unit_rms(np.tile(wave, reps)[start : start + n])
    return _unit_rms(out)


def make_noise(
    kind: str, n: int, rng: np.random.Generator, talkers: Sequence[np.ndarray] = ()
) -> np.ndarray:
    if kind == "white":
        return white_noise(n, rng)
    if kind == "pink":
        return pink_noise(n, rng)
    if kind == "babble":
        return babble_noise(n, talkers, rng)
    raise ConfigError(f"unknown noise type {kind!r}; expected one of {', '.join(NOISE_TYPES)}")


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """clean + g * noise with g chosen so the mix has `snr_db`; the sum is scaled down as a whole
    (keeping the SNR) if its peak would exceed 0.99."""
    p_clean = float(np.mean(np.square(clean, dtype=np.float64)))
    p_noise = float(np.mean(np.square(noise, dtype=np.float64)))
    if p_noise == 0:
        return clean.astype(np.float32)
    gain = np.sqrt(p_clean / (p_noise * 10 ** (snr_db / 10)))
    mix = clean.astype(np.float64) + gain * noise
    peak = float(np.abs(mix).max())
    if peak > 0.99:
        mix *= 0.99 / peak
    return mix.astype(np.float32)


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """The SNR of `noisy` against `clean`, allowing for a common gain (least squares)."""
    clean = clean.astype(np.float64)
    noisy = noisy.astype(np.float64)
    scale = float(np.dot(noisy, clean) / np.dot(clean, clean))
    resid = noisy / scale - clean
    return float(10 * np.log10(np.mean(clean**2) / np.mean(resid**2)))
