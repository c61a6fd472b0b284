"""The decode runner: bad items are reported and the rest of the batch completes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from babelora.decode.runner import (
    Request,
    RunnerOptions,
    decode_requests,
    features_for,
    write_results,
)
from babelora.decode.search import DecodeOptions

OPTS = RunnerOptions(show_progress=False, max_chunks=2)
DEC = DecodeOptions(max_new_tokens=4)


def _write(path, wave, sr=16000):
    sf.write(str(path), wave, sr, subtype="FLOAT")  # float keeps NaN samples
    return path


def test_bad_items_do_not_stop_the_batch(tmp_path, tiny_handle, tone_wav):
    good = tone_wav(1.0)
    stereo = tone_wav(1.0, sr=44100, channels=2, name="stereo.wav")
    empty = _write(tmp_path / "empty.wav", np.zeros(0, np.float32))
    nan = _write(tmp_path / "nan.wav", np.full(1600, np.nan, np.float32), 16000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage")
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    too_long = _write(tmp_path / "long.wav", np.zeros(16000 * 61, np.float32))
    reqs = [
        Request("good", str(good)),
        Request("missing", str(tmp_path / "missing.wav")),
        Request("empty", str(empty)),
        Request("nan", str(nan)),
        Request("corrupt", str(corrupt)),
        Request("text", str(text)),
        Request("too_long", str(too_long)),
        Request("stereo", str(stereo)),
        Request("badlang", str(good), lang="xx"),
    ]
    results = {r.id: r for r in decode_requests(tiny_handle, reqs, DEC, OPTS)}
    assert results["good"].error is None and results["stereo"].error is None
    assert results["stereo"].audio_seconds == pytest.approx(1.0, abs=0.01)
    expected = {
        "missing": "not found",
        "empty": "empty",
        "nan": "NaN",
        "corrupt": "cannot decode",
        "text": "cannot decode",
        "too_long": "longer than",
        "badlang": "unknown language",
    }
    for key, words in expected.items():
        assert results[key].error and words in results[key].error, (key, results[key].error)
        assert key in results[key].error or str(tmp_path) in results[key].error or key == "badlang"


def test_long_audio_is_chunked(tmp_path, tiny_handle):
    wave = 0.1 * np.random.default_rng(0).standard_normal(16000 * 45).astype(np.float32)
    path = _write(tmp_path / "long.wav", wave)
    (res,) = decode_requests(tiny_handle, [Request("long", str(path))], DEC, OPTS)
    assert res.error is None and res.chunks == 2


def test_features_pad_with_true_silence():
    w1 = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    w2 = w1[:8000]
    feats = features_for([w1, w2], 80, RunnerOptions(min_input_seconds=2.0, tail_seconds=0.0))
    assert feats.shape == (2, 80, 200)
    from babelora.data.audio import log_mel

    alone = log_mel(np.pad(w2, (0, 24000)))
    assert np.allclose(feats[1].numpy(), alone.numpy())
    full = features_for([w1], 80, RunnerOptions(pad_to_30s=True))
    assert full.shape == (1, 80, 3000)


def test_results_jsonl(tmp_path, tiny_handle, tone_wav):
    reqs = [Request("a", str(tone_wav(0.5)), lang="de", task="st", target_lang="en")]
    results = decode_requests(tiny_handle, reqs, DEC, OPTS)
    path = write_results(results, tmp_path / "out" / "hyps.jsonl")
    row = json.loads(path.read_text().splitlines()[0])
    assert row["id"] == "a" and row["lang"] == "de" and row["task"] == "st"
    assert row["lang_source"] == "given" and "decode_seconds" in row
