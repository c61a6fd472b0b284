"""The response formats of OpenAI's audio API: json, text, verbose_json, srt, vtt.

babelora decodes without timestamps, so a transcript is one segment spanning the whole audio
(srt/vtt: one cue). verbose_json adds the language (its English name, as OpenAI gives it),
the duration, and under `babelora` the language code, whether it was given or predicted, and
which experts decoded it.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse, Response

from babelora.languages import LANG_NAMES

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


def timestamp(seconds: float, sep: str) -> str:
    """HH:MM:SS<sep>mmm (srt uses ',', vtt '.')."""
    ms = max(0, int(round(seconds * 1000)))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(text: str, duration: float) -> str:
    if not text:
        return ""
    return f"1\n{timestamp(0, ',')} --> {timestamp(duration, ',')}\n{text}\n\n"


def vtt(text: str, duration: float) -> str:
    cue = f"{timestamp(0, '.')} --> {timestamp(duration, '.')}\n{text}\n\n" if text else ""
    return "WEBVTT\n\n" + cue


def verbose(outcome: Any, task: str, duration: float, temperature: float) -> dict[str, Any]:
    text = outcome.text
    body: dict[str, Any] = {
        "task": "translate" if task == "st" else "transcribe",
        "language": LANG_NAMES.get(outcome.lang, outcome.lang),
        "duration": round(duration, 3),
        "text": text,
        "segments": [
            {
                "id": 0,
                "seek": 0,
                "start": 0.0,
                "end": round(duration, 3),
                "text": text,
                "temperature": temperature,
            }
        ]
        if text
        else [],
        "babelora": {
            "language": outcome.lang,
            "language_source": outcome.lang_source,
            "expert": outcome.expert,
        },
    }
    return body


def render(fmt: str, outcome: Any, task: str, duration: float, temperature: float) -> Response:
    """The HTTP response for a decoded request in response format `fmt`."""
    if fmt == "json":
        return JSONResponse({"text": outcome.text})
    if fmt == "verbose_json":
        return JSONResponse(verbose(outcome, task, duration, temperature))
    if fmt == "srt":
        return PlainTextResponse(srt(outcome.text, duration))
    if fmt == "vtt":
        return PlainTextResponse(vtt(outcome.text, duration), media_type="text/vtt")
    return PlainTextResponse(outcome.text + "\n")
