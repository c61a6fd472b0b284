"""Transcript files: SRT and WebVTT cue format, txt and json."""

from __future__ import annotations

import json

import pytest

from babelora.decode.subtitles import format_timestamp, render, to_srt, to_vtt

SEGMENTS = [
    {"start": 0.0, "end": 2.5, "text": " Hello there."},
    {"start": 2.5, "end": 2.5004, "text": "  "},  # empty: no cue
    {"start": 3661.0015, "end": 3725.9999, "text": " a < b & c --> d"},
]


def test_timestamps_round_to_the_millisecond_with_hours():
    assert format_timestamp(0, ",") == "00:00:00,000"
    assert format_timestamp(3661.0015, ",") == "01:01:01,002"
    assert format_timestamp(59.9996, ".") == "00:01:00.000"
    assert format_timestamp(-0.2, ".") == "00:00:00.000"


def test_srt_numbers_cues_from_one_with_comma_millis():
    assert to_srt(SEGMENTS) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
        "2\n01:01:01,002 --> 01:02:06,000\na < b & c -> d\n\n"
    )


def test_vtt_has_its_header_dot_millis_and_escapes_text():
    assert to_vtt(SEGMENTS) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:02.500\nHello there.\n\n"
        "01:01:01.002 --> 01:02:06.000\na &lt; b &amp; c -&gt; d\n\n"
    )
    assert to_vtt([]) == "WEBVTT\n\n"


def test_txt_and_json():
    assert render("txt", "Hello there. a", SEGMENTS) == "Hello there.\na < b & c -> d\n"
    assert render("txt", "plain", []) == "plain\n"
    body = json.loads(render("json", "Hello", SEGMENTS[:1], language="en", duration=2.5))
    assert body == {"text": "Hello", "language": "en", "duration": 2.5, "segments": SEGMENTS[:1]}
    with pytest.raises(ValueError, match="unknown output format 'doc'"):
        render("doc", "", [])
