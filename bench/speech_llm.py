"""Speech-LLM on Gemma 3 270M: ST BLEU/chrF X->en, en->X and code-switched ST per system.

Whisper base encoder (frozen) -> projector -> Gemma 3 270M (frozen), trained on the corpus's ST
rows (X->en and en->X) with the `speech_llm` recipe (configs/molora/molora_llm_lang.yaml plus
each system's overrides), then decoded greedily on the protocol's test sets (docs/benchmarks.md):
the unseen-speaker synthetic test, its noisy copy (the corpus build's `test_noisy.jsonl`), the
code-switched test (`test_cs.jsonl`) and real speech (`--real`, Fish Fillets NG, X->en):

    whisper_translate Whisper base's own <|translate|>: zero-shot, X->en only (the first row)
    linear            linear projector, LLM frozen, nothing in the LLM
    moe               MoE projector (7 language groups x 2 experts, language + balance losses)
    lora              linear projector + one LoRA in the LLM (attention + MLP, rank 8)
    molora_lang       linear projector + MoLoRA in the LLM, language router (shared + per language)
    molora_hybrid     ... hybrid router (learned top-1 + language prior; balance and z losses)
    molora_lang_mgrf  molora_lang + MGRF feeding the LLM (sentence vector fused in)

Every cell is a BLEU with its bootstrap 95 % interval; every difference (against the zero-shot
row on X->en, against `linear` on both directions) a paired one, macro over directions
(babelora.evaluate.compare, what `babelora score --baseline` prints). The per-utterance
hypotheses are kept in bench/results/speech_llm/ (`<system>.<test set>.jsonl.gz`, with each
test set's sampled manifest), so `babelora score` re-derives every cell. Routing purity (hybrid
router): the share of test rows whose dominant routed expert, teacher-forced and averaged over
the LLM's expert layers, is the row's own routing key (the language router is pure by
construction).

    python bench/speech_llm.py --budget cpu --corpus /work/data/corpus_large \
        --real /tmp/fil/fillets.nl.test.jsonl          # < 60 min on 2 CPU cores
    python bench/speech_llm.py --budget full ...      # the same experiment, larger (a GPU)
    python bench/speech_llm.py --budget smoke --corpus runs/corpus   # minutes: the whole path
    python bench/speech_llm.py --step-time    # float32 vs bfloat16 step time + peak memory
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol as P  # noqa: E402
from common import log, requests_of, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs" / "molora" / "molora_llm_lang.yaml"
RESULTS = ROOT / "bench" / "results" / "speech_llm.json"
R = "recipe.params"
LANGS = "[de,fr,es,it,nl,pt,en]"
ZERO_SHOT = "whisper_translate"
SYSTEMS: dict[str, list[str]] = {  # name -> overrides of BASE_CONFIG
    "linear": [f"{R}.molora=null"],
    "moe": [
        f"{R}.molora=null",
        f"{R}.model.projector.kind=moe",
        f"{R}.model.projector.moe.num_groups=7",
        f"{R}.model.projector.moe.experts_per_group=2",
        f"{R}.model.projector.moe.group_langs={LANGS}",
        f"{R}.model.projector.moe.top_k=1",
    ],
    "lora": [
        f"{R}.molora=null",
        f"{R}.lora={{rank: 8, alpha: 16.0, dropout: 0.05, targets: [causal-lm-all]}}",
    ],
    "molora_lang": [],
    "molora_hybrid": [
        f"{R}.molora.router=hybrid",
        f"{R}.molora.top_k=1",
        f"{R}.molora.routing_level=token",
    ],
    "molora_lang_mgrf": [f"{R}.model.mgrf={{pooling: attention, fusion: gated}}"],
}


@dataclass(frozen=True)
class Budget:
    encoder: str  # the Whisper whose encoder feeds the LLM (and whose <|translate|> is row 1)
    steps: int  # training steps per system
    batch_seconds: float
    per_direction: int | None  # synthetic test rows per direction and test set (None: all)
    real_rows: int | None  # real-speech rows (X->en)
    max_new_tokens: int
    lr: float = 5e-4
    warmup: int = 0


BUDGETS = {
    "smoke": Budget("tiny.en", steps=1, batch_seconds=20.0, per_direction=1, real_rows=2,
                    max_new_tokens=6),
    # Sized for < 60 min on 2 quiet cores. Measured (2026-11-27, a 24-step trial): a step of
    # 20 audio s takes 3.2-3.4 s (Gemma 270M frozen, float32), decoding ~0.9 s a row while the
    # outputs are still mostly empty; 24 steps left the loss at 6.5 (from 9.9) and the outputs
    # empty. Hence 80 steps at lr 1e-3 (6 systems ~27 min) and 4 rows per direction of test,
    # test_noisy (12 directions each) and cs (6) + 20 real = 140 rows per system (~15-25 min).
    "cpu": Budget("base", steps=80, batch_seconds=20.0, per_direction=4, real_rows=20,
                  max_new_tokens=40, lr=1e-3, warmup=8),
    "full": Budget("base", steps=3000, batch_seconds=240.0, per_direction=None, real_rows=None,
                   max_new_tokens=96, warmup=100),
}  # fmt: skip


def direction(u) -> str:
    return f"{u.lang}-{u.target_lang or 'en'}"


def st_rows(path: Path, n: int | None, x_en_only: bool = False) -> list:
    """ST rows of a manifest, the first `n` per direction in manifest order (None: all)."""
    from babelora.data.manifest import read_manifest

    by: dict[str, list] = defaultdict(list)
    for u in read_manifest(path):
        if u.task != "st" or (x_en_only and (u.target_lang or "en") != "en"):
            continue
        if n is None or len(by[direction(u)]) < n:
            by[direction(u)].append(u)
    return [u for d in sorted(by) for u in by[d]]


def test_sets(corpus: Path, real: list[Path], b: Budget) -> list:
    """test, test_noisy (when the build has it), cs, and each real-speech manifest."""
    sources = [("test", corpus / "test.jsonl", b.per_direction, False)]
    if (corpus / "test_noisy.jsonl").is_file():
        sources.append(("test_noisy", corpus / "test_noisy.jsonl", b.per_direction, False))
    if (corpus / "test_cs.jsonl").is_file():
        sources.append(("cs", corpus / "test_cs.jsonl", b.per_direction, False))
    for path in real:
        name = "real" if len(real) == 1 else f"real_{Path(path).name.split('.jsonl')[0]}"
        sources.append((name, Path(path), b.real_rows, True))
    out = []
    for name, path, n, x_en in sources:
        utts = st_rows(path, n, x_en)
        if utts:
            out.append(P.TestSet(name, path, utts))
    return out


def x_en(utts: list) -> list:
    return [u for u in utts if (u.target_lang or "en") == "en" and u.lang != "en"]


def en_x(utts: list) -> list:
    return [u for u in utts if u.lang == "en"]


def config_of(name: str, args, b: Budget):
    from babelora.methods.registry import load_config

    overrides = [
        *SYSTEMS[name],
        f"output_dir={args.work / name}",
        f"model.name={b.encoder}",
        f"data.train=[{args.corpus / 'train.jsonl'}]",
        "data.dev=[]",
        f"data.batch_seconds={b.batch_seconds}",
        f"max_steps={b.steps}",
        f"eval.every={b.steps}",
        f"checkpoint.save_every={b.steps}",
        f"optim.lr={b.lr}",
        f"optim.warmup_steps={b.warmup}",
        f"{R}.model.max_new_tokens={b.max_new_tokens}",
        "progress_bar=false",
    ]
    return load_config(BASE_CONFIG, overrides), overrides


def decode_llm(model, utts: list, max_new_tokens: int) -> tuple[list[dict], float]:
    from babelora.methods.speech_llm.decode import decode_speech_llm

    start = time.perf_counter()
    results = decode_speech_llm(model, requests_of(utts), max_new_tokens=max_new_tokens)
    return [r.to_json() for r in results], time.perf_counter() - start


def decode_whisper(handle, utts: list, max_new_tokens: int) -> tuple[list[dict], float]:
    """Whisper's own <|translate|> (into English) on X->en rows."""
    rows, seconds, _ = P.decode(handle, requests_of(utts), None, P.runner_options(), max_new_tokens)
    return rows, seconds


