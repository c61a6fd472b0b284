"""bench/lid_memo.py on a tiny random multilingual Whisper: the memo system encodes each clip
once and the plain one twice, with identical predictions and hypotheses."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from reference.corpus import write_corpus

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_lid_memo_bench_runs_both_systems_side_by_side(tmp_path):
    protocol, bench = load("protocol"), load("lid_memo")
    model = protocol.tiny_multilingual(tmp_path / "model")
    corpus = write_corpus(tmp_path / "corpus", {"de": 3, "fr": 2}, seed=0, name="test")
    out = tmp_path / "lid_memo.json"
    argv = ["--manifest", str(corpus), "--langs", "de,fr", "--model", str(model), "--rounds", "1",
            "--max-new-tokens", "4", "--threads", "1", "--out", str(out)]  # fmt: skip
    bench.main(argv)
    report = json.loads(out.read_text())
    n = report["rows"]
    assert n == 5
    assert report["rounds"]["plain"][0]["encoded_clips"] == 2 * n  # LID, then decoding
    assert report["rounds"]["memo"][0]["encoded_clips"] == n
    assert report["identical"] == {"predicted_language": n, "hypothesis": n, "of": n}
    assert report["speedup"] > 0
