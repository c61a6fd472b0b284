"""Zero-shot Whisper base WER / CER per voice engine on the same sentences, and on real speech.

How far is each synthesizer from real speech, as Whisper hears it? Two families of cells, all
decoded by zero-shot Whisper base (greedy, language given, babelora's default runner):

- synthetic: for each language, `--per-cell` sentences of the corpus' test split (the large
  preset's text: Django, CLDR, num2words, Weblate and Fish Fillets' training lines, split as
  `babelora corpus build` splits it; sentences of 3 words or more), each spoken by every
  engine with a voice for the language: espeak-ng (a variant drawn per sentence among m1..f5,
  the language's main accent), SVOX Pico (the language's voice; en: en-US or en-GB drawn) and
  MBROLA (one of the language's default databases drawn per sentence), all at 165 words a
  minute and pitch 50, so the engine is the only difference;
- real: Fish Fillets NG's voice acting (`babelora corpus import fillets`, test split, ASR
  lines; nl and cs), and the same Fillets sentences spoken by espeak-ng and MBROLA (nl), so real
  and synthetic speech are compared on identical text.

Every difference between two engines of a language (and real vs synthetic) comes with a paired
bootstrap 95 % interval (babelora.evaluate.bootstrap, 1,000 resamples, seed 0). Audio goes to
`--work` (resumable: clips already there are reused); numbers to bench/results/voices.json,
hypotheses to bench/results/voices_hyps.jsonl.gz; the Markdown table is printed. Decoding is
resumable too: hypotheses are appended to `<work>/hyps_<model>.jsonl` every 64 clips.

    nice -n 10 python bench/voices.py [--langs de,fr,es,it,nl] [--per-cell 100]
        [--engines espeak,pico,mbrola] [--fillets nl,cs] [--work /tmp/babelora_voices]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import random
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "voices.json"
HYPS = ROOT / "bench" / "results" / "voices_hyps.jsonl.gz"
TEXTS = ("gettext", "cldr", "numbers", "weblate", "fillets")
RATE, PITCH = 165, 50
REAL = "real"
CHUNK = 64  # clips decoded between writes to the hypothesis cache (a re-run resumes)


def sentences(lang: str, n: int, seed: int, texts: tuple[str, ...] = TEXTS) -> list[str]:
    """`n` test-split sentences of `lang` (English: the English side of German pairs) with at
    least 3 words, sampled with `seed`."""
    from babelora.data.corpus.splits import split_pairs
    from babelora.data.corpus.text_sources import text_pairs

    src = "de" if lang == "en" else lang
    test = split_pairs({src: text_pairs(src, texts)}, seed, (0.8, 0.1, 0.1))["test"][src]
    out = sorted({p.en if lang == "en" else p.text for p in test})
    out = [t for t in out if len(t.split()) >= 3]
    random.Random(f"{seed}:voices:{lang}").shuffle(out)
    return out[:n]


def engine_voices(lang: str, engine: str) -> tuple:
    """The default voices of `engine` for `lang` (empty when it has none)."""
    from babelora.data.corpus.voices import language_voices

    try:
        return language_voices(lang, (engine,), accents=False)
    except Exception as err:  # noqa: BLE001 (a missing engine: say so, keep the others)
        log(f"{engine} for {lang}: {err}")
        return ()


def clip_jobs(lang: str, engine: str, texts: list[str], seed: int) -> list:
    """One ClipJob per sentence: the engine's voice drawn by (seed, lang, engine, text)."""
    from babelora.data.corpus.render import ClipJob, clip_name

    voices = engine_voices(lang, engine)
    jobs = []
    for text in texts:
        voice = random.Random(f"{seed}:{lang}:{engine}:{text}").choice(voices)
        settings = voice.settings(RATE, PITCH)
        path = clip_name(engine, lang, {"text": text, **vars(settings)})
        jobs.append(ClipJob(path, ((lang, text),), settings))
    return jobs


def fillets_rows(langs: list[str], work: Path, n: int, seed: int) -> dict[str, list]:
    """{lang: up to n ASR rows of the Fish Fillets test split}, imported under `work`."""
    from babelora.data.importers import import_fillets
    from babelora.data.manifest import read_manifest

    out = {}
    for lang in langs:
        path = work / "fillets" / f"fillets.{lang}.test.jsonl"
        if not path.is_file():
            log(import_fillets(work / "fillets", [lang], None, ("asr",), ("test",)).summary())
        rows = sorted(read_manifest(path), key=lambda u: u.id)
        random.Random(f"{seed}:fillets:{lang}").shuffle(rows)
        out[lang] = rows[:n]
    return out