def routing_purity(model, utts: list) -> dict[str, float] | None:
    """Per routing key: share of rows whose dominant routed expert is their own (module doc)."""
    import torch

    from babelora.data.audio import load_audio, log_mel

    experts = model.experts
    if experts is None or not experts.context.languages or experts.config.router == "language":
        return None
    ctx = experts.context
    hits: dict[str, list[bool]] = defaultdict(list)
    n_mels = int(model.encoder.config.num_mel_bins)
    for start in range(0, len(utts), 8):
        chunk = utts[start : start + 8]
        batch = model.make_batch(
            [log_mel(load_audio(u.audio_filepath), n_mels=n_mels) for u in chunk],
            tasks=[u.task for u in chunk],
            langs=[u.lang for u in chunk],
            target_langs=[u.target_lang for u in chunk],
            targets=[u.reference for u in chunk],
        )
        ctx.usage = {}
        ctx.track_usage = True
        with torch.no_grad():
            model(batch)
        ctx.track_usage = False
        mean = torch.stack([torch.cat(v) for v in ctx.usage.values()]).mean(0)  # (rows, E_r)
        epl = experts.config.experts_per_lang
        for key, row in zip(batch.route_keys, mean):
            if key in ctx.languages:
                own = ctx.languages.index(key)
                hits[key].append(int(row.argmax()) // epl == own)
    return {k: float(np.mean(v)) for k, v in sorted(hits.items())}


def differences(utts: list, a: list[dict], b: list[dict]) -> dict:
    """B - A per direction and macro, split into X->en and en->X (paired bootstrap)."""
    ids_a, ids_b = {r["id"] for r in a}, {r["id"] for r in b}
    out = {}
    for side, pick in (("x_en", x_en), ("en_x", en_x)):
        sub = [u for u in pick(utts) if u.id in ids_a and u.id in ids_b]
        if sub:
            keep = {u.id for u in sub}
            out[side] = P.differences(
                sub, [r for r in a if r["id"] in keep], [r for r in b if r["id"] in keep]
            )
    return out


def absolute(utts: list, rows: list[dict]) -> dict:
    """A system's BLEU with bootstrap 95 % intervals: per direction (tokenised for its target
    language) and pooled over the X->en / en->X directions (resampled within directions)."""
    import functools

    from babelora.evaluate.bootstrap import bleu_from_stats, bleu_stats, bootstrap

    hyps = {r["id"]: r.get("hypothesis", "") for r in rows}
    out = {}
    for side, pick in (("x_en", x_en), ("en_x", en_x)):
        sub = [u for u in pick(utts) if u.id in hyps]
        if not sub:
            continue
        strata = [direction(u) for u in sub]
        by_dir: dict[str, list] = defaultdict(list)
        for u in sub:
            by_dir[direction(u)].append(u)
        per_dir = {}
        for d, us in sorted(by_dir.items()):
            lang = us[0].target_lang or "en"
            st = bleu_stats([u.reference for u in us], [hyps[u.id] for u in us], lang)
            metric = functools.partial(bleu_from_stats, lang=lang)
            per_dir[d] = bootstrap(st, metric).to_json()
        lang = None if side == "en_x" else "en"
        st = bleu_stats([u.reference for u in sub], [hyps[u.id] for u in sub], lang)
        metric = functools.partial(bleu_from_stats, lang=lang)
        out[side] = {"pooled": bootstrap(st, metric, strata=strata).to_json(), **per_dir}
    return out


def step_time(dtype: str, steps: int = 4, threads: int = 2) -> dict:
    """Seconds per training step (frozen Gemma in `dtype`, trainable projector, 4 utterances of
    3-5 s, ST targets) and this process's peak RSS. Run once per dtype in its own process."""
    import resource

    import torch

    from babelora.methods.speech_llm.model import SpeechLLMConfig, build_speech_llm

    torch.set_num_threads(threads)
    cfg = SpeechLLMConfig(
        lm="gemma3-270m", encoder="base", lm_dtype=dtype, target_leading_space=False
    )
    model = build_speech_llm(cfg)
    g = torch.Generator().manual_seed(0)
    batch = model.make_batch(
        [torch.randn(80, n, generator=g) for n in (300, 400, 350, 500)],
        tasks=["st"] * 4,
        langs=["de", "fr", "es", "en"],
        target_langs=["en", "en", "en", "de"],
        targets=["Hello world, this is a test sentence."] * 4,
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {
        "dtype": dtype,
        "seconds_per_step": times,
        "median": float(np.median(times[1:] or times)),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "target_tokens": out.num_tokens,
        "threads": threads,
    }


def measure_steps(out: Path, threads: int) -> int:
    """float32 vs bfloat16 step time and peak memory, each in a fresh process."""
    import json
    import subprocess

    rows = []
    for dtype in ("float32", "bfloat16"):
        res = subprocess.run(
            [sys.executable, __file__, "--_step", dtype, "--threads", str(threads)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        log(f"{dtype}: {rows[-1]['median']:.1f} s/step, peak {rows[-1]['peak_rss_gb']:.2f} GB")
    write_json(
        out,
        {
            "step_time": rows,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": P.machine(threads),
        },
    )
    return 0


def run(args) -> dict:
    import torch

    from babelora.methods.speech_llm.recipe import load_speech_llm
    from babelora.models.whisper import load_whisper

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    b = BUDGETS[args.budget]
    hyps_dir = args.hyps or args.out.parent / args.out.stem
    sets = test_sets(args.corpus, args.real, b)
    for ts in sets:
        P.write_subset(ts, hyps_dir)
    names = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(names) - set(SYSTEMS) - {ZERO_SHOT})
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; known: {ZERO_SHOT}, {', '.join(SYSTEMS)}")
    rows: dict[str, dict[str, list[dict]]] = {}
    report: dict = {
        "benchmark": "speech_llm",
        "command": "python bench/speech_llm.py " + " ".join(args.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": P.machine(args.threads),
        "budget": {"name": args.budget, **asdict(b)},
        "lm": "gemma3-270m (frozen, float32)",
        "test_sets": {ts.name: {"source": str(ts.source), "rows": len(ts.utts)} for ts in sets},
        "train": {},
        "decode": {},
        "routing_purity": {},
        "hypotheses": str(P.relative(hyps_dir, ROOT)),
    }
    if args.rescore:  # the kept hypotheses of an earlier run: no training, no decoding
        for name in names:
            rows[name] = {
                ts.name: P.read_rows(hyps_dir / f"{name}.{ts.name}.jsonl.gz") for ts in sets
            }
        previous = args.out.is_file() and __import__("json").loads(args.out.read_text())
        for key in ("train", "decode", "routing_purity", "date", "machine", "command", "wall_s"):
            if previous and key in previous:
                report[key] = previous[key]
        report["rescored"] = "python bench/speech_llm.py " + " ".join(args.argv)
        names = []
    if ZERO_SHOT in names:
        handle = load_whisper(b.encoder)
        rows[ZERO_SHOT] = {}
        for ts in sets:
            got, secs = decode_whisper(handle, x_en(ts.utts), b.max_new_tokens)
            rows[ZERO_SHOT][ts.name] = got
            P.save_rows(hyps_dir, ZERO_SHOT, ts.name, got)
            report["decode"][f"{ZERO_SHOT}/{ts.name}"] = round(secs, 1)
            log(f"{ZERO_SHOT} {ts.name}: {len(got)} rows in {secs:.0f} s")
        del handle
    for name in names:
        if name == ZERO_SHOT:
            continue
        cfg, overrides = config_of(name, args, b)
        record = P.train_once(cfg)
        record["overrides"] = overrides
        report["train"][name] = P.slim(record)
        log(f"train {name}: {record['seconds']:.0f} s{' (cached)' if record['cached'] else ''}")
        model = load_speech_llm(Path(record["final"]))
        rows[name] = {}
        for ts in sets:
            got, secs = decode_llm(model, ts.utts, b.max_new_tokens)
            rows[name][ts.name] = got
            P.save_rows(hyps_dir, name, ts.name, got)
            report["decode"][f"{name}/{ts.name}"] = round(secs, 1)
            log(f"{name} {ts.name}: {len(got)} rows in {secs:.0f} s")
        test = next((ts for ts in sets if ts.name == "test"), sets[0])
        report["routing_purity"][name] = routing_purity(model, test.utts)
        del model
    results: dict = {}
    for name in rows:
        results[name] = {}
        for ts in sets:
            mine = rows[name][ts.name]
            scored = ts.utts if name != ZERO_SHOT else x_en(ts.utts)
            cell = {"bleu": absolute(ts.utts, mine), "scores": P.scores(scored, mine)}
            if ZERO_SHOT in rows and name != ZERO_SHOT:
                cell["vs_zero_shot"] = differences(ts.utts, rows[ZERO_SHOT][ts.name], mine)
            if "linear" in rows and name not in ("linear", ZERO_SHOT):
                cell["vs_linear"] = differences(ts.utts, rows["linear"][ts.name], mine)
            results[name][ts.name] = cell
    report["results"] = results
    report["examples"] = {
        name: [
            {"id": r["id"], "hyp": r.get("hypothesis", "")} for r in rows[name][sets[0].name][:3]
        ]
        for name in rows
    }
    if args.rescore:
        report["rescore_s"] = round(time.perf_counter() - start, 1)
        report.setdefault("wall_s", report["rescore_s"])
    else:
        report["wall_s"] = round(time.perf_counter() - start, 1)
    return report


def _interval(x: dict | None) -> str:
    if not x:
        return "-"
    return f"{x['estimate']:.1f} [{x['low']:.1f}, {x['high']:.1f}]"


def _chrf(cell: dict, side: str) -> str:
    """chrF macro over the side's directions (from `scores`), or '-'."""
    rows = cell.get("scores", {}).get("rows", {})
    got = [r["chrf"] for d, r in rows.items() if (d.startswith("en-") == (side == "en_x"))]
    got = [x for x in got if x is not None]
    return f"{sum(got) / len(got):.1f}" if got else "-"


def _macro(diffs: dict | None, side: str) -> dict | None:
    if not diffs or side not in diffs:
        return None
    return P.headline(diffs[side], "st")


def markdown(report: dict) -> str:
    """One table per test set: BLEU X->en and en->X (pooled, bootstrap interval), the paired
    differences to zero-shot and to `linear` (macro over directions), routing purity."""
    out = []
    for test in report["test_sets"]:
        out += [
            f"**{test}** ({report['test_sets'][test]['rows']} rows)",
            "",
            "| system | BLEU X->en | BLEU en->X | chrF X->en | chrF en->X | d X->en vs zero-shot | "
            "d X->en vs linear | d en->X vs linear | routing purity |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, res in report["results"].items():
            r = res[test]
            bleu = r["bleu"]
            purity = report["routing_purity"].get(name)
            pur = ", ".join(f"{k} {v:.2f}" for k, v in purity.items()) if purity else "-"
            out.append(
                f"| {name} | {_interval(bleu.get('x_en', {}).get('pooled'))} | "
                f"{_interval(bleu.get('en_x', {}).get('pooled'))} | "
                f"{_chrf(r, 'x_en')} | {_chrf(r, 'en_x')} | "
                f"{P.delta(_macro(r.get('vs_zero_shot'), 'x_en'))} | "
                f"{P.delta(_macro(r.get('vs_linear'), 'x_en'))} | "
                f"{P.delta(_macro(r.get('vs_linear'), 'en_x'))} | {pur} |"
            )
        out.append("")
    return "\n".join(out)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--budget", choices=tuple(BUDGETS), default="cpu")
    ap.add_argument("--corpus", type=Path, default=Path("/work/data/corpus_large"))
    ap.add_argument("--real", type=Path, action="append", default=[], help="real-speech manifest")
    ap.add_argument("--systems", default=",".join([ZERO_SHOT, *SYSTEMS]))
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_speech_llm"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--hyps", type=Path, help="default: <out folder>/<out stem>/")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    ap.add_argument(
        "--rescore", action="store_true", help="re-derive the report from the kept hypotheses"
    )
    ap.add_argument("--step-time", action="store_true", help="only float32 vs bfloat16 s/step")
    ap.add_argument("--_step", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args._step:
        import json

        print(json.dumps(step_time(args._step, threads=args.threads)))
        return 0
    if args.step_time:
        return measure_steps(args.out.with_name("speech_llm_step.json"), args.threads)
    P.main(argv, parse_args, run, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
