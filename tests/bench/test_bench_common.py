"""bench/common.py: the per-(language, task) test sample and the compressed hypotheses files
that `babelora score` reads back."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from babelora.evaluate.hypotheses import read_hypotheses

COMMON = Path(__file__).resolve().parents[2] / "bench" / "common.py"


def _common():
    spec = importlib.util.spec_from_file_location("bench_common_under_test", COMMON)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_first_per_group_keeps_order_and_counts():
    common = _common()
    rows = [{"id": i, "lang": lang, "task": task} for i, (lang, task) in enumerate(
        [("de", "asr"), ("de", "st"), ("de", "asr"), ("fr", "asr"), ("de", "asr"), ("fr", "asr")]
    )]  # fmt: skip
    got = [r["id"] for r in common.first_per_group(rows, 2)]
    assert got == [0, 1, 2, 3, 5]  # the third de/asr row (4) is dropped
    assert common.first_per_group(rows, None) == rows
    assert [r["id"] for r in common.first_per_group(rows, 1, key=lambda r: r["lang"])] == [0, 3]


def test_hypotheses_round_trip_through_gzip(tmp_path):
    common = _common()
    rows = [{"id": "a", "hypothesis": "größer", "lang_used": "de", "lang_source": "given"}]
    path = common.write_hypotheses(tmp_path / "t" / "sys.test.jsonl.gz", rows)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    hyps = read_hypotheses(path)
    assert hyps["a"].hypothesis == "größer" and hyps["a"].lang_source == "given"


def test_zero_shot_rows_are_reused_only_for_the_same_input(tmp_path):
    """bench/protocol.py `reused_zero_shot`: another table's zero-shot rows are taken only when
    that run sampled the same manifest with the same model and token limit."""
    from types import SimpleNamespace

    sys.path.insert(0, str(COMMON.parent))
    spec = importlib.util.spec_from_file_location(
        "bench_protocol_under_test", COMMON.parent / "protocol.py"
    )
    protocol = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = protocol
    spec.loader.exec_module(protocol)

    theirs, ours = tmp_path / "results" / "experts", tmp_path / "mine"
    theirs.mkdir(parents=True)
    ours.mkdir()
    report = tmp_path / "results" / "experts.json"
    report.write_text(json.dumps({"budget": {"model": "base", "max_new_tokens": 96},
                                  "hypotheses": str(theirs)}))  # fmt: skip
    manifest = '{"id": "a"}\n{"id": "b"}\n'
    (theirs / "test.manifest.jsonl").write_text(manifest)
    (ours / "test.manifest.jsonl").write_text(manifest)
    rows = [{"id": "a", "hyp": "x"}, {"id": "b", "hyp": "y"}]
    protocol.save_rows(theirs, "zero_shot", "test", rows)
    ts = SimpleNamespace(name="test", utts=[SimpleNamespace(id="a"), SimpleNamespace(id="b")])

    got, why = protocol.reused_zero_shot(report, ts, ours, "base", 96)
    assert got == rows and "reused" in why
    assert protocol.read_rows(ours / "zero_shot.test.jsonl.gz") == rows  # kept beside ours
    assert protocol.reused_zero_shot(report, ts, ours, "tiny.en", 96)[0] is None
    assert protocol.reused_zero_shot(report, ts, ours, "base", 64)[0] is None
    assert protocol.reused_zero_shot(None, ts, ours, "base", 96)[0] is None
    assert protocol.reused_zero_shot(tmp_path / "none.json", ts, ours, "base", 96)[0] is None
    (ours / "test.manifest.jsonl").write_text('{"id": "a"}\n{"id": "c"}\n')
    got, why = protocol.reused_zero_shot(report, ts, ours, "base", 96)
    assert got is None and "not this run's test sample" in why
    (ours / "test.manifest.jsonl").write_text(manifest)
    other = SimpleNamespace(name="test", utts=[SimpleNamespace(id="b"), SimpleNamespace(id="a")])
    assert protocol.reused_zero_shot(report, other, ours, "base", 96)[0] is None
