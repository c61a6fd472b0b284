"""Long-form decoding on a tiny random Whisper: ragged prompts decode as they would alone, the
no-speech probability is read at the right position, files batched together decode as alone,
bad files fail alone; voice-activity trimming and its time map against simple references."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from babelora.data.audio import SAMPLE_RATE
from babelora.decode.longform import LongformOptions, transcribe_long
from babelora.decode.ragged import RaggedWhisperStepDecoder, left_pad
from babelora.decode.runner import Request, RunnerOptions
from babelora.decode.search import DecodeOptions, DecodingTask, WhisperStepDecoder
from babelora.decode.vad import TimeMap, VadOptions, energy_regions, merge_regions, trim_silences
from babelora.errors import BabeloraError

SOT, PREV = 50257, 50360
PROMPTS = [[SOT], [PREV, 11, 12, SOT], [PREV, 11, 12, 13, 14, 15, SOT, 50362]]
OPTIONS = DecodeOptions(max_new_tokens=12, repetition_guard=0, suppress_blank=False)


def _alone(model, enc, prompt, options):
    task = DecodingTask(WhisperStepDecoder(model, enc), [prompt], 50256, options)
    return task.run()[0]


@pytest.mark.parametrize("beam", [1, 2])
def test_ragged_prompts_decode_as_each_row_alone(tiny_handle, beam):
    model = tiny_handle.model
    enc = torch.randn(3, 30, 64, generator=torch.Generator().manual_seed(0))
    options = DecodeOptions(**{**OPTIONS.__dict__, "beam_size": beam})
    padded, pads = left_pad(PROMPTS, 50256)
    assert pads == [7, 4, 0] and {len(p) for p in padded} == {8}
    decoder = RaggedWhisperStepDecoder(model, enc, pads)
    with torch.no_grad():
        batched = DecodingTask(decoder, padded, 50256, options).run()
        alone = [_alone(model, enc[i : i + 1], p, options) for i, p in enumerate(PROMPTS)]
    for got, want in zip(batched, alone):
        assert got.tokens == want.tokens
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4)


def test_no_speech_probability_is_read_at_each_rows_start_of_transcript(tiny_handle):
    model = tiny_handle.model
    enc = torch.randn(3, 30, 64, generator=torch.Generator().manual_seed(1))
    padded, pads = left_pad(PROMPTS, 50256)
    sot = [pad + prompt.index(SOT) for pad, prompt in zip(pads, PROMPTS)]
    decoder = RaggedWhisperStepDecoder(model, enc, pads, sot, no_speech=50361)
    with torch.no_grad():
        DecodingTask(decoder, padded, 50256, OPTIONS).run()
        for i, prompt in enumerate(PROMPTS):
            out = model.get_decoder()(
                input_ids=torch.tensor([prompt]), encoder_hidden_states=enc[i : i + 1]
            )
            logits = model.proj_out(out.last_hidden_state[0, prompt.index(SOT)])
            want = float(logits.softmax(-1)[50361])
            assert decoder.no_speech_probs[i] == pytest.approx(want, rel=1e-4)


def _noise(path, seconds, seed):
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype("float32"), 16000)
    return str(path)


RUN = RunnerOptions(show_progress=False, batch_seconds=300)
LONG = LongformOptions(max_new_tokens=16, no_speech_threshold=None)


def test_files_batched_together_decode_as_alone(tiny_handle, tmp_path):
    files = [_noise(tmp_path / f"{i}.wav", s, i) for i, s in enumerate((2.0, 31.0))]
    reqs = [Request(str(i), f, "en") for i, f in enumerate(files)]
    together = transcribe_long(tiny_handle, reqs, OPTIONS, RUN, LONG)
    assert [r.chunks for r in together] == [1, 2]  # windows: the files advanced together
    for req, got in zip(reqs, together):
        alone = transcribe_long(tiny_handle, [req], OPTIONS, RUN, LONG)[0]
        assert got.error is None and got.extra["segments"] == alone.extra["segments"]
        assert got.hypothesis == alone.hypothesis
        for seg in got.extra["segments"]:
            assert 0 <= seg["start"] < seg["end"] <= got.audio_seconds  # clamped to the audio


def test_bad_files_fail_alone_and_long_audio_is_refused(tiny_handle, tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, "float32"), 16000)
    good = _noise(tmp_path / "good.wav", 2.0, 0)
    reqs = [
        Request("missing", str(tmp_path / "missing.wav"), "en"),
        Request("empty", str(empty), "en"),
        Request("good", good, "en"),
    ]
    results = transcribe_long(tiny_handle, reqs, OPTIONS, RUN, LONG)
    assert "not found" in results[0].error and "empty" in results[1].error
    assert results[2].error is None and results[2].chunks == 1
    limited = LongformOptions(max_seconds=1.5)
    res = transcribe_long(tiny_handle, [reqs[2]], OPTIONS, RUN, limited)[0]
    assert "longer than the limit of 2 s" in res.error or "longer than the limit" in res.error
    with pytest.raises(BabeloraError, match="max_new_tokens"):
        LongformOptions(max_new_tokens=0)


# ---- voice-activity trimming ----------------------------------------------------------------


def _tone(seconds):
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype("float32")


def _silence(seconds):
    return np.zeros(int(seconds * SAMPLE_RATE), "float32")


def test_energy_vad_cuts_only_long_silences():
    wave = np.concatenate([_silence(3), _tone(1), _silence(5), _tone(1), _silence(1), _tone(1)])
    options = VadOptions(min_silence_seconds=2.0, pad_seconds=0.25)
    regions = merge_regions(energy_regions(wave, options), len(wave), options)
    got = [(s / SAMPLE_RATE, e / SAMPLE_RATE) for s, e in regions]
    want = [(2.75, 4.25), (8.75, 12.0)]  # the 1 s pause is kept; the end clamped to the audio
    assert np.allclose(got, want, atol=0.031)  # within one 30 ms frame
    kept, timemap = trim_silences(wave, options)
    assert len(kept) == sum(e - s for s, e in regions)
    assert trim_silences(_silence(4), options)[0].size == 0


def _reference_original(regions, seconds, is_end):
    """Walk the kept samples one by one (a loop reference for TimeMap.original)."""
    sample, position = int(round(seconds * SAMPLE_RATE)), 0
    for k, (start, end) in enumerate(regions):
        length = end - start
        last = k == len(regions) - 1
        if sample < position + length or (is_end and sample == position + length) or last:
            return (start + sample - position) / SAMPLE_RATE
        position += length
    raise AssertionError


def test_time_map_matches_a_sample_walk():
    regions = ((16000, 48000), (96000, 112000), (200000, 232000))
    timemap = TimeMap(regions)
    for seconds in np.arange(0, 5.01, 0.02):
        for is_end in (False, True):
            want = _reference_original(regions, float(seconds), is_end)
            assert timemap.original(float(seconds), is_end) == pytest.approx(want, abs=1e-9)
    assert timemap.original(2.0, is_end=True) == pytest.approx(3.0)  # end of the first region
    assert timemap.original(2.0) == pytest.approx(6.0)  # start of the second


def test_vad_options_are_checked():
    with pytest.raises(BabeloraError, match="unknown VAD method 'webrtc'"):
        VadOptions(method="webrtc")
    with pytest.raises(BabeloraError, match="min_silence_seconds"):
        VadOptions(min_silence_seconds=0)


def test_silero_vad_when_installed_cuts_the_long_silence():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("faster_whisper")
    rng = np.random.default_rng(0)
    burst = (0.2 * rng.standard_normal(SAMPLE_RATE)).astype("float32")
    wave = np.concatenate([_silence(1), burst, _silence(6), burst])
    kept, timemap = trim_silences(wave, VadOptions(method="silero"))
    assert len(kept) < len(wave)  # something was cut; whether noise counts as speech is Silero's
