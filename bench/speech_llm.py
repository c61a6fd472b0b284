"""Speech-LLM on Gemma 3 270M: ST BLEU/chrF X->en, en->X and code-switched ST per system.

Whisper base encoder (frozen) -> projector -> Gemma 3 270M (frozen), trained on the corpus's ST
rows (X->en and en->X) with the `speech_llm` recipe (configs/molora/molora_llm_lang.yaml plus
each system's overrides), then decoded (greedy) on the clean test set, a noisy copy of it (white
noise at `--snr` dB) and the code-switched ST test set:

    linear            linear projector, LLM frozen, nothing in the LLM
    moe               MoE projector (7 language groups x 2 experts, language + balance losses)
    lora              linear projector + one LoRA in the LLM (attention + MLP, rank 8)
    molora_lang       linear projector + MoLoRA in the LLM, language router (shared + per language)
    molora_hybrid     ... hybrid router (learned top-1 + language prior; balance and z losses)
    molora_lang_mgrf  molora_lang + MGRF on the projector output (sentence vector fused in)
    whisper_translate Whisper base's own <|translate|> (zero-shot; X->en only): the reference

Every BLEU has a bootstrap 95 % interval (1,000 resamples, macro over directions), every
difference to `linear` a paired one (babelora.evaluate.bootstrap). Routing purity (MoLoRA): the
share of test rows whose dominant routed expert, teacher-forced and averaged over the LLM's
expert layers, is the row's own routing key (the language router is pure by construction).

    python bench/speech_llm.py --corpus runs/corpus --budget cpu     # < 60 min on 2 CPU cores
    python bench/speech_llm.py --corpus runs/corpus --budget full    # a GPU machine
    python bench/speech_llm.py --corpus runs/corpus --smoke          # minutes: the whole path
    python bench/speech_llm.py --step-time    # float32 vs bfloat16 step time + peak memory

Results: bench/results/speech_llm.json (or --out) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, reset_accelerate, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs" / "molora" / "molora_llm_lang.yaml"
RESULTS = ROOT / "bench" / "results" / "speech_llm.json"
P = "recipe.params"
LANGS = "[de,fr,es,it,nl,pt,en]"
SYSTEMS: dict[str, list[str]] = {  # name -> overrides of BASE_CONFIG
    "linear": [f"{P}.molora=null"],
    "moe": [
        f"{P}.molora=null",
        f"{P}.model.projector.kind=moe",
        f"{P}.model.projector.moe.num_groups=7",
        f"{P}.model.projector.moe.experts_per_group=2",
        f"{P}.model.projector.moe.group_langs={LANGS}",
        f"{P}.model.projector.moe.top_k=1",
    ],
    "lora": [
        f"{P}.molora=null",
        f"{P}.lora={{rank: 8, alpha: 16.0, dropout: 0.05, targets: [causal-lm-all]}}",
    ],
    "molora_lang": [],
    "molora_hybrid": [
        f"{P}.molora.router=hybrid",
        f"{P}.molora.top_k=1",
        f"{P}.molora.routing_level=token",
    ],
    "molora_lang_mgrf": [f"{P}.model.mgrf={{pooling: attention, fusion: gated}}"],
}
BUDGETS = {  # steps per system, batch seconds, test rows per direction, tokens, threads
    "smoke": dict(steps=1, batch_seconds=20.0, per_direction=1, max_new_tokens=6),
    "cpu": dict(steps=20, batch_seconds=30.0, per_direction=3, max_new_tokens=32),
    "full": dict(steps=3000, batch_seconds=240.0, per_direction=None, max_new_tokens=96),
}


def direction(u) -> str:
    return f"{u.lang}-{u.target_lang or 'en'}"


def test_rows(path: Path, n: int | None, seed: int = 0) -> list:
    """ST rows of a manifest, the first `n` per direction (all when None)."""
    from babelora.data.manifest import read_manifest

    by: dict[str, list] = defaultdict(list)
    for u in read_manifest(path):
        if u.task == "st" and (n is None or len(by[direction(u)]) < n):
            by[direction(u)].append(u)
    return [u for d in sorted(by) for u in by[d]]


def noisy_copy(utts: list, out: Path, snr_db: float, seed: int = 0) -> list:
    """The same utterances with white noise at `snr_db` (files written once under `out`)."""
    import dataclasses

    import soundfile as sf

    from babelora.data.audio import SAMPLE_RATE, load_audio

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    noisy = []
    for u in utts:
        path = out / f"{u.id}.wav"
        if not path.is_file():
            wave = load_audio(u.audio_filepath)
            power = float(np.mean(wave**2)) or 1e-8
            noise = rng.standard_normal(len(wave)) * np.sqrt(power / 10 ** (snr_db / 10))
            sf.write(path, np.clip(wave + noise, -1, 1).astype(np.float32), SAMPLE_RATE)
        noisy.append(dataclasses.replace(u, audio_filepath=str(path)))
    return noisy


def train_system(name: str, corpus: Path, work: Path, budget: dict, smoke: bool) -> Path:
    from babelora.methods.registry import load_config, train

    out = work / name
    overrides = [
        *SYSTEMS[name],
        f"output_dir={out}",
        f"data.train=[{corpus / 'train.jsonl'}]",
        f"data.dev=[{corpus / 'dev.jsonl'}]",
        "data.dev_max_items=8",
        f"data.batch_seconds={budget['batch_seconds']}",
        f"max_steps={budget['steps']}",
        f"eval.every={budget['steps']}",
        f"checkpoint.save_every={budget['steps']}",
        "optim.warmup_steps=0",
        "progress_bar=false",
    ]
    if smoke:
        overrides.append("model.name=tiny.en")
    reset_accelerate()
    t0 = time.perf_counter()
    result = train(load_config(BASE_CONFIG, overrides))
    log(f"{name}: {budget['steps']} steps in {time.perf_counter() - t0:.0f} s")
    return Path(result.final_dir)


def decode(model, utts: list, max_new_tokens: int) -> list[str]:
    from babelora.decode.runner import Request
    from babelora.methods.speech_llm.decode import decode_speech_llm

    reqs = [Request(u.id, u.audio_filepath, u.lang, u.task, u.target_lang) for u in utts]
    results = decode_speech_llm(model, reqs, max_new_tokens=max_new_tokens)
    return [r.hypothesis if r.error is None else "" for r in results]


def whisper_translate(utts: list, max_new_tokens: int, smoke: bool) -> list[str | None]:
    """Whisper base's <|translate|> on X->en rows (None elsewhere: it translates into English
    only)."""
    from babelora.decode.runner import Request, RunnerOptions, decode_requests
    from babelora.decode.search import DecodeOptions
    from babelora.models.whisper import load_whisper

    handle = load_whisper("tiny.en" if smoke else "base")
    rows = [i for i, u in enumerate(utts) if (u.target_lang or "en") == "en" and u.lang != "en"]
    reqs = [Request(utts[i].id, utts[i].audio_filepath, utts[i].lang, "st", "en") for i in rows]
    opts = RunnerOptions(show_progress=False)
    results = decode_requests(handle, reqs, DecodeOptions(max_new_tokens=max_new_tokens), opts)
    out: list[str | None] = [None] * len(utts)
    for i, res in zip(rows, results):
        out[i] = res.hypothesis
    return out


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


def score(utts: list, hyps: list, baseline: list | None) -> dict:
    """BLEU/chrF per direction and macro over X->en / en->X, with (paired) intervals."""
    from babelora.evaluate.bootstrap import (
        bleu_from_stats,
        bleu_stats,
        bootstrap,
        chrf_from_stats,
        chrf_stats,
        paired_bootstrap,
    )

    keep = [i for i, h in enumerate(hyps) if h is not None]
    out: dict = {"n": len(keep), "directions": {}}
    groups = {"x_en": [], "en_x": []}
    for i in keep:
        groups["en_x" if utts[i].lang == "en" else "x_en"].append(i)
    for d in sorted({direction(utts[i]) for i in keep}):
        idx = [i for i in keep if direction(utts[i]) == d]
        groups[d] = idx
    for name, idx in groups.items():
        if not idx:
            continue
        refs = [utts[i].reference for i in idx]
        tgt = utts[idx[0]].target_lang or "en"
        lang = tgt if name not in ("x_en", "en_x") else None
        strata = [direction(utts[i]) for i in idx]
        bs = bleu_stats(refs, [hyps[i] for i in idx], lang)
        metric = functools.partial(bleu_from_stats, lang=lang)
        row = {
            "n": len(idx),
            "bleu": bootstrap(bs, metric, strata=strata).to_json(),
            "chrf": chrf_from_stats(chrf_stats(refs, [hyps[i] for i in idx]).sum(0)),
        }
        if baseline is not None and all(baseline[i] is not None for i in idx):
            base = bleu_stats(refs, [baseline[i] for i in idx], lang)
            row["bleu_vs_linear"] = paired_bootstrap(base, bs, metric, strata=strata).to_json()
        (out["directions"] if name not in ("x_en", "en_x") else out)[name] = row
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
            "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        },
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--step-time",
        action="store_true",
        help="only measure float32 vs bfloat16 step time and peak memory",
    )
    ap.add_argument("--_step", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, default=ROOT / "runs" / "corpus")
    ap.add_argument("--budget", choices=["cpu", "full"], default="cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny.en encoder, 1 step, 1 row/direction")
    ap.add_argument("--systems", default=",".join(["whisper_translate", *SYSTEMS]))
    ap.add_argument("--snr", type=float, default=10.0, help="noisy test set SNR in dB")
    ap.add_argument("--work", type=Path, default=Path("/tmp/babelora_bench_speech_llm"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    args = ap.parse_args()
    import torch

    if args._step:
        import json

        print(json.dumps(step_time(args._step, threads=args.threads)))
        return 0
    if args.step_time:
        return measure_steps(args.out.with_name("speech_llm_step.json"), args.threads)
    torch.set_num_threads(args.threads)
    budget = BUDGETS["smoke" if args.smoke else args.budget]
    names = [s for s in args.systems.split(",") if s]
    sets = {
        "clean": test_rows(args.corpus / "test.jsonl", budget["per_direction"]),
        "cs": test_rows(args.corpus / "test_cs.jsonl", budget["per_direction"]),
    }
    sets["noisy"] = noisy_copy(sets["clean"], args.work / f"noisy_snr{args.snr:g}", args.snr)
    t_start = time.perf_counter()
    hyps: dict[str, dict[str, list]] = {}
    report: dict = {"systems": {}}
    for name in names:
        t0 = time.perf_counter()
        if name == "whisper_translate":
            hyps[name] = {
                k: whisper_translate(v, budget["max_new_tokens"], args.smoke)
                for k, v in sets.items()
            }
            report["systems"][name] = {"seconds": time.perf_counter() - t0}
            continue
        from babelora.methods.speech_llm.recipe import load_speech_llm

        final = train_system(name, args.corpus, args.work, budget, args.smoke)
        model = load_speech_llm(final)
        hyps[name] = {k: decode(model, v, budget["max_new_tokens"]) for k, v in sets.items()}
        report["systems"][name] = {
            "seconds": time.perf_counter() - t0,
            "routing_purity": routing_purity(model, sets["clean"]),
        }
        del model
    for name in names:
        for key, utts in sets.items():
            base = hyps.get("linear", {}).get(key) if name != "linear" else None
            report["systems"][name][key] = score(utts, hyps[name][key], base)
        report["systems"][name]["examples"] = [
            {"id": u.id, "ref": u.reference, "hyp": h}
            for u, h in list(zip(sets["clean"], hyps[name]["clean"]))[:3]
        ]
    report["meta"] = {
        "date": date.today().isoformat(),
        "budget": "smoke" if args.smoke else args.budget,
        **budget,
        "corpus": os.path.relpath(args.corpus, ROOT)
        if args.corpus.is_absolute()
        else str(args.corpus),
        "snr_db": args.snr,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "encoder": "tiny.en" if args.smoke else "base",
        "lm": "gemma3-270m (float32, frozen)",
        "seconds": time.perf_counter() - t_start,
        "test_rows": {k: len(v) for k, v in sets.items()},
    }
    write_json(args.out, report)
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    def fmt(row: dict | None, key: str = "bleu") -> str:
        if not row or key not in row:
            return "n/a"
        i = row[key]
        return f"{i['estimate']:.1f} [{i['low']:.1f}, {i['high']:.1f}]"

    lines = [
        "| system | X->en BLEU | en->X BLEU | X->en noisy | CS-ST BLEU | d X->en vs linear | "
        "routing purity |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in report["systems"].items():
        purity = s.get("routing_purity")
        pur = ", ".join(f"{k} {v:.2f}" for k, v in purity.items()) if purity else "-"
        lines.append(
            f"| {name} | {fmt(s['clean'].get('x_en'))} | {fmt(s['clean'].get('en_x'))} | "
            f"{fmt(s['noisy'].get('x_en'))} | {fmt(s['cs'].get('x_en'))} | "
            f"{fmt(s['clean'].get('x_en'), 'bleu_vs_linear')} | {pur} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
