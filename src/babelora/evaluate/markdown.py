"""Markdown rendering of a scoring report (tables for ASR and ST, averages, signatures).

It renders the plain JSON form of a report (`Report.to_json()`, the content of report.json),
so this module needs nothing from report.py: report.py imports it, not the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RowJson = Mapping[str, Any]  # one item of report["rows"]: Row's fields plus "name"
SHOW_SKIPPED = 50  # skipped manifest lines listed in the Markdown (report.json has all)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _confusion(row: RowJson) -> str:
    if row["confusion"] is None:
        return "-"
    top = ", ".join(f"{k}:{v}" for k, v in list(row["wrong_langs"].items())[:3])
    counts = f"{row['lid_wrong']}/{row['lid_judged']}{'; ' + top if top else ''}"
    return f"{row['confusion']:.1f} ({counts})"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(line) + " |" for line in lines]


def _asr(rows: list[RowJson], avg: dict[str, Any]) -> list[str]:
    header = ["lang", "n", "metric", "score", "ortho", "normalizer", "confusion %", "lang source"]
    lines = [
        [
            r["lang"],
            str(r["n"]),
            r["metric"].upper(),
            _num(r["score"]),
            _num(r["ortho"]),
            r["normalizer"] or "-",
            _confusion(r),
            r["lang_source"],
        ]
        for r in rows
    ]
    lines.append(
        [
            "**macro avg**",
            str(avg["n"]),
            "WER/CER",
            _num(avg["error_rate"]),
            _num(avg["ortho_error_rate"]),
            "",
            "",
            "",
        ]
    )
    out = ["## ASR", ""] + _table(header, lines)
    out += [
        "",
        f"Macro average WER {_num(avg['wer'])}, CER {_num(avg['cer'])} over "
        f"{avg['languages']} languages (WER/CER column: each row's own metric).",
    ]
    return out


def _st(rows: list[RowJson], avg: dict[str, Any]) -> list[str]:
    header = ["direction", "n", "BLEU", "chrF", "chrF++", "confusion %", "lang source"]
    lines = [
        [
            r["name"],
            str(r["n"]),
            _num(r["score"]),
            _num(r["chrf"]),
            _num(r["chrf_pp"]),
            _confusion(r),
            r["lang_source"],
        ]
        for r in rows
    ]
    lines.append(
        [
            "**macro avg**",
            str(avg["n"]),
            _num(avg["bleu"]),
            _num(avg["chrf"]),
            _num(avg["chrf_pp"]),
            "",
            "",
        ]
    )
    out = ["## ST", ""] + _table(header, lines) + ["", "sacreBLEU signatures:", ""]
    out += [
        f"- {r['name']}: BLEU `{r['bleu_signature']}`; chrF++ `{r['chrf_signature']}`" for r in rows
    ]
    return out


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _experts(report: Mapping[str, Any]) -> list[str]:
    """Which expert decoded how many outputs, in total and per row (expert sets only)."""
    if not report.get("experts"):
        return []
    rows = "; ".join(
        f"{r['name']}: {_counts(r['experts'])}" for r in report["rows"] if r.get("experts")
    )
    return [f"Experts that decoded the outputs: {_counts(report['experts'])} (per row: {rows})."]


def _lid(report: Mapping[str, Any]) -> list[str]:
    """LID accuracy and its confusion matrix (true source language x predicted prompt
    language), for rows whose language was predicted."""
    lid = report["averages"].get("lid")
    rows = [r for r in report["rows"] if r["lang_source"] != "given" and r.get("lang_used_counts")]
    if not lid or not rows:
        return []
    out = [
        "",
        "## Language identification",
        "",
        f"LID accuracy {lid['accuracy']:.1f} % of {lid['n']} utterances (macro "
        f"{_num(lid['macro_accuracy'])} %); rows: true language, columns: predicted.",
        "",
    ]
    cols = sorted({c for r in rows for c in r["lang_used_counts"]})
    lines = [
        [r["name"], *(str(r["lang_used_counts"].get(c, 0)) for c in cols), _num(r.get("lang_prob"))]
        for r in rows
    ]
    return out + _table(["true \\ predicted", *cols, "mean p"], lines)


def _unlabelled(report: Mapping[str, Any]) -> list[str]:
    """Outputs whose reference had no language: scored under the predicted one, no LID truth."""
    n = report["counts"].get("unlabelled", 0)
    unscored = report["counts"].get("unscored", 0)
    if not n and not unscored:
        return []
    per_row = [f"{r['name']} {r['unlabelled']}" for r in report["rows"] if r.get("unlabelled")]
    rows = ", ".join(per_row)
    line = (
        f"Without a language in the manifest: {n} outputs, each scored under the language Whisper "
        f"predicted for it ({rows or 'none'}) and left out of the LID accuracy."
    )
    if unscored:
        line += f" {unscored} more had no predicted language either (failed) and are not scored."
    return [line]


def _skipped(skipped: list[Mapping[str, Any]]) -> list[str]:
    """The manifest lines that were not scored, and why (not counted in any n)."""
    if not skipped:
        return []
    out = ["", "## Skipped manifest lines", "", f"{len(skipped)} lines, in no row's n:", ""]
    out += [f"- {item['error']}" for item in skipped[:SHOW_SKIPPED]]
    if len(skipped) > SHOW_SKIPPED:
        out.append(f"- ... and {len(skipped) - SHOW_SKIPPED} more (report.json lists all)")
    return out


def report_markdown(report: Mapping[str, Any]) -> str:
    """The whole report as Markdown, from its JSON form (`Report.to_json()`)."""
    asr = [r for r in report["rows"] if r["task"] == "asr"]
    st = [r for r in report["rows"] if r["task"] == "st"]
    out: list[str] = ["# babelora scores", ""]
    if report["meta"]:
        out += ["Run: " + ", ".join(f"{k}={v}" for k, v in report["meta"].items()), ""]
    if asr:
        out += _asr(asr, report["averages"]["asr"]) + [""]
    if st:
        out += _st(st, report["averages"]["st"]) + [""]
    lc = report["averages"]["language_confusion"]
    out.append(
        f"Language confusion: {_num(lc['micro'])} % of {lc['judged']} judged outputs "
        f"(macro {_num(lc['macro'])} %); outputs under {report['settings']['lid_min_letters']} "
        "letters are not judged."
    )
    c = report["counts"]
    out.append(
        f"Counts: {c['references']} references, {c['hypotheses']} hypotheses, {c['scored']} "
        f"scored, {c['missing']} missing, {c['extra']} extra, {c['failed']} failed."
    )
    out += _unlabelled(report)
    used = [r for r in report["rows"] if r["lang_used_accuracy"] is not None]
    if used:
        acc = ", ".join(f"{r['name']} {r['lang_used_accuracy']:.1f}" for r in used)
        out.append(f"Prompt language = source language (%): {acc}.")
    out += _experts(report) + _lid(report) + _skipped(report.get("skipped") or [])
    return "\n".join(out) + "\n"
