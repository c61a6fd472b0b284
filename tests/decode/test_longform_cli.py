"""End-to-end: `babelora transcribe/translate --output-format txt|json|srt|vtt` on tiny.en, and
the command-line errors of long-form decoding (refused before the model loads)."""

from __future__ import annotations

import json
import re

import pytest
from reference.speech import needs_espeak, speak

from babelora.cli.main import main

MODEL = ("--model", "tiny.en", "--no-progress")
CUE = re.compile(r"^\d\d:\d\d:\d\d([,.])\d\d\d --> \d\d:\d\d:\d\d\1\d\d\d$")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return [
        speak("Please correct the error below.", root / "one.wav"),
        speak("The train leaves at seven.", root / "two.wav"),
    ]


@pytest.mark.slow
@needs_espeak
def test_every_output_format(clips, tmp_path, capsys):
    # srt on stdout (one input, no --out)
    assert main(["transcribe", str(clips[0]), "--output-format", "srt", *MODEL]) == 0
    srt = capsys.readouterr().out
    lines = srt.splitlines()
    assert lines[0] == "1" and CUE.match(lines[1]) and lines[1][8] == ","
    assert lines[2] == "Please correct the error below." and srt.endswith("\n\n")
    # vtt, json, txt: a folder with one file per input
    for fmt in ("vtt", "json", "txt"):
        out = tmp_path / fmt
        assert main(["transcribe", *map(str, clips), "-f", fmt, "--out", str(out), *MODEL]) == 0
        files = sorted(p.name for p in out.iterdir())
        assert files == [f"one.{fmt}", f"two.{fmt}"]
    body = json.loads((tmp_path / "json" / "one.json").read_text())
    assert body["text"] == "Please correct the error below." and body["language"] == "en"
    seg = body["segments"][0]
    assert 0.0 <= seg["start"] < seg["end"] <= body["duration"]
    two = json.loads((tmp_path / "json" / "two.json").read_text())["text"]  # tiny.en's words
    vtt = (tmp_path / "vtt" / "two.vtt").read_text().splitlines()
    assert vtt[:2] == ["WEBVTT", ""] and CUE.match(vtt[2]) and vtt[2][8] == "."
    assert vtt[3] == two and two.startswith("The train")
    assert (tmp_path / "txt" / "two.txt").read_text() == two + "\n"
    # one input, --out naming a file; translate takes the same options
    target = tmp_path / "sub" / "a.srt"
    assert main(["translate", str(clips[0]), "-f", "srt", "-o", str(target), *MODEL]) == 0
    assert target.read_text().startswith("1\n00:00:00,000 --> ")


@needs_espeak
def test_timestamps_put_segments_into_the_jsonl(clips, tmp_path):
    out = tmp_path / "h.jsonl"
    args = ["transcribe", str(clips[1]), "--timestamps", "--out", str(out), *MODEL]
    assert main(args) == 0
    row = json.loads(out.read_text())
    assert row["hypothesis"].startswith("The train")
    assert [s["text"].strip() for s in row["segments"]] == [row["hypothesis"]]


def test_bad_longform_arguments(tmp_path, tone_wav, capsys):
    a, b = str(tone_wav(0.5, name="a.wav")), str(tone_wav(0.5, name="b.wav"))
    (tmp_path / "x").mkdir()
    c = str(tone_wav(0.5, name="x/a.wav"))
    cases = [
        ([a, b, "-f", "srt"], "--output-format srt with 2 inputs: give --out FOLDER"),
        ([a, c, "-f", "srt", "-o", str(tmp_path / "o")], "would both be written to"),
        ([a, b, "-f", "txt", "-o", a], "not a folder"),
        ([a, "--timestamps", "--no-speech-threshold", "1.5"], "between 0 and 1, got 1.5"),
        ([a, "--timestamps", "--vad", "energy", "--vad-min-silence", "0"], "must be > 0"),
    ]
    for args, message in cases:
        assert main(["transcribe", *args, *MODEL]) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit):
        main(["transcribe", a, "-f", "docx"])
    assert "invalid choice: 'docx'" in capsys.readouterr().err
