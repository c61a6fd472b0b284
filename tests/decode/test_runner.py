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
    input_samples,
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


def test_a_clip_decodes_the_same_in_any_batch(tmp_path, tiny_handle):
    """The encoder input of a clip depends on the clip alone: decoded alone, among short clips,
    and next to a 25 s clip it gives the same tokens (greedy, CPU, fp32)."""
    rng = np.random.default_rng(3)

    def clip(name: str, seconds: float) -> str:
        wave = 0.1 * rng.standard_normal(int(16000 * seconds)).astype(np.float32)
        return str(_write(tmp_path / f"{name}.wav", wave))

    target = Request("target", clip("target", 1.3))
    short = [Request(f"s{i}", clip(f"s{i}", 0.7 + 0.4 * i)) for i in range(3)]
    long = Request("long", clip("long", 25.0))
    opts = RunnerOptions(show_progress=False, min_input_seconds=0.0, batch_seconds=1000)
    alone = decode_requests(tiny_handle, [target], DEC, opts)[0].hypothesis
    with_short = decode_requests(tiny_handle, [*short, target], DEC, opts)[-1].hypothesis
    with_long = decode_requests(tiny_handle, [long, target], DEC, opts)[-1].hypothesis
    assert alone == with_short == with_long


def test_input_length_is_a_function_of_the_clip():
    opts = RunnerOptions(min_input_seconds=10.0, tail_seconds=0.5, length_bucket_seconds=2.0)
    assert input_samples(16000 * 3, opts) == 16000 * 10  # the floor
    assert input_samples(16000 * 11, opts) == 16000 * 12  # 11.5 s rounded up to the bucket
    assert input_samples(16000 * 40, opts) == 16000 * 30  # never more than one window
    assert input_samples(100, RunnerOptions(pad_to_30s=True)) == 16000 * 30


def test_languages_share_a_batch():
    """Rows whose prompts differ only in the language token decode in one forward pass."""
    from babelora.decode.runner import _batches, _Piece

    wave = np.zeros(16000, dtype=np.float32)
    pieces = [_Piece(i, 0, wave, (1, 100 + i, 3)) for i in range(3)]
    assert [len(b) for b in _batches(pieces, RunnerOptions())] == [3]
    pieces.append(_Piece(3, 0, wave, (1, 3)))  # another prompt length: its own batch
    assert sorted(len(b) for b in _batches(pieces, RunnerOptions())) == [1, 3]
