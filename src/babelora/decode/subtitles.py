"""Transcript files from timed segments: txt, json, srt (SubRip) and vtt (WebVTT).

Segments are dicts with `start`, `end` (seconds) and `text` (babelora.decode.longform's
`Segment.to_json`). SRT: cues numbered from 1, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, a blank line
after each. WebVTT: a `WEBVTT` header line and a blank line, then cues `HH:MM:SS.mmm -->
HH:MM:SS.mmm`; `&`, `<` and `>` in the text are escaped as the format requires. A cue's text
never contains `-->` (it would end the timing line's meaning); empty segments are left out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

OUTPUT_FORMATS = ("txt", "json", "srt", "vtt")


def format_timestamp(seconds: float, sep: str) -> str:
    """HH:MM:SS<sep>mmm, rounded to the millisecond (srt uses ',', vtt '.')."""
    ms = max(0, int(round(seconds * 1000)))
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms:03d}"


def _cue_text(text: str) -> str:
    return " ".join(text.split()).replace("-->", "->")


def _cues(segments: Sequence[dict]) -> list[tuple[float, float, str]]:
    cues = []
    for seg in segments:
        text = _cue_text(str(seg.get("text", "")))
        if text:
            cues.append((float(seg["start"]), float(seg["end"]), text))
    return cues


def to_srt(segments: Sequence[dict]) -> str:
    return "".join(
        f"{i}\n{format_timestamp(start, ',')} --> {format_timestamp(end, ',')}\n{text}\n\n"
        for i, (start, end, text) in enumerate(_cues(segments), start=1)
    )


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(segments: Sequence[dict]) -> str:
    body = "".join(
        f"{format_timestamp(start, '.')} --> {format_timestamp(end, '.')}\n{_vtt_escape(text)}\n\n"
        for start, end, text in _cues(segments)
    )
    return "WEBVTT\n\n" + body


def to_txt(segments: Sequence[dict]) -> str:
    """One line per segment."""
    return "".join(f"{text}\n" for _, _, text in _cues(segments))


def to_json(text: str, segments: Sequence[dict], **info: Any) -> str:
    """`{"text", ..., "segments"}` (openai-whisper's json output, plus `info`)."""
    body = {"text": text, **info, "segments": list(segments)}
    return json.dumps(body, ensure_ascii=False, indent=1) + "\n"


def render(fmt: str, text: str, segments: Sequence[dict], **info: Any) -> str:
    """The file content of a transcript in output format `fmt` (one of OUTPUT_FORMATS)."""
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    if fmt == "txt":
        return to_txt(segments) if segments else (text + "\n" if text else "")
    if fmt == "json":
        return to_json(text, segments, **info)
    raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