def read_cache(path: Path) -> dict[str, str]:
    """{request id: hypothesis} decoded by an earlier (perhaps killed) run; a torn last line of
    a killed run is ignored."""
    out = {}
    if path.is_file():
        for line in path.read_text("utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            out[row["id"]] = row["hyp"]
    return out


def cer_stats(refs: list[str], hyps: list[str], lang: str) -> np.ndarray:
    """(n, 2) per-utterance [character errors, reference characters] (spaces kept)."""
    from babelora.evaluate.metrics import cer

    rows = [(r.errors, r.ref_len) for r in (cer([h], [t], lang) for t, h in zip(refs, hyps))]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def score(cells: dict, hyps: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """Per cell WER/CER with bootstrap intervals; paired differences within each language."""
    from babelora.evaluate.bootstrap import bootstrap, paired_bootstrap, wer_from_stats, wer_stats

    rows, stats = [], {}
    for (lang, engine, kind), items in cells.items():
        refs = [t for t, _ in items]
        out = [hyps[i] for _, i in items]
        w, c = wer_stats(refs, out, lang), cer_stats(refs, out, lang)
        stats[(lang, engine, kind)] = (w, c)
        wi, ci = bootstrap(w, wer_from_stats), bootstrap(c, wer_from_stats)
        rows.append(
            {
                "set": kind,
                "lang": lang,
                "engine": engine,
                "n": len(items),
                "wer": round(wi.estimate, 2),
                "wer_ci": [round(wi.low, 2), round(wi.high, 2)],
                "cer": round(ci.estimate, 2),
                "cer_ci": [round(ci.low, 2), round(ci.high, 2)],
            }
        )
    diffs = []
    keys = sorted(stats)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if a[0] != b[0] or a[2] != b[2]:
                continue
            for metric, k in (("wer", 0), ("cer", 1)):
                iv = paired_bootstrap(stats[a][k], stats[b][k], wer_from_stats)
                diffs.append(
                    {
                        "set": a[2],
                        "lang": a[0],
                        "metric": metric,
                        "a": a[1],
                        "b": b[1],
                        "b_minus_a": round(iv.estimate, 2),
                        "ci": [round(iv.low, 2), round(iv.high, 2)],
                    }
                )
    return rows, diffs


def table(rows: list[dict], diffs: list[dict]) -> str:
    lines = [
        "| set | lang | engine | n | WER [95 % CI] | CER [95 % CI] |",
        "|---|---|---|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['lang']} | {r['engine']} | {r['n']} | {r['wer']:.1f} "
            f"[{r['wer_ci'][0]:.1f}, {r['wer_ci'][1]:.1f}] | {r['cer']:.1f} "
            f"[{r['cer_ci'][0]:.1f}, {r['cer_ci'][1]:.1f}] |"
        )
    lines += ["", "| set | lang | B - A | WER diff [95 % CI] | CER diff [95 % CI] |"]
    lines.append("|---|---|---|---|---|")
    by = {}
    for d in diffs:
        by.setdefault((d["set"], d["lang"], d["a"], d["b"]), {})[d["metric"]] = d
    for (kind, lang, a, b), m in by.items():
        w, c = m["wer"], m["cer"]
        lines.append(
            f"| {kind} | {lang} | {b} - {a} | {w['b_minus_a']:+.1f} [{w['ci'][0]:+.1f}, "
            f"{w['ci'][1]:+.1f}] | {c['b_minus_a']:+.1f} [{c['ci'][0]:+.1f}, {c['ci'][1]:+.1f}] |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--langs", default="de,fr,es,it,nl")
    ap.add_argument("--engines", default="espeak,pico,mbrola")
    ap.add_argument("--fillets", default="nl,cs", help="real-speech languages ('' to skip)")
    ap.add_argument("--per-cell", type=int, default=100)
    ap.add_argument("--work", default="/tmp/babelora_voices", help="audio scratch folder")
    ap.add_argument("--model", default="base")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2, help="synthesis processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from babelora.data.corpus.render import SILENT, render_all
    from babelora.decode.runner import Request, RunnerOptions, decode_requests
    from babelora.decode.search import DecodeOptions
    from babelora.models.whisper import load_whisper

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    engines = [e for e in args.engines.split(",") if e]
    start = time.perf_counter()
    # cells: (lang, engine, set) -> [(reference, request id)]
    cells: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    requests: dict[str, Request] = {}
    jobs_of: dict[tuple[str, str, str], list] = {}
    plans = [(lang, "synthetic", sentences(lang, args.per_cell, args.seed)) for lang in
             args.langs.split(",") if lang]  # fmt: skip
    real = fillets_rows([x for x in args.fillets.split(",") if x], work, args.per_cell, args.seed)
    for lang, rows in real.items():
        plans.append((lang, "fillets", [u.text for u in rows]))
        cells[(lang, REAL, "fillets")] = [(u.text, u.id) for u in rows]
        requests.update({u.id: Request(u.id, u.audio_filepath, lang, "asr") for u in rows})
    for lang, kind, texts in plans:
        for engine in engines:
            if engine_voices(lang, engine):
                jobs_of[(lang, engine, kind)] = clip_jobs(lang, engine, texts, args.seed)
    todo = {j.path: j for jobs in jobs_of.values() for j in jobs}
    log(f"rendering {len(todo)} clips under {work}")
    infos = render_all(list(todo.values()), work, args.jobs)
    for key, jobs in jobs_of.items():
        items = []
        for j in jobs:
            if infos[j.path].status == SILENT:
                continue
            rid = f"{key[2]}-{key[0]}-{key[1]}-{hashlib.sha1(j.path.encode()).hexdigest()[:12]}"
            requests[rid] = Request(rid, str(work / j.path), key[0], "asr")
            items.append((j.spans[0][1], rid))
        cells[key] = items
    if any(len(v) != len(cells[k]) for k, v in jobs_of.items()):
        log("some clips came out silent; paired cells keep the sentences every engine spoke")
    # pair on the sentences every engine of a (lang, set) spoke
    groups: dict[tuple[str, str], set[str]] = {}
    for (lang, _, kind), items in cells.items():
        texts = {t for t, _ in items}
        groups[(lang, kind)] = groups.get((lang, kind), texts) & texts
    cells = {
        k: sorted((t, i) for t, i in v if t in groups[(k[0], k[2])])
        for k, v in sorted(cells.items())
    }
    cells = {k: list({t: (t, i) for t, i in v}.values()) for k, v in cells.items()}
    cache = work / f"hyps_{args.model}.jsonl"
    hyps = read_cache(cache)
    todo_ids = [i for i in requests if i not in hyps]
    log(f"decoding {len(todo_ids)} clips with Whisper {args.model} ({len(hyps)} cached)")
    handle = load_whisper(args.model) if todo_ids else None
    t0 = time.perf_counter()
    for k in range(0, len(todo_ids), CHUNK):
        batch = [requests[i] for i in todo_ids[k : k + CHUNK]]
        results = decode_requests(
            handle, batch, DecodeOptions(), RunnerOptions(show_progress=False)
        )
        failed = [r for r in results if r.error]
        if failed:
            raise SystemExit(f"{len(failed)} clips failed to decode, e.g. {failed[0].error}")
        with cache.open("a", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps({"id": r.id, "hyp": r.hypothesis}, ensure_ascii=False) + "\n")
        hyps.update({r.id: r.hypothesis for r in results})
        log(f"  {min(k + CHUNK, len(todo_ids))}/{len(todo_ids)} decoded")
    decode_s = time.perf_counter() - t0
    rows, diffs = score(cells, hyps)
    md = table(rows, diffs)
    print(md)
    voices = {
        f"{k[2]}/{k[0]}/{k[1]}": sorted({j.settings.speaker for j in jobs})
        for k, jobs in jobs_of.items()
    }
    write_json(
        Path(args.out),
        {
            "command": "python bench/voices.py " + " ".join(sys.argv[1:]),
            "date": date.today().isoformat(),
            "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, {platform.platform()}",
            "model": f"whisper {args.model} (zero-shot, greedy, language given)",
            "rate_wpm": RATE,
            "pitch": PITCH,
            "seed": args.seed,
            "per_cell": args.per_cell,
            "voices": voices,
            "cells": rows,
            "differences": diffs,
            "decode_seconds": round(decode_s, 1),
            "wall_seconds": round(time.perf_counter() - start, 1),
            "table": md,
        },
    )
    HYPS.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(HYPS, "wt", encoding="utf-8") as f:
        for (lang, engine, kind), items in cells.items():
            for ref, rid in items:
                row = {"id": rid, "set": kind, "lang": lang, "engine": engine}
                f.write(json.dumps({**row, "ref": ref, "hyp": hyps[rid]}, ensure_ascii=False))
                f.write("\n")
    log(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
