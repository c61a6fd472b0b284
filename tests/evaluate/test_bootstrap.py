"""Bootstrap intervals: per-utterance stats re-derive the corpus metrics, the resampling equals a
plain loop, and a two-utterance case whose interval is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from babelora.evaluate import bootstrap as bs
from babelora.evaluate.metrics import bleu, cer, chrf, wer

REFS = ["the cat sat on the mat", "a dog ran", "hello world again", "one two three four five"]
HYPS = ["the cat sat on mat", "a dog ran away", "hello word again", "one two three four"]


def test_stats_sum_to_the_corpus_metrics():
    assert bs.wer_from_stats(bs.wer_stats(REFS, HYPS, "en").sum(0)) == pytest.approx(
        wer(HYPS, REFS, "en").score
    )
    assert bs.bleu_from_stats(bs.bleu_stats(REFS, HYPS, "en").sum(0), "en") == pytest.approx(
        bleu(HYPS, REFS, "en").score
    )
    assert bs.chrf_from_stats(bs.chrf_stats(REFS, HYPS).sum(0)) == pytest.approx(
        chrf(HYPS, REFS).score
    )


def test_unspaced_language_uses_characters():
    refs, hyps = ["今日は晴れです"], ["今日は雨です"]
    assert bs.wer_from_stats(bs.wer_stats(refs, hyps, "ja").sum(0)) == pytest.approx(
        cer(hyps, refs, "ja").score
    )


def test_hand_computed_two_utterance_case():
    """A errs on utterance 0 only, B on none: a resample draws utterance 0 twice (p=1/4, delta
    -100), once (p=1/2, -50) or never (p=1/4, 0): the 95 % interval is [-100, 0]."""
    a = np.array([[1.0, 1.0], [0.0, 1.0]])
    b = np.array([[0.0, 1.0], [0.0, 1.0]])
    got = bs.paired_bootstrap(a, b, bs.wer_from_stats, n_resamples=4000, seed=3)
    assert got.estimate == pytest.approx(-50.0)
    assert (got.low, got.high) == (-100.0, 0.0)
    assert not got.excludes_zero


def _loop_reference(a, b, metric, n, seed):
    rng = np.random.default_rng(seed)
    deltas = []
    idx = rng.integers(0, len(a), size=(n, len(a)))
    for row in idx:
        deltas.append(metric(b[row].sum(0)) - metric(a[row].sum(0)))
    return np.percentile(deltas, [2.5, 97.5])


def test_paired_equals_a_plain_loop():
    rng = np.random.default_rng(0)
    a = np.stack([rng.integers(0, 5, 50), rng.integers(3, 12, 50)], axis=1).astype(float)
    b = np.stack([rng.integers(0, 3, 50), a[:, 1]], axis=1)
    got = bs.paired_bootstrap(a, b, bs.wer_from_stats, n_resamples=300, seed=7)
    low, high = _loop_reference(a, b, bs.wer_from_stats, 300, 7)
    assert (got.low, got.high) == pytest.approx((low, high))
    assert got.estimate == pytest.approx(bs.wer_from_stats(b.sum(0)) - bs.wer_from_stats(a.sum(0)))
    assert got.excludes_zero and got.high < 0


def test_strata_give_the_macro_average():
    a = np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 10.0]])
    b = np.array([[0.0, 2.0], [0.0, 2.0], [0.0, 10.0]])
    got = bs.paired_bootstrap(a, b, bs.wer_from_stats, strata=["de", "de", "fr"])
    assert got.estimate == pytest.approx(-25.0)  # de: 50 -> 0, fr: 0 -> 0; mean of -50 and 0
    assert got.low == got.high == pytest.approx(-25.0)  # every de resample errs the same


def test_single_system_interval_contains_its_estimate():
    stats = bs.bleu_stats(REFS, HYPS, "en")
    got = bs.bootstrap(stats, lambda s: bs.bleu_from_stats(s, "en"), n_resamples=200)
    assert got.low <= got.estimate <= got.high
    assert got.format().count("[") == 1


def test_bad_inputs_are_clear():
    with pytest.raises(ValueError, match="same utterances"):
        bs.paired_bootstrap(np.ones((2, 2)), np.ones((3, 2)), bs.wer_from_stats)
    with pytest.raises(ValueError, match="shape"):
        bs.bootstrap(np.ones((0, 2)), bs.wer_from_stats)
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        bs.wer_stats(["a"], ["a", "b"], "en")
    with pytest.raises(ValueError, match="strata"):
        bs.bootstrap(np.ones((2, 2)), bs.wer_from_stats, strata=["de"])
