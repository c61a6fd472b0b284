"""Manifest rows without `lang`: accepted for decoding and evaluation (`require_lang=False`),
refused by default and by training with a one-line error naming the row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from babelora.data.manifest import read_manifest, write_manifest
from babelora.errors import ManifestError

ROWS = [
    {"id": "a", "audio_filepath": "a.wav", "duration": 1.0, "lang": "de", "text": "hallo"},
    {"id": "b", "audio_filepath": "b.wav", "duration": 1.5, "text": "bonjour"},
    {
        "id": "c",
        "audio_filepath": "c.wav",
        "duration": 2.0,
        "task": "st",
        "text": "hola",
        "translation": "hello",
        "target_lang": "en",
    },
]


def write(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_rows_without_lang_read_for_decoding(tmp_path):
    utts = read_manifest(write(tmp_path / "m.jsonl"), require_lang=False)
    assert [u.lang for u in utts] == ["de", None, None]
    assert utts[1].output_lang is None and utts[1].reference == "bonjour"
    assert utts[2].output_lang == "en" and utts[2].reference == "hello"
    # a restriction to some languages applies to the rows that have one
    some = read_manifest(tmp_path / "m.jsonl", langs=["de"], require_lang=False)
    assert [u.id for u in some] == ["a", "b", "c"]
    with pytest.raises(ManifestError, match=r"m.jsonl:1: field 'lang'"):
        read_manifest(tmp_path / "m.jsonl", langs=["fr"], require_lang=False)
    # a given language is still validated
    bad = write(tmp_path / "bad.jsonl", [dict(ROWS[0], lang="klingon"), ROWS[1]])
    with pytest.raises(ManifestError, match=r"bad.jsonl:1: field 'lang'"):
        read_manifest(bad, require_lang=False)


def test_round_trip_leaves_lang_out(tmp_path):
    utts = read_manifest(write(tmp_path / "m.jsonl"), require_lang=False)
    out = write_manifest(utts, tmp_path / "copy.jsonl")
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert "lang" in lines[0] and "lang" not in lines[1] and "lang" not in lines[2]
    again = read_manifest(out, require_lang=False)
    assert [(u.id, u.lang) for u in again] == [(u.id, u.lang) for u in utts]


def test_default_reader_refuses_and_names_the_row(tmp_path):
    path = write(tmp_path / "m.jsonl")
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:2: field 'lang' is missing (id 'b')") and "\n" not in msg
    assert "training needs" in msg


def test_training_refuses_rows_without_lang(tmp_path):
    from babelora.train.data import read_manifests

    path = write(tmp_path / "train.jsonl", [ROWS[0], ROWS[2]])
    with pytest.raises(ManifestError, match=r"train.jsonl:2: field 'lang' is missing \(id 'c'\)"):
        read_manifests([str(path)], None)


def test_collected_errors_skip_only_the_bad_row(tmp_path):
    errors: list[ManifestError] = []
    utts = read_manifest(write(tmp_path / "m.jsonl"), errors=errors)
    assert [u.id for u in utts] == ["a"]
    assert [str(e).split(": field")[0] for e in errors] == [
        f"{tmp_path / 'm.jsonl'}:2",
        f"{tmp_path / 'm.jsonl'}:3",
    ]
