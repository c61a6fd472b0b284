"""Manifest reading: every bad line names file, line and field."""

from __future__ import annotations

import json

import pytest

from babelora.data.manifest import Utterance, read_manifest, write_manifest
from babelora.errors import ManifestError

GOOD = {
    "id": "a",
    "audio_filepath": "a.wav",
    "duration": 1.5,
    "lang": "de",
    "task": "asr",
    "text": "hallo",
}


def _write(tmp_path, rows, name="m.jsonl"):
    path = tmp_path / name
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_and_resolves_paths(tmp_path):
    st = dict(
        GOOD,
        id="b",
        task="st",
        translation="hello",
        target_lang="en",
        segments=[{"start": 0, "end": 0.7, "lang": "de"}, {"start": 0.7, "end": 1.5, "lang": "en"}],
    )
    utts = read_manifest(_write(tmp_path, [GOOD, st]))
    assert utts[0].audio_filepath == str(tmp_path / "a.wav")
    assert utts[1].reference == "hello" and utts[1].output_lang == "en"
    assert utts[1].segments[1].lang == "en"


def test_aliases_from_other_toolkits(tmp_path):
    row = {
        "key": "k1",
        "wav": "/abs/x.wav",
        "duration": 2,
        "source_lang": "fr",
        "sentence": "salut",
    }
    (utt,) = read_manifest(_write(tmp_path, [row]))
    assert (utt.id, utt.audio_filepath, utt.lang, utt.text) == ("k1", "/abs/x.wav", "fr", "salut")


@pytest.mark.parametrize(
    "row, words",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({k: v for k, v in GOOD.items() if k != "lang"}, "field 'lang' is missing"),
        (dict(GOOD, duration="long"), "field 'duration' must be"),
        (dict(GOOD, duration=-1), "field 'duration' must be a positive"),
        (dict(GOOD, lang="klingon"), "field 'lang'"),
        (dict(GOOD, task="tts"), "field 'task'"),
        (dict(GOOD, task="st"), "field 'translation' is required"),
        (dict(GOOD, task="st", translation="x", target_lang="zz"), "field 'target_lang'"),
        (dict(GOOD, segments=[{"start": 1, "end": 0.5, "lang": "de"}]), "segments[0]"),
        (dict(GOOD, segments="x"), "field 'segments' must be a list"),
        (dict(GOOD, audio_filepath=""), "field 'audio_filepath' is empty"),
        (dict(GOOD, text=5), "field 'text' must be str"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, row, words):
    path = _write(tmp_path, [GOOD, row])
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert f"{path}:2:" in str(err.value) and words in str(err.value)


def test_duplicate_ids_and_collecting_errors(tmp_path):
    path = _write(tmp_path, [GOOD, GOOD, dict(GOOD, id="c"), "oops"])
    with pytest.raises(ManifestError, match="duplicate"):
        read_manifest(path)
    errors: list = []
    utts = read_manifest(path, errors=errors)
    assert [u.id for u in utts] == ["a", "c"] and len(errors) == 2


def test_non_utf8_line_is_a_bad_line_not_a_crash(tmp_path):
    """A line in another encoding (here Latin-1) names file, line, byte and column, and the
    lines around it still load when errors are collected."""
    path = tmp_path / "latin1.jsonl"
    bad = json.dumps(dict(GOOD, id="b", text="@")).replace('"@"', '"\u00e9t\u00e9"')
    rows = [json.dumps(GOOD), bad, json.dumps(dict(GOOD, id="c", text="gr\u00fc\u00df"))]
    path.write_bytes(rows[0].encode() + b"\n" + bad.encode("latin-1") + b"\n")
    with open(path, "a", encoding="utf-8") as f:
        f.write(rows[2] + "\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    column = bad.index("\u00e9") + 1
    assert str(err.value).startswith(f"{path}:2: not valid UTF-8 (byte 0xe9 at column {column})")
    errors: list = []
    utts = read_manifest(path, errors=errors)
    assert [u.id for u in utts] == ["a", "c"] and utts[1].text == "gr\u00fc\u00df"
    assert len(errors) == 1 and f"{path}:2:" in str(errors[0])


def test_data_root_containment(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    path = _write(root, [dict(GOOD, audio_filepath="../../etc/passwd")])
    with pytest.raises(ManifestError, match="escapes the data root"):
        read_manifest(path, data_root=root)
    assert read_manifest(_write(root, [GOOD], "ok.jsonl"), data_root=root)


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "none.jsonl")


def test_write_round_trip(tmp_path):
    utt = Utterance(
        "x", str(tmp_path / "audio" / "x.wav"), 1.0, "it", text="ciao", extra={"speaker": "s1"}
    )
    path = write_manifest([utt], tmp_path / "out.jsonl")
    row = json.loads(path.read_text())
    assert row["audio_filepath"] == "audio/x.wav" and row["speaker"] == "s1"
    (back,) = read_manifest(path)
    assert back.audio_filepath == utt.audio_filepath and back.extra == {"speaker": "s1"}
