"""The response formats of OpenAI's audio API: json, text, verbose_json, srt, vtt.

verbose_json, srt and vtt carry timed segments: the app decodes those requests long-form with
timestamps (babelora.decode.longform), and the cues are its segments (babelora.decode.subtitles
writes them). verbose_json adds the language (its English name, as OpenAI gives it), the
duration, each segment's OpenAI fields, and under `babelora` the language code, whether it was
given or predicted, and which experts decoded it. An outcome without segments (decoded without
timestamps) is one segment spanning the audio.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse, Response

from babelora.decode.subtitles import format_timestamp, to_srt, to_vtt
from babelora.languages import LANG_NAMES

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
TIMED_FORMATS = ("verbose_json", "srt", "vtt")


def timestamp(seconds: float, sep: str) -> str:
    """HH:MM:SS<sep>mmm (srt uses ',', vtt '.')."""
    return format_timestamp(seconds, sep)


def segments_of(outcome: Any, duration: float) -> list[dict]:
    """The outcome's timed segments, or one spanning the audio when it has none."""
    if outcome.segments is not None:
        return list(outcome.segments)
    if not outcome.text:
        return []
    return [{"id": 0, "seek": 0.0, "start": 0.0, "end": round(duration, 3), "text": outcome.text}]


def srt(outcome: Any, duration: float) -> str:
    return to_srt(segments_of(outcome, duration))


def vtt(outcome: Any, duration: float) -> str:
    return to_vtt(segments_of(outcome, duration))


def _openai_segment(seg: dict, temperature: float) -> dict[str, Any]:
    """A segment in OpenAI's verbose_json shape (seek in mel frames, as OpenAI gives it)."""
    return {
        "id": seg["id"],
        "seek": int(round(float(seg.get("seek", 0.0)) * 100)),
        "start": seg["start"],
        "end": seg["end"],
        "text": seg["text"],
        "tokens": seg.get("tokens", []),
        "temperature": temperature,
        "avg_logprob": seg.get("avg_logprob", 0.0),
        "no_speech_prob": seg.get("no_speech_prob", 0.0),
    }


def verbose(outcome: Any, task: str, duration: float, temperature: float) -> dict[str, Any]:
    return {
        "task": "translate" if task == "st" else "transcribe",
        "language": LANG_NAMES.get(outcome.lang, outcome.lang),
        "duration": round(duration, 3),
        "text": outcome.text,
        "segments": [_openai_segment(s, temperature) for s in segments_of(outcome, duration)],
        "babelora": {
            "language": outcome.lang,
            "language_source": outcome.lang_source,
            "expert": outcome.expert,
        },
    }


def render(fmt: str, outcome: Any, task: str, duration: float, temperature: float) -> Response:
    """The HTTP response for a decoded request in response format `fmt`."""
    if fmt == "json":
        return JSONResponse({"text": outcome.text})
    if fmt == "verbose_json":
        return JSONResponse(verbose(outcome, task, duration, temperature))
    if fmt == "srt":
        return PlainTextResponse(srt(outcome, duration))
    if fmt == "vtt":
        return PlainTextResponse(vtt(outcome, duration), media_type="text/vtt")
    return PlainTextResponse(outcome.text + "\n")
