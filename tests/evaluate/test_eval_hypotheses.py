"""Reading hypotheses JSONL: valid lines, aliases, and clear errors naming file, line, field."""

import json

import pytest

from babelora.errors import ManifestError
from babelora.evaluate.hypotheses import Hypothesis, read_hypotheses


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_fields_and_aliases(tmp_path):
    path = write(
        tmp_path / "h.jsonl",
        [
            json.dumps({"id": "a", "hypothesis": "hallo", "lang_used": "DE", "time": 0.1}),
            "",
            json.dumps({"id": 7, "pred_text": "x", "lang_source": "predicted"}),
            json.dumps({"id": "c", "hyp": None}),
            json.dumps({"id": "d", "error": "AudioError: empty audio"}),
        ],
    )
    hyps = read_hypotheses(path)
    assert hyps["a"] == Hypothesis("a", "hallo", "de", None)
    assert hyps["7"] == Hypothesis("7", "x", None, "predicted")
    assert hyps["c"].hypothesis == ""
    assert hyps["d"] == Hypothesis("d", "", error="AudioError: empty audio")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "hypothesis": "x"', "h.jsonl:2: not valid JSON"),
        ('["a", "x"]', "h.jsonl:2: expected a JSON object, got list"),
        ('{"hypothesis": "x"}', "h.jsonl:2: field 'id' is missing"),
        ('{"id": "b"}', "h.jsonl:2: field 'hypothesis' is missing"),
        ('{"id": "b", "hypothesis": 3}', "h.jsonl:2: field 'hypothesis' must be a string"),
        ('{"id": "b", "hypothesis": "x", "lang_used": "xx"}', "h.jsonl:2: field 'lang_used'"),
        ('{"id": "b", "hypothesis": "x", "lang_source": "oracle"}', "field 'lang_source'"),
        ('{"id": "a", "hypothesis": "y"}', "h.jsonl:2: field 'id' 'a' is a duplicate"),
    ],
)
def test_malformed_lines_are_named(tmp_path, line, message):
    path = write(tmp_path / "h.jsonl", ['{"id": "a", "hypothesis": "x"}', line])
    with pytest.raises(ManifestError, match=message.replace("[", r"\[")):
        read_hypotheses(path)


def test_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="hypotheses file not found"):
        read_hypotheses(tmp_path / "nope.jsonl")
