"""The converted offline tiny.en transcribes like the original (faster-whisper on CTranslate2)."""

from __future__ import annotations

import pytest
from reference.speech import needs_espeak, speak

from babelora.decode.runner import Request, RunnerOptions, decode_requests
from babelora.decode.search import DecodeOptions
from babelora.models.offline import offline_model_path

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please correct the error below.",
    "I would like a cup of coffee, please.",
    "This field is required.",
]


@needs_espeak
def test_greedy_transcripts_equal_faster_whisper(tmp_path, real_handle):
    faster_whisper = pytest.importorskip("faster_whisper")
    files = [speak(s, tmp_path / f"s{i}.wav") for i, s in enumerate(SENTENCES)]
    model = faster_whisper.WhisperModel(
        str(offline_model_path("tiny.en")), device="cpu", compute_type="float32", cpu_threads=2
    )
    theirs = []
    for f in files:
        segments, _ = model.transcribe(
            str(f),
            language="en",
            beam_size=1,
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        theirs.append(" ".join(s.text.strip() for s in segments))
    ours = decode_requests(
        real_handle,
        [Request(f.name, str(f)) for f in files],
        DecodeOptions(beam_size=1),
        RunnerOptions(pad_to_30s=True, show_progress=False),
    )
    assert [r.hypothesis for r in ours] == theirs
    assert ours[1].hypothesis == "Please correct the error below."
