"""Bootstrap confidence intervals for corpus metrics, and paired intervals for differences.

Corpus metrics (WER, CER, BLEU, chrF) are not means of per-utterance scores: they are computed
from statistics summed over the corpus (errors and reference words; BLEU's n-gram matches and
lengths). The bootstrap therefore resamples utterances, sums their statistics and recomputes
the metric (Koehn 2004; sacrebleu's paired bootstrap does the same for BLEU). A *paired*
interval draws the same utterances for both systems, so it measures the difference on one
test set, not the noise of two independent ones.

`strata` (one label per utterance, e.g. its language) resamples within each stratum and
averages the metric over strata: the interval of a macro average over languages.

The interval is the percentile interval of the resampled statistic (default 95 %, 1,000
resamples, seed 0): all three are options, recorded in the result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from babelora.evaluate.metrics import bleu_tokenizer, error_rate

Metric = Callable[[np.ndarray], float]
"""A corpus metric computed from summed statistics (one vector of the stats' columns)."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    level: float = 0.95
    n_resamples: int = 1000

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely on one side of zero (a difference that holds)."""
        return self.low > 0 or self.high < 0

    def format(self, digits: int = 1) -> str:
        """'-3.2 [-5.1, -1.4]'."""
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_json(self) -> dict[str, float]:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "n_resamples": self.n_resamples,
        }


# ---------------------------------------------------------------------------- per-utterance stats
def wer_stats(
    refs: Sequence[str], hyps: Sequence[str], lang: str, normalize: bool = True
) -> np.ndarray:
    """(n, 2) per-utterance [errors, reference length] of WER (CER for unspaced scripts)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    rows = []
    for ref, hyp in zip(refs, hyps, strict=True):
        rate = error_rate([hyp], [ref], lang, normalize=normalize)
        rows.append((rate.errors, rate.ref_len))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def wer_from_stats(summed: np.ndarray) -> float:
    """100 * errors / max(reference length, 1), as `metrics.wer` pools it."""
    return 100.0 * float(summed[0]) / max(float(summed[1]), 1.0)


@functools.cache
def _bleu_metric(lang: str | None):
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=bleu_tokenizer(lang))


def bleu_stats(refs: Sequence[str], hyps: Sequence[str], lang: str | None = None) -> np.ndarray:
    """(n, 2 + 2 * 4) per-utterance BLEU statistics (sacrebleu's: lengths, matches, totals)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    metric = _bleu_metric(lang)
    stats = metric._extract_corpus_statistics(list(hyps), [list(refs)])
    return np.asarray(stats, dtype=np.float64).reshape(len(refs), -1)


def bleu_from_stats(summed: np.ndarray, lang: str | None = None) -> float:
    """Corpus BLEU from summed `bleu_stats` (the tokenizer does not matter at this point)."""
    metric = _bleu_metric(lang)
    return float(metric._compute_score_from_stats([int(x) for x in summed]).score)


def chrf_stats(refs: Sequence[str], hyps: Sequence[str]) -> np.ndarray:
    """(n, k) per-utterance chrF statistics (sacrebleu's character/word n-gram counts)."""
    from sacrebleu.metrics import CHRF

    if len(refs) != len(hyps):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    stats = CHRF()._extract_corpus_statistics(list(hyps), [list(refs)])
    return np.asarray(stats, dtype=np.float64).reshape(len(refs), -1)


def chrf_from_stats(summed: np.ndarray) -> float:
    from sacrebleu.metrics import CHRF

    return float(CHRF()._compute_score_from_stats([int(x) for x in summed]).score)


# ----------------------------------------------------------------------------------- bootstrap
def _strata_indices(n: int, strata: Sequence[str] | None) -> list[np.ndarray]:
    if strata is None:
        return [np.arange(n)]
    if len(strata) != n:
        raise ValueError(f"{len(strata)} strata labels for {n} utterances")
    labels = np.asarray(list(strata), dtype=object)
    return [np.flatnonzero(labels == value) for value in dict.fromkeys(strata)]


def _macro(stats: np.ndarray, groups: list[np.ndarray], metric: Metric) -> float:
    return float(np.mean([metric(stats[g].sum(axis=0)) for g in groups]))


def _resampled(
    stats: list[np.ndarray],
    groups: list[np.ndarray],
    metric: Metric,
    n_resamples: int,
    seed: int,
) -> list[np.ndarray]:
    """Metric of each system on the same `n_resamples` resamples: [(R,) per system]."""
    rng = np.random.default_rng(seed)
    out = [np.zeros(n_resamples) for _ in stats]
    for g in groups:
        draws = g[rng.integers(0, len(g), size=(n_resamples, len(g)))]  # (R, len(g))
        for s, acc in zip(stats, out, strict=True):
            summed = s[draws].sum(axis=1)  # (R, k)
            acc += np.array([metric(row) for row in summed])
    return [acc / len(groups) for acc in out]


def _check(stats: np.ndarray, name: str) -> np.ndarray:
    stats = np.asarray(stats, dtype=np.float64)
    if stats.ndim != 2 or len(stats) == 0:
        raise ValueError(f"{name}: need per-utterance statistics of shape (n > 0, k)")
    return stats


def _interval(estimate: float, values: np.ndarray, level: float, n: int) -> Interval:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return Interval(float(estimate), float(low), float(high), level, n)


def bootstrap(
    stats: np.ndarray,
    metric: Metric,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    strata: Sequence[str] | None = None,
) -> Interval:
    """The metric of one system with its bootstrap interval."""
    stats = _check(stats, "stats")
    groups = _strata_indices(len(stats), strata)
    (values,) = _resampled([stats], groups, metric, n_resamples, seed)
    return _interval(_macro(stats, groups, metric), values, level, n_resamples)


def paired_bootstrap(
    stats_a: np.ndarray,
    stats_b: np.ndarray,
    metric: Metric,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    strata: Sequence[str] | None = None,
) -> Interval:
    """metric(B) - metric(A) with its paired bootstrap interval (same utterances drawn)."""
    stats_a, stats_b = _check(stats_a, "stats_a"), _check(stats_b, "stats_b")
    if len(stats_a) != len(stats_b):
        raise ValueError(
            f"paired bootstrap needs the same utterances: {len(stats_a)} vs {len(stats_b)}"
        )
    groups = _strata_indices(len(stats_a), strata)
    values_a, values_b = _resampled([stats_a, stats_b], groups, metric, n_resamples, seed)
    estimate = _macro(stats_b, groups, metric) - _macro(stats_a, groups, metric)
    return _interval(estimate, values_b - values_a, level, n_resamples)


def paired_wer(
    refs: Sequence[str],
    hyps_a: Sequence[str],
    hyps_b: Sequence[str],
    lang: str,
    **options,
) -> Interval:
    """WER(B) - WER(A) on the same references, with its paired 95 % interval."""
    return paired_bootstrap(
        wer_stats(refs, hyps_a, lang), wer_stats(refs, hyps_b, lang), wer_from_stats, **options
    )


def paired_bleu(
    refs: Sequence[str],
    hyps_a: Sequence[str],
    hyps_b: Sequence[str],
    lang: str | None = None,
    **options,
) -> Interval:
    """BLEU(B) - BLEU(A) on the same references, with its paired 95 % interval."""
    return paired_bootstrap(
        bleu_stats(refs, hyps_a, lang),
        bleu_stats(refs, hyps_b, lang),
        lambda s: bleu_from_stats(s, lang),
        **options,
    )
