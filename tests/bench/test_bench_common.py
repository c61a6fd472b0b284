"""bench/common.py: the per-(language, task) test sample and the compressed hypotheses files
that `babelora score` reads back."""

from __future__ import annotations

import importlib.util
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
