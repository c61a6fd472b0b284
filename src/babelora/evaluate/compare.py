"""Compare two systems on the same references: per-row differences with paired bootstrap 95 %
intervals (`bootstrap.py`).

Rows are the report's (`report.py`): one per ASR language (WER, or CER for unspaced scripts,
after Whisper's normalizer) and one per ST direction (sacrebleu BLEU with the target's
tokenizer). The macro rows (`asr`, `st`) average over languages, resampling within each
language. A difference is B - A: negative is better for an error rate, positive for BLEU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from babelora.data.manifest import Utterance
from babelora.errors import ManifestError
from babelora.evaluate import bootstrap as bs
from babelora.evaluate.hypotheses import Hypothesis
from babelora.evaluate.metrics import asr_metric
from babelora.evaluate.report import Reference, to_reference


@dataclass(frozen=True)
class CompareConfig:
    """Bootstrap settings of a comparison (documented defaults)."""

    n_resamples: int = 1000
    seed: int = 0
    level: float = 0.95
    allow_missing: bool = False  # score a missing hypothesis as an empty output


@dataclass(frozen=True)
class Difference:
    """metric(B) - metric(A) on one row, with both scores and the paired interval."""

    row: str  # "de" (ASR), "de-en" (ST), or the macro rows "asr" / "st"
    task: str
    metric: str  # "wer" | "cer" | "bleu" | "error_rate" (macro ASR)
    n: int
    a: float
    b: float
    delta: bs.Interval

    @property
    def better(self) -> str | None:
        """'a' or 'b' when the interval excludes zero, else None."""
        if not self.delta.excludes_zero:
            return None
        lower_is_better = self.metric != "bleu"
        b_wins = (self.delta.high < 0) if lower_is_better else (self.delta.low > 0)
        return "b" if b_wins else "a"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["delta"] = self.delta.to_json()
        out["better"] = self.better
        return out


def _check_complete(refs: list[Reference], hyps: Mapping[str, Hypothesis], name: str) -> None:
    missing = [r.id for r in refs if r.id not in hyps]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ManifestError(
            f"system {name}: {len(missing)} of {len(refs)} utterances have no hypothesis "
            f"({shown}); compare on the same test set, or pass --allow-missing"
        )


def _texts(refs: list[Reference], hyps: Mapping[str, Hypothesis]) -> list[str]:
    return [hyps[r.id].hypothesis if r.id in hyps else "" for r in refs]


def _stats(task: str, lang: str, out_lang: str, refs: list[str], hyps: list[str]) -> np.ndarray:
    if task == "asr":
        return bs.wer_stats(refs, hyps, lang)
    return bs.bleu_stats(refs, hyps, out_lang)


def _bleu(summed: np.ndarray) -> float:
    return bs.bleu_from_stats(summed)  # the tokenizer acted when the stats were extracted


METRICS = {"asr": bs.wer_from_stats, "st": _bleu}
"""One metric per task: WER and CER share the [errors, length] form, BLEU rows sacrebleu's."""


def compare(
    hyps_a: Mapping[str, Hypothesis],
    hyps_b: Mapping[str, Hypothesis],
    refs: Sequence[Utterance | Mapping[str, Any]],
    config: CompareConfig = CompareConfig(),
) -> list[Difference]:
    """Per-row and macro differences B - A with paired bootstrap intervals."""
    references = [to_reference(r, f"references[{i}]") for i, r in enumerate(refs)]
    if not references:
        raise ManifestError("no references to compare on")
    unlabelled = [r.id for r in references if not r.labelled]
    if unlabelled:  # two systems may predict different languages: no common row to pair in
        raise ManifestError(
            f"comparing systems needs each reference's language: {len(unlabelled)} manifest "
            f"rows have none (first: {unlabelled[0]!r}); add 'lang' to them"
        )
    if not config.allow_missing:
        _check_complete(references, hyps_a, "A")
        _check_complete(references, hyps_b, "B")
    groups: dict[tuple[str, str, str], list[Reference]] = {}
    for ref in references:
        groups.setdefault((ref.task, ref.lang, ref.output_lang), []).append(ref)
    options = {"n_resamples": config.n_resamples, "seed": config.seed, "level": config.level}
    out: list[Difference] = []
    per_task: dict[str, list[tuple[np.ndarray, np.ndarray, str, Any]]] = {}
    for (task, lang, out_lang), rows in sorted(groups.items()):
        texts = [r.text for r in rows]
        a = _stats(task, lang, out_lang, texts, _texts(rows, hyps_a))
        b = _stats(task, lang, out_lang, texts, _texts(rows, hyps_b))
        metric = METRICS[task]
        delta = bs.paired_bootstrap(a, b, metric, **options)
        name = lang if task == "asr" else f"{lang}-{out_lang}"
        kind = asr_metric(lang) if task == "asr" else "bleu"
        out.append(
            Difference(name, task, kind, len(rows), metric(a.sum(0)), metric(b.sum(0)), delta)
        )
        per_task.setdefault(task, []).append((a, b, name))
    for task, parts in per_task.items():
        if len(parts) < 2:
            continue
        out.append(_macro(task, parts, options))
    return out


def _macro(task: str, parts: list[tuple], options: dict[str, Any]) -> Difference:
    """The macro average over rows (each language counts once), resampled within each row."""
    stacked_a = np.concatenate([a for a, _, _ in parts])
    stacked_b = np.concatenate([b for _, b, _ in parts])
    strata = [name for a, _, name in parts for _ in range(len(a))]
    metric = METRICS[task]
    delta = bs.paired_bootstrap(stacked_a, stacked_b, metric, strata=strata, **options)
    a_score = float(np.mean([metric(a.sum(0)) for a, _, _ in parts]))
    b_score = float(np.mean([metric(b.sum(0)) for _, b, _ in parts]))
    kind = "error_rate" if task == "asr" else "bleu"
    return Difference(task, task, kind, len(strata), a_score, b_score, delta)


def markdown(diffs: Sequence[Difference], name_a: str = "A", name_b: str = "B") -> str:
    """A table: row, n, metric, A, B, B - A [95 % interval], which is better."""
    lines = [
        f"| row | n | metric | {name_a} | {name_b} | {name_b} - {name_a} [95 % CI] | better |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for d in diffs:
        better = {"a": name_a, "b": name_b, None: "neither (CI includes 0)"}[d.better]
        lines.append(
            f"| {d.row} | {d.n} | {d.metric} | {d.a:.1f} | {d.b:.1f} | {d.delta.format()} "
            f"| {better} |"
        )
    return "\n".join(lines) + "\n"
