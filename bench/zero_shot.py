"""Zero-shot Whisper base (multilingual, the offline default) vs Whisper tiny.en on the corpus.

On the corpus's test set (`test.jsonl`) and its code-switched rows (`test_cs.jsonl`), with no
training, greedy, babelora's default runner:

- ASR per language: WER and CER (normalized, language given: base gets `<|xx|><|transcribe|>`,
  tiny.en its English-only prompt, the only one it has);
- ST X->en per language: BLEU / chrF (base: Whisper's own `<|translate|>` task; tiny.en has no
  translate task, so its English-prompt output is scored as the translation);
- code-switched rows (X then English in one clip): ASR WER/CER of the mixed transcript and
  X->en BLEU, per matrix language;
- language identification (base only): Whisper's first decoder step over all 99 language tokens,
  and restricted to the corpus's languages, with accuracy and a confusion summary per true
  language; on code-switched clips against the language the clip starts in.

Every difference base - tiny.en comes with a paired bootstrap 95 % interval per language and for
the macro average (babelora.evaluate.bootstrap, 1,000 resamples, seed 0; stratified by
language for the macro). Raw hypotheses go to `bench/results/zero_shot_hyps.jsonl.gz`
(id, pass, model, hypothesis), the numbers to `bench/results/zero_shot.json`; the Markdown
tables are printed.

    babelora corpus build --out /tmp/corpus_default
    nice -n 10 python bench/zero_shot.py --data /tmp/corpus_default [--per-lang 80] [--threads 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, requests_of, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent
MODELS = ("tiny.en", "base")  # the first is the reference of every difference
RESULTS = ROOT / "results" / "zero_shot.json"
HYPS = ROOT / "results" / "zero_shot_hyps.jsonl.gz"


def per_lang_subset(utts, per_lang: int | None):
    """The first `per_lang` utterances of each (language, task, target) in manifest order."""
    seen: Counter = Counter()
    out = []
    for u in utts:
        key = (u.lang, u.task, u.target_lang)
        if per_lang is None or seen[key] < per_lang:
            seen[key] += 1
            out.append(u)
    return out


def passes(data: Path, per_lang: int | None) -> dict[str, list]:
    """The evaluation passes: name -> utterances (ASR, ST X->en; code-switched when present)."""
    from babelora.data.manifest import read_manifest

    test = per_lang_subset(read_manifest(data / "test.jsonl"), per_lang)
    out = {
        "asr": [u for u in test if u.task == "asr"],
        "st": [u for u in test if u.task == "st" and u.target_lang == "en" and u.lang != "en"],
    }
    cs_path = data / "test_cs.jsonl"
    if cs_path.is_file():
        cs = per_lang_subset(read_manifest(cs_path), per_lang)
        out["cs_asr"] = [u for u in cs if u.task == "asr"]
        out["cs_st"] = [u for u in cs if u.task == "st" and u.target_lang == "en"]
    return {k: v for k, v in out.items() if v}


# ------------------------------------------------------------------------------------ metrics
def cer_stats(refs: list[str], hyps: list[str], lang: str) -> np.ndarray:
    """(n, 2) per-utterance [character errors, reference characters] after normalization."""
    from babelora.evaluate.metrics import cer

    rows = []
    for ref, hyp in zip(refs, hyps, strict=True):
        rate = cer([hyp], [ref], lang)
        rows.append((rate.errors, rate.ref_len))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def metric_stats(kind: str, refs: list[str], hyps: list[str], lang: str):
    """(per-utterance stats, corpus metric from summed stats) for kind wer | cer | bleu | chrf."""
    from babelora.evaluate import bootstrap as bs

    if kind == "wer":
        return bs.wer_stats(refs, hyps, lang), bs.wer_from_stats
    if kind == "cer":
        return cer_stats(refs, hyps, lang), bs.wer_from_stats  # same pooling: errors / length
    if kind == "bleu":
        return bs.bleu_stats(refs, hyps, "en"), lambda s: bs.bleu_from_stats(s, "en")
    return bs.chrf_stats(refs, hyps), bs.chrf_from_stats


def compare(utts, hyps: dict[str, dict[str, str]], kinds: tuple[str, ...], n_resamples: int):
    """Per language and macro: each model's score and base - tiny.en with its paired 95 %
    interval, for every metric in `kinds`."""
    from babelora.evaluate.bootstrap import paired_bootstrap

    langs = sorted({u.lang for u in utts})
    table: dict[str, dict] = {}
    for kind in kinds:
        per_model_stats: dict[str, list[np.ndarray]] = {m: [] for m in MODELS}
        strata: list[str] = []
        metric = None
        for lang in langs:
            rows = [u for u in utts if u.lang == lang]
            refs = [u.reference for u in rows]
            entry = table.setdefault(lang, {"n": len(rows)})
            stats = {}
            for model in MODELS:
                stats[model], metric = metric_stats(
                    kind, refs, [hyps[model][u.id] for u in rows], lang
                )
                per_model_stats[model].append(stats[model])
                entry[f"{kind}_{model}"] = metric(stats[model].sum(axis=0))
            diff = paired_bootstrap(stats[MODELS[0]], stats[MODELS[1]], metric, n_resamples)
            entry[f"{kind}_diff"] = diff.to_json()
            strata += [lang] * len(rows)
        a = np.concatenate(per_model_stats[MODELS[0]])
        b = np.concatenate(per_model_stats[MODELS[1]])
        macro = paired_bootstrap(a, b, metric, n_resamples, strata=strata)
        entry = table.setdefault("macro", {"n": len(strata)})
        for model in MODELS:
            entry[f"{kind}_{model}"] = float(
                np.mean([table[lang][f"{kind}_{model}"] for lang in langs])
            )
        entry[f"{kind}_diff"] = macro.to_json()
    return table


# ------------------------------------------------------------------------------------ decoding
def decode(handle, utts, threads: int) -> tuple[dict[str, str], float, int]:
    """{id: hypothesis}, wall seconds, failures; language given (language-aware)."""
    from babelora.decode.runner import RunnerOptions, decode_requests
    from babelora.decode.search import DecodeOptions

    start = time.perf_counter()
    results = decode_requests(
        handle, requests_of(utts), DecodeOptions(), RunnerOptions(show_progress=False)
    )
    wall = time.perf_counter() - start
    failed = [r for r in results if r.error]
    for r in failed[:5]:
        log(f"  failed: {r.id}: {r.error}")
    return {r.id: r.hypothesis for r in results}, wall, len(failed)


def clips(utts) -> list:
    """One utterance per audio clip (ASR and ST rows share clips)."""
    seen: dict[str, object] = {}
    for u in utts:
        seen.setdefault(u.audio_filepath, u)
    return list(seen.values())


def first_lang(u) -> str:
    """The language a clip starts in: its first segment's, else the row's."""
    return u.segments[0].lang if u.segments else u.lang


def lid(handle, utts, restrict: list[str]) -> tuple[dict, dict[str, str]]:
    """Whisper's LID over all its languages and restricted to `restrict` (renormalised from the
    same posterior): accuracy, per-language accuracy, confusion (top predictions), mean p."""
    from babelora.decode.language import detect_languages, language_token_ids
    from babelora.decode.runner import RunnerOptions

    rows = clips(utts)
    start = time.perf_counter()
    dets = detect_languages(
        handle, requests_of(rows), RunnerOptions(show_progress=False), langs=None
    )
    wall = time.perf_counter() - start
    candidates = sorted(language_token_ids(handle.tokenizer, restrict))
    out: dict = {"n": len(rows), "wall_s": wall, "restricted_to": candidates}
    for name, pick in (
        ("all", lambda d: d.lang),
        ("restricted", lambda d: max(candidates, key=d.probs.get)),
    ):
        per: dict[str, Counter] = {}
        probs: dict[str, list[float]] = {}
        for u, d in zip(rows, dets):
            if d is None:
                continue
            per.setdefault(first_lang(u), Counter())[pick(d)] += 1
            probs.setdefault(first_lang(u), []).append(d.prob)
        right = sum(c[lang] for lang, c in per.items())
        total = sum(sum(c.values()) for c in per.values())
        out[name] = {
            "accuracy": 100.0 * right / max(total, 1),
            "per_lang": {
                lang: {
                    "n": sum(c.values()),
                    "accuracy": 100.0 * c[lang] / sum(c.values()),
                    "predicted": dict(c.most_common()),
                    "mean_p": float(np.mean(probs[lang])) if name == "all" else None,
                }
                for lang, c in sorted(per.items())
            },
        }
    return out, {u.id: d.lang for u, d in zip(rows, dets) if d is not None}


# ------------------------------------------------------------------------------------ tables
def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _diff(d: dict) -> str:
    return f"{d['estimate']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"


def markdown(result: dict) -> str:
    """The tables of BENCHMARKS.md: per pass, rows = languages, zero-shot tiny.en first."""
    out = []
    names = {
        "asr": "ASR, test set (language given)",
        "st": "ST X->en, test set (base: `<|translate|>`)",
        "cs_asr": "Code-switched ASR (X then en, mixed transcript)",
        "cs_st": "Code-switched ST X->en",
    }
    for name, entry in result["passes"].items():
        kinds = entry["metrics"]
        head = ["lang", "n"]
        for kind in kinds:
            k = kind.upper() if kind != "chrf" else "chrF"
            head += [f"{k} tiny.en", f"{k} base", f"{k} base - tiny.en [95 % CI]"]
        out += [f"**{names.get(name, name)}**", "", "| " + " | ".join(head) + " |"]
        out.append("|" + "---|" * len(head))
        for lang, row in entry["table"].items():
            cells = [f"**{lang}**" if lang == "macro" else lang, str(row["n"])]
            for kind in kinds:
                cells += [
                    _fmt(row[f"{kind}_tiny.en"]),
                    _fmt(row[f"{kind}_base"]),
                    _diff(row[f"{kind}_diff"]),
                ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    for name, info in result.get("lid", {}).items():
        out += [
            f"**Whisper base LID, {name} ({info['n']} clips)**: accuracy over all 99 languages "
            f"{info['all']['accuracy']:.1f} %, restricted to {','.join(info['restricted_to'])} "
            f"{info['restricted']['accuracy']:.1f} %",
            "",
            "| true lang | n | acc. (all 99) | mean p | top predictions (all 99) | "
            "acc. (restricted) | top predictions (restricted) |",
            "|---|---|---|---|---|---|---|",
        ]
        for lang, row in info["all"]["per_lang"].items():
            rest = info["restricted"]["per_lang"][lang]
            top = ", ".join(f"{k} {v}" for k, v in list(row["predicted"].items())[:4])
            rtop = ", ".join(f"{k} {v}" for k, v in list(rest["predicted"].items())[:4])
            out.append(
                f"| {lang} | {row['n']} | {row['accuracy']:.1f} | {row['mean_p']:.2f} | {top} | "
                f"{rest['accuracy']:.1f} | {rtop} |"
            )
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="corpus folder (test.jsonl, ...)")
    ap.add_argument("--per-lang", type=int, default=None, help="rows per language and task")
    ap.add_argument("--passes", default="asr,st,cs_asr,cs_st", help="comma list")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-resamples", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--hyps", type=Path, default=HYPS, help="raw hypotheses (.jsonl.gz)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import psutil
    import torch

    from babelora.models.whisper import load_whisper

    torch.set_num_threads(args.threads)
    wanted = [p.strip() for p in args.passes.split(",") if p.strip()]
    runs = {k: v for k, v in passes(args.data, args.per_lang).items() if k in wanted}
    for name, utts in runs.items():
        log(f"{name}: {len(utts)} rows, {len(clips(utts))} clips")
    hyps: dict[str, dict[str, dict[str, str]]] = {name: {} for name in runs}
    timing: dict[str, dict[str, dict]] = {name: {} for name in runs}
    lid_result, lid_pred = {}, {}
    langs = sorted({u.lang for utts in runs.values() for u in utts} | {"en"})
    for model in MODELS:
        handle = load_whisper(model)
        for name, utts in runs.items():
            hyps[name][model], wall, failed = decode(handle, utts, args.threads)
            audio = sum(u.duration for u in utts)
            timing[name][model] = {"wall_s": wall, "audio_s": audio, "failed": failed}
            log(f"{model} {name}: {len(utts)} rows in {wall:.0f} s ({failed} failed)")
        if model == "base":
            for name, key in (("test", "asr"), ("code-switched", "cs_asr")):
                if key in runs:
                    lid_result[name], pred = lid(handle, runs[key], langs)
                    lid_pred.update(pred)
                    log(f"LID {name}: {lid_result[name]['all']['accuracy']:.1f} %")
        del handle
    kinds = {"asr": ("wer", "cer"), "st": ("bleu", "chrf")}
    result = {
        "benchmark": "zero_shot",
        "command": "python " + " ".join(sys.argv),
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__}, "
        "shared with other jobs (times not comparable)",
        "data": str(args.data),
        "per_lang": args.per_lang,
        "models": list(MODELS),
        "decoding": "greedy, language given, default runner (>= 10 s input), max 128 tokens",
        "bootstrap": {"n_resamples": args.n_resamples, "seed": 0, "level": 0.95},
        "passes": {},
        "lid": lid_result,
        "timing": timing,
    }
    for name, utts in runs.items():
        metrics = kinds["asr" if name.endswith("asr") else "st"]
        result["passes"][name] = {
            "metrics": list(metrics),
            "table": compare(utts, hyps[name], metrics, args.n_resamples),
        }
    write_json(args.out, result, indent=1)
    args.hyps.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.hyps, "wt", encoding="utf-8") as f:
        for name, utts in runs.items():
            for model in MODELS:
                for u in utts:
                    row = {"id": u.id, "pass": name, "model": model, "hyp": hyps[name][model][u.id]}
                    if model == "base" and name.endswith("asr") and u.id in lid_pred:
                        row["lid"] = lid_pred[u.id]
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
