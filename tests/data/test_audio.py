"""Audio I/O and Whisper's log-mel front end."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from babelora.data.audio import load_audio, log_mel, mel_filters, resample
from babelora.errors import AudioError


def test_log_mel_equals_transformers_feature_extractor():
    from transformers import WhisperFeatureExtractor

    wave = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.1
    ref = WhisperFeatureExtractor()(wave, sampling_rate=16000, return_tensors="np").input_features[
        0
    ]
    ours = log_mel(wave, pad_to_30s=True).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    fe = WhisperFeatureExtractor()
    np.testing.assert_allclose(mel_filters().numpy(), fe.mel_filters.T, atol=1e-7)
    assert log_mel(wave).shape == (80, 300)


def test_resample_and_stereo(tmp_path):
    sr = 22050
    t = np.arange(sr) / sr
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    sf.write(str(tmp_path / "s.wav"), np.stack([tone, tone], 1), sr)
    wave = load_audio(tmp_path / "s.wav")
    assert wave.shape == (16000,) and wave.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins: the tone survives resampling
    assert resample(tone, sr, sr) is tone


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b"\x00\x01garbage"), "cannot decode"),
        (lambda p: sf.write(str(p), np.zeros(0, np.float32), 16000), "empty"),
        (
            lambda p: sf.write(
                str(p), np.array([0.1, np.inf] * 50, np.float32), 16000, subtype="FLOAT"
            ),
            "NaN or infinite",
        ),
    ],
)
def test_bad_audio_errors_name_the_file(tmp_path, make, words):
    path = tmp_path / "x.wav"
    make(path)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert str(path) in str(err.value) and words in str(err.value)
    with pytest.raises(AudioError, match="folder"):
        load_audio(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_non_regular_files_are_refused_without_opening_them(tmp_path):
    """Opening a FIFO for reading waits for a writer forever; a device never ends. Both are
    refused up front, named, within a second."""
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    (tmp_path / "link.wav").symlink_to(fifo)  # through a symlink too
    cases = [(fifo, "named pipe"), (tmp_path / "link.wav", "named pipe")]
    if os.path.exists("/dev/zero"):
        cases.append((Path("/dev/zero"), "character device"))
    for path, words in cases:
        errors: list[BaseException] = []

        def read(path: Path = path, errors: list[BaseException] = errors) -> None:
            try:
                load_audio(path)
            except BaseException as caught:  # noqa: BLE001 - handed to the main thread
                errors.append(caught)

        worker = threading.Thread(target=read, daemon=True)
        worker.start()
        worker.join(10)
        if worker.is_alive():  # let the hung read finish before failing
            with open(fifo, "wb"):
                pass
            pytest.fail(f"load_audio({path}) hangs")
        (err,) = errors
        assert isinstance(err, AudioError) and str(path) in str(err) and words in str(err), err
