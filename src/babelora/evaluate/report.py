"""Score hypotheses against references: per-language tables, macro averages, language confusion.

`score(hyps, refs)` pairs outputs with references by id and groups them into rows: one per source
language for ASR (WER, or CER for zh/ja/th/lo/my/yue; normalized and orthographic), one per
direction for ST (BLEU with its sacrebleu signature, chrF, chrF++). The averages are macro
averages over rows (each language counts once), as the papers report them. Every row also gives
its language-confusion rate (share of outputs whose detected language is not the expected output
language; `langid.py`), and whether the decoding language was given (oracle) or predicted; where
it was predicted (a LID head, or Whisper's own LID), the LID accuracy against the true source
language, its confusion matrix (`lang_used_counts`) and mean probability (`lang_prob`).
A reference whose language the manifest does not give (read with `require_lang=False`) is scored
under the language its hypothesis was decoded in (Whisper's LID), counted in `unlabelled`, and
left out of the LID accuracy (there is no truth to compare with).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import fmean
from typing import Any

from babelora.data.manifest import Utterance
from babelora.errors import ConfigError, LanguageError, ManifestError
from babelora.evaluate import metrics
from babelora.evaluate.hypotheses import Hypothesis, parse_hypothesis
from babelora.evaluate.markdown import report_markdown
from babelora.evaluate.normalize import normalizer_name
from babelora.languages import LANG_CODES, check_lang

log = logging.getLogger(__name__)
SHOW_IDS = 5  # ids named in an error message


@dataclass(frozen=True)
class ScoreConfig:
    """How `score` works; every field has a documented default."""

    langid: bool = True  # compute the language-confusion rate
    lid_candidates: str = "whisper"  # languages the detector may answer: "whisper" | "all"
    lid_margin: float = 0.2  # nats per char n-gram another language must win by (langid.py)
    lid_min_letters: int = 10  # shorter outputs are not judged
    allow_missing: bool = False  # score utterances without a hypothesis as empty outputs
    lang_source: str | None = None  # "given" | "predicted" for hypotheses that do not say
    japanese_bleu_fallback: str | None = "char"  # tokenizer when MeCab is absent; None: error

    def __post_init__(self) -> None:
        if self.lid_candidates not in ("whisper", "all"):
            raise ConfigError(f"lid_candidates: 'whisper' or 'all', not {self.lid_candidates!r}")
        if self.lang_source not in (None, "given", "predicted"):
            raise ConfigError(f"lang_source: 'given' or 'predicted', not {self.lang_source!r}")


@dataclass(frozen=True)
class Reference:
    """What an output is scored against: `text` in `output_lang`, decoded from `lang`."""

    id: str
    lang: str
    task: str
    text: str
    output_lang: str
    labelled: bool = True  # False: the manifest gave no language (`lang` is the predicted one)


def to_reference(item: Utterance | Mapping[str, Any], where: str = "reference") -> Reference:
    """A Reference from an Utterance or a manifest-like dict (id, lang, task, text, ...)."""
    if isinstance(item, Utterance):
        if item.lang is None:  # resolved from its hypothesis in `score`
            return Reference(item.id, "", item.task, item.reference, item.output_lang or "", False)
        return Reference(item.id, item.lang, item.task, item.reference, item.output_lang)
    if not isinstance(item, Mapping):
        raise ManifestError(f"{where}: expected an Utterance or a dict, got {type(item).__name__}")
    missing = [k for k in ("id", "lang") if k not in item]
    if missing:
        raise ManifestError(f"{where}: field '{missing[0]}' is missing")
    task = item.get("task", "asr")
    try:
        lang = check_lang(item["lang"])
        if task == "st":
            if "translation" not in item or "target_lang" not in item:
                raise ManifestError(f"{where}: an 'st' reference needs translation and target_lang")
            return Reference(
                str(item["id"]), lang, task, item["translation"], check_lang(item["target_lang"])
            )
    except LanguageError as err:
        raise ManifestError(f"{where}: {err}") from None
    if task != "asr":
        raise ManifestError(f"{where}: field 'task' must be 'asr' or 'st', got {task!r}")
    return Reference(str(item["id"]), lang, task, item.get("text", ""), lang)


@dataclass
class Row:
    """Scores of one ASR language or one ST direction."""

    task: str
    lang: str
    target_lang: str | None
    n: int
    metric: str  # "wer" | "cer" | "bleu"
    score: float
    ortho: float | None = None  # unnormalized WER/CER (ASR)
    normalizer: str | None = None  # ASR
    errors: int | None = None  # ASR: S + D + I
    ref_len: int | None = None  # ASR: reference words/characters
    chrf: float | None = None  # ST
    chrf_pp: float | None = None  # ST: chrF++
    bleu_signature: str | None = None
    chrf_signature: str | None = None
    confusion: float | None = None  # % of judged outputs in the wrong language
    lid_judged: int = 0
    lid_wrong: int = 0
    wrong_langs: dict[str, int] = field(default_factory=dict)  # detected instead of expected
    lang_source: str = "unknown"  # "given" | "predicted" | "mixed" | "unknown"
    lang_used_accuracy: float | None = None  # % of prompts in the source language
    lang_used_counts: dict[str, int] = field(default_factory=dict)  # prompt language: outputs
    lang_prob: float | None = None  # mean LID probability of the predicted languages
    failed: int = 0  # decoding errors, scored as empty outputs
    missing: int = 0  # no hypothesis, scored as empty outputs (allow_missing)
    experts: dict[str, int] = field(default_factory=dict)  # what decoded the outputs (expert sets)
    unlabelled: int = 0  # outputs without a manifest language, grouped here by the predicted one

    @property
    def name(self) -> str:
        return self.lang if self.task == "asr" else f"{self.lang}-{self.target_lang}"


@dataclass
class Report:
    """The per-language table, its averages and the bookkeeping of what was scored."""

    rows: list[Row]
    averages: dict[str, Any]
    counts: dict[str, int]
    missing_ids: list[str]
    extra_ids: list[str]
    settings: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)  # the caller's: model, beam size, ...
    experts: dict[str, int] = field(default_factory=dict)  # outputs decoded by each expert
    skipped: list[dict[str, Any]] = field(default_factory=list)  # manifest lines not scored

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        rows = []
        for row in self.rows:
            item = asdict(row)
            item["name"] = row.name
            rows.append(item)
        return {
            "rows": rows,
            "averages": self.averages,
            "counts": self.counts,
            "missing_ids": self.missing_ids,
            "extra_ids": self.extra_ids,
            "settings": self.settings,
            "meta": self.meta,
            "experts": self.experts,
            "skipped": self.skipped,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Report:
        """The inverse of `to_json`."""
        rows = [Row(**{k: v for k, v in row.items() if k != "name"}) for row in data["rows"]]
        return cls(
            rows,
            dict(data["averages"]),
            dict(data["counts"]),
            list(data["missing_ids"]),
            list(data["extra_ids"]),
            dict(data["settings"]),
            dict(data.get("meta") or {}),
            dict(data.get("experts") or {}),
            list(data.get("skipped") or []),
        )

    def to_markdown(self) -> str:
        """Markdown tables (ASR, ST), averages, signatures and counts."""
        return report_markdown(self.to_json())


def _keyed_item(uid: str, value: Any) -> Any:
    if isinstance(value, str):
        return {"id": uid, "hypothesis": value}
    if isinstance(value, Mapping):
        return {"id": uid, **value}
    return value


def _hypothesis_map(hyps: Any, refs: list[Reference]) -> dict[str, Hypothesis]:
    if isinstance(hyps, Mapping):
        items = [_keyed_item(k, v) for k, v in hyps.items()]
    elif isinstance(hyps, Sequence) and hyps and all(isinstance(h, str) for h in hyps):
        if len(hyps) != len(refs):
            raise ManifestError(f"{len(hyps)} hypothesis strings for {len(refs)} references")
        items = [{"id": r.id, "hypothesis": h} for r, h in zip(refs, hyps)]
    else:
        items = list(hyps)
    out: dict[str, Hypothesis] = {}
    for i, item in enumerate(items):
        hyp = parse_hypothesis(item, f"hypotheses[{i}]")
        if hyp.id in out:
            raise ManifestError(f"hypotheses[{i}]: field 'id' {hyp.id!r} is a duplicate")
        out[hyp.id] = hyp
    return out


def _ids(ids: list[str]) -> str:
    more = f", ... ({len(ids) - SHOW_IDS} more)" if len(ids) > SHOW_IDS else ""
    return ", ".join(repr(i) for i in ids[:SHOW_IDS]) + more


def _lang_checks(pairs: list[tuple[Reference, Hypothesis]], config: ScoreConfig) -> list[Any]:
    from babelora.evaluate.langid import get_identifier

    model = get_identifier()
    candidates = LANG_CODES if config.lid_candidates == "whisper" else None
    return model.check(
        [h.hypothesis for _, h in pairs],
        [r.output_lang for r, _ in pairs],
        candidates,
        config.lid_min_letters,
        config.lid_margin,
    )


def _score_row(key: tuple[str, str, str], items: list[tuple], config: ScoreConfig) -> Row:
    task, lang, out_lang = key
    refs = [r.text for r, _, _ in items]
    hyps = [h.hypothesis for _, h, _ in items]
    if task == "asr":
        rate = metrics.error_rate(hyps, refs, lang)
        row = Row(task, lang, None, len(items), metrics.asr_metric(lang), rate.score)
        row.ortho = metrics.error_rate(hyps, refs, lang, normalize=False).score
        row.normalizer, row.errors, row.ref_len = normalizer_name(lang), rate.errors, rate.ref_len
    else:
        tokenize = metrics.bleu_tokenizer(out_lang, config.japanese_bleu_fallback)
        b = metrics.bleu(hyps, refs, tokenize=tokenize)
        row = Row(task, lang, out_lang, len(items), "bleu", b.score, bleu_signature=b.signature)
        c, cpp = metrics.chrf(hyps, refs, 0), metrics.chrf(hyps, refs, 2)
        row.chrf, row.chrf_pp, row.chrf_signature = c.score, cpp.score, cpp.signature
    checks = [c for _, _, c in items if c is not None]
    judged = [c for c in checks if c.wrong is not None]
    row.lid_judged, row.lid_wrong = len(judged), sum(c.wrong for c in judged)
    row.confusion = metrics.language_confusion([c.wrong for c in judged])
    row.wrong_langs = dict(Counter(c.detected for c in judged if c.wrong).most_common())
    sources = {h.lang_source or config.lang_source or "unknown" for _, h, _ in items}
    row.lang_source = sources.pop() if len(sources) == 1 else "mixed"
    used = [h.lang_used for r, h, _ in items if h.lang_used and r.labelled]
    if used:
        row.lang_used_accuracy = 100.0 * sum(u == lang for u in used) / len(used)
        row.lang_used_counts = _by_count(Counter(used))
    row.lang_prob = _mean([h.lang_prob for _, h, _ in items])
    row.failed = sum(h.error is not None for _, h, _ in items)
    row.experts = _by_count(Counter(h.expert for _, h, _ in items if h.expert))
    row.unlabelled = sum(not r.labelled for r, _, _ in items)
    return row


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return fmean(kept) if kept else None


def _averages(rows: list[Row]) -> dict[str, Any]:
    asr = [r for r in rows if r.task == "asr"]
    st = [r for r in rows if r.task == "st"]
    out: dict[str, Any] = {}
    if asr:
        out["asr"] = {
            "languages": len(asr),
            "n": sum(r.n for r in asr),
            "wer": _mean([r.score for r in asr if r.metric == "wer"]),
            "cer": _mean([r.score for r in asr if r.metric == "cer"]),
            "error_rate": _mean([r.score for r in asr]),  # WER or CER per row, as Whisper does
            "ortho_error_rate": _mean([r.ortho for r in asr]),
        }
    if st:
        out["st"] = {
            "directions": len(st),
            "n": sum(r.n for r in st),
            "bleu": _mean([r.score for r in st]),
            "chrf": _mean([r.chrf for r in st]),
            "chrf_pp": _mean([r.chrf_pp for r in st]),
        }
    predicted = [r for r in rows if r.lang_source != "given" and r.lang_used_counts]
    if predicted:  # LID accuracy of the prompt language against the true source language
        n = sum(sum(r.lang_used_counts.values()) for r in predicted)
        right = sum(r.lang_used_counts.get(r.lang, 0) for r in predicted)
        out["lid"] = {
            "n": n,
            "accuracy": 100.0 * right / n,
            "macro_accuracy": _mean([r.lang_used_accuracy for r in predicted]),
        }
    judged = sum(r.lid_judged for r in rows)
    out["language_confusion"] = {
        "micro": 100.0 * sum(r.lid_wrong for r in rows) / judged if judged else None,
        "macro": _mean([r.confusion for r in rows]),
        "judged": judged,
        "wrong": sum(r.lid_wrong for r in rows),
    }
    return out


def score(
    hyps: Mapping[str, Any] | Sequence[Any],
    refs: Sequence[Utterance | Mapping[str, Any]],
    config: ScoreConfig = ScoreConfig(),
) -> Report:
    """Score system outputs against references.

    Args:
        hyps: {id: text | dict}, a list of dicts/Hypothesis ({id, hypothesis, lang_used?,
            lang_source?}), or a list of strings in the order of `refs`.
        refs: Utterances (a read manifest) or dicts with id, lang, task, text, and for ST
            translation and target_lang.
        config: see ScoreConfig.
    Returns:
        A Report. Raises ManifestError naming the ids when hypotheses are missing (unless
        `config.allow_missing`); hypotheses for unknown ids are listed in `extra_ids`.
    """
    references = [to_reference(r, f"references[{i}]") for i, r in enumerate(refs)]
    seen: set[str] = set()
    for i, r in enumerate(references):
        if r.id in seen:
            raise ManifestError(f"references[{i}]: field 'id' {r.id!r} is a duplicate")
        seen.add(r.id)
    by_id = _hypothesis_map(hyps, references)
    missing = [r.id for r in references if r.id not in by_id]
    extra = [i for i in by_id if i not in seen]
    if missing and not config.allow_missing:
        raise ManifestError(
            f"{len(missing)} of {len(references)} utterances have no hypothesis: {_ids(missing)}; "
            "decode them, or score them as empty outputs (--allow-missing)"
        )
    if extra:
        log.warning("%d hypotheses match no reference and are ignored: %s", len(extra), _ids(extra))
    pairs = [(r, by_id.get(r.id) or Hypothesis(r.id, "")) for r in references]
    pairs, unscored = _resolve_unlabelled(pairs)
    checks = _lang_checks(pairs, config) if config.langid and pairs else [None] * len(pairs)
    groups: dict[tuple[str, str, str], list[tuple]] = {}
    for (ref, hyp), check in zip(pairs, checks):
        groups.setdefault((ref.task, ref.lang, ref.output_lang), []).append((ref, hyp, check))
    rows = [_score_row(key, groups[key], config) for key in sorted(groups)]
    missing_set = set(missing)
    for row in rows:
        key = (row.task, row.lang, row.target_lang or row.lang)
        row.missing = sum(r.id in missing_set for r, _, _ in groups[key])
    counts = {
        "references": len(references),
        "hypotheses": len(by_id),
        "scored": len(pairs) - len(missing),
        "missing": len(missing),
        "extra": len(extra),
        "failed": sum(r.failed for r in rows),
    }
    if any(not r.labelled for r in references):  # a manifest with rows without a language
        counts["unlabelled"] = sum(r.unlabelled for r in rows)
        counts["unscored"] = len(unscored)  # no language given nor predicted (failed before LID)
    settings = asdict(config) | {"mecab_available": metrics.mecab_available()}
    experts = sum((Counter(r.experts) for r in rows), Counter())
    report = Report(rows, _averages(rows), counts, missing, extra, settings)
    report.experts = _by_count(experts)
    return report


def _resolve_unlabelled(pairs: list[tuple[Reference, Hypothesis]]) -> tuple[list, list[str]]:
    """References without a manifest language take the language their hypothesis was decoded
    in; those whose hypothesis has none (audio that failed before LID) cannot be scored per
    language: their ids are returned, they are left out."""
    out, unscored = [], []
    for ref, hyp in pairs:
        if ref.labelled:
            out.append((ref, hyp))
        elif hyp.lang_used is None:
            unscored.append(ref.id)
        else:
            lang = hyp.lang_used
            out.append((replace(ref, lang=lang, output_lang=ref.output_lang or lang), hyp))
    if unscored:
        log.warning(
            "%d utterances have no language (manifest or prediction) and are not scored: %s",
            len(unscored),
            _ids(unscored),
        )
    return out, unscored


def _by_count(counts: Counter) -> dict[str, int]:
    """Most frequent first, ties by name (stable across runs)."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def skipped_lines(errors: Sequence[Exception | str]) -> list[dict[str, Any]]:
    """Manifest lines a run skipped, for `Report.skipped`: `{"line", "error"}` each, the line
    number read from the message (`path:line: why`; None when it has none)."""
    out = []
    for err in errors:
        text = str(err)
        m = re.match(r"^.+?:(\d+): ", text)
        out.append({"line": int(m.group(1)) if m else None, "error": text})
    return out


def score_results(
    refs: Sequence[Utterance | Mapping[str, Any]],
    hyps: Mapping[str, Any] | Sequence[Any],
    config: ScoreConfig = ScoreConfig(),
) -> dict[str, Any]:
    """`score(hyps, refs, config).to_json()`, for callers that add a `meta` dict (model, beam
    size, manifest) before `write_report`. Note the argument order: references first."""
    return score(hyps, refs, config).to_json()


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(
    report: Report | Mapping[str, Any],
    json_path: str | Path | None = None,
    markdown_path: str | Path | None = None,
) -> None:
    """Write a Report (or its `to_json` dict) as JSON and/or Markdown, atomically."""
    if not isinstance(report, Report):
        report = Report.from_json(report)
    if json_path is not None:
        text = json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n"
        _write_text(Path(json_path), text)
    if markdown_path is not None:
        _write_text(Path(markdown_path), report.to_markdown())
