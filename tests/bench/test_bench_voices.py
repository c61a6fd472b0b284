"""bench/voices.py: the sentences it speaks, its resumable hypothesis cache, and its scoring
(per-cell WER/CER and paired engine differences) on hand-made hypotheses."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "voices.py"


def _voices():
    spec = importlib.util.spec_from_file_location("bench_voices_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_sentences_come_from_the_test_split_with_three_words_or_more():
    from babelora.data.corpus.splits import split_pairs
    from babelora.data.corpus.text_sources import text_pairs

    bench = _voices()
    texts = ("gettext", "cldr", "numbers")  # Weblate's wheel is not in the tests' cache
    got = bench.sentences("de", 30, seed=0, texts=texts)
    assert len(got) == 30 and len(set(got)) == 30
    assert all(len(t.split()) >= 3 for t in got)
    train = split_pairs({"de": text_pairs("de", texts)}, 0, (0.8, 0.1, 0.1))["train"]
    assert not set(got) & {p.text for p in train["de"]}
    assert bench.sentences("de", 30, seed=0, texts=texts) == got
    en = bench.sentences("en", 20, seed=0, texts=texts)
    assert len(en) == 20 and not set(en) & set(got)


def test_cache_resumes_and_ignores_a_torn_line(tmp_path):
    bench = _voices()
    cache = tmp_path / "hyps_base.jsonl"
    assert bench.read_cache(cache) == {}
    rows = [{"id": "a", "hyp": "eins"}, {"id": "b", "hyp": "zwei"}]
    cache.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "c", "hy', "utf-8")
    assert bench.read_cache(cache) == {"a": "eins", "b": "zwei"}


def test_score_gives_cell_rates_and_paired_differences():
    bench = _voices()
    refs = ["das ist gut", "ein zwei drei", "guten tag allerseits"]
    cells = {
        ("de", "espeak", "synthetic"): [(r, f"e{i}") for i, r in enumerate(refs)],
        ("de", "pico", "synthetic"): [(r, f"p{i}") for i, r in enumerate(refs)],
    }
    hyps = {"e0": "das ist", "e1": "ein zwei drei", "e2": "guten", "p0": "das ist gut"}
    hyps |= {"p1": "ein zwei drei", "p2": "guten tag allerseits"}
    rows, diffs = bench.score(cells, hyps)
    espeak = next(r for r in rows if r["engine"] == "espeak")
    pico = next(r for r in rows if r["engine"] == "pico")
    assert espeak["wer"] == pytest.approx(100 * 3 / 9, abs=0.01) and pico["wer"] == 0.0
    assert espeak["n"] == 3 and espeak["wer_ci"][0] <= espeak["wer"] <= espeak["wer_ci"][1]
    (wer,) = [d for d in diffs if d["metric"] == "wer"]
    assert (wer["a"], wer["b"]) == ("espeak", "pico")
    assert wer["b_minus_a"] == pytest.approx(-100 * 3 / 9, abs=0.01)
    assert wer["ci"][0] <= wer["b_minus_a"] <= wer["ci"][1] <= 0
    assert "| synthetic | de | pico - espeak |" in bench.table(rows, diffs)
