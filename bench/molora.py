"""MoLoRA (AAAI 2026) vs LoRA on multilingual Whisper base, to the evaluation protocol of
docs/benchmarks.md, plus MoLoRA's training-step and decoding speed.

Quality (`--parts quality`, the default). Rows, each stating what trains (from its run's
run_info.json) and its router; every row decodes with the language given (the gold prompt token,
which the language and hybrid routers also route by):
  zero_shot         Whisper base, nothing trained
  lora_r8           one PEFT LoRA on all languages at MoLoRA's per-expert rank (equal rank)
  lora_r56          one PEFT LoRA with MoLoRA's trainable parameters: rank = per-expert rank x
                    (experts + shared), from configs/molora/molora_lang.yaml (8 x 7 for six
                    languages: equal parameters); the baseline of the second difference column
  molora_lang       MoLoRA: one shared expert always on + one expert per language, language
                    router (hard, per utterance)
  molora_learned    MoLoRA: one shared + as many routed experts as languages, learned top-2
                    router per token (Switch load balance, z-loss)
  molora_hybrid     MoLoRA: learned top-2 per token plus a prior on the row's language expert
  molora_lang_mgrf  molora_lang + MGRF, Whisper side: each utterance's pooled encoder vector fused
                    back into its frames before cross-attention (configs/molora/molora_mgrf.yaml;
                    the paper feeds an LLM, see docs/molora.md). Its claim: robustness to noise,
                    hence the clean and noisy test sets side by side
Every trained row: the same adapter targets (`cpu`: the decoder's self- and cross-attention
q/k/v/out and fc1/fc2, `whisper-decoder`; `full`: encoder too), steps, batches, lr and seed.

MGRF sits after the encoder and trains, so its row cannot train from the encoder-state cache
(the engine refuses: encoder-side parameters and a forward hook) and trains live, the base
encoder frozen; its setting says so. At decoding the encoder memo (`P.EncoderMemo`) serves the
base encoder's own output and MGRF still runs on it, every call (`P.attach_memo_below`; tested in
tests/bench/test_molora_bench.py).

Data: the training rows (ASR and ST X->en of the six languages) of a corpus build (`--data`, the
`large` build of the protocol); test sets: the build's unseen-speaker `test.jsonl`, its
`test_noisy.jsonl` (white, pink, babble at 5-20 dB) and each `--real` manifest (Fish Fillets NG).
Metrics: WER (ASR) and BLEU X->en (chrF and language confusion in the JSON), macro over
languages; every difference (vs zero-shot, vs lora_r56) is a paired bootstrap 95 % interval
(1,000 resamples, seed 0). Routing: the learned and hybrid routers' expert usage per language
(teacher-forced, `babelora.methods.molora.analysis`) on the first `routing_per_group` rows per
(language, task) of the clean test, with its purity (sum over experts of the largest language's
routed mass / all routed mass: 1/languages = no specialisation, 1 = each expert serves one
language) and, for the hybrid router, each language's share on its own expert; `--routing-png`
draws the heatmaps. Per-utterance hypotheses are kept in
`bench/results/molora/<system>.<test set>.jsonl.gz` beside each test set's sampled manifest
(`<test set>.manifest.jsonl`), so any cell can be re-derived:

    babelora score --manifest bench/results/molora/test_noisy.manifest.jsonl \\
        --hyps bench/results/molora/molora_lang_mgrf.test_noisy.jsonl.gz \\
        --baseline bench/results/molora/lora_r56.test_noisy.jsonl.gz

Budgets (`--budget`; single options below override):
  smoke  tiny random multilingual Whisper (base's tokenizer), a few steps and rows: 1-2 min
  cpu    Whisper base, decoder-side adapters (encoder frozen: every row but MGRF's trains from
         the encoder-state cache), the protocol's minimum samples (100 rows per language and
         task; the noisy copy 50): ~45 min on 2 quiet cores (estimate and basis: the `cpu`
         budget's comment)
  full   Whisper base, adapters on encoder + decoder, all rows, seeds 0, 1, 2: a GPU

    python bench/molora.py --budget smoke --data /tmp/corpus_default \\
        --real /tmp/fil/fillets.nl.test.jsonl --work /tmp/bench_molora_smoke --out /tmp/x.json
    python bench/molora.py --budget cpu --data /work/data/corpus_large \\
        --real /tmp/fil/fillets.nl.test.jsonl --zero-shot-from bench/results/experts.json

Speed (`--parts timing,decode`; bench/molora_speed.py: a. training step time and memory of
MoLoRA vs LoRA at equal rank and equal parameters, b. greedy decoding throughput of LoRA, routed
MoLoRA and its folded per-language export) on `--speed-model` (default: the budget's model),
results in `--speed-out` (default bench/results/molora_speed.json):

    python bench/molora.py --parts timing,decode --threads 1 --timing-rounds 8
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol as P  # noqa: E402
from common import log, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
LANGS = ("de", "fr", "es", "it", "nl", "pt")
SYSTEMS = (
    "zero_shot",
    "lora_r8",
    "lora_r56",
    "molora_lang",
    "molora_learned",
    "molora_hybrid",
    "molora_lang_mgrf",
)
TRAINED = {  # system -> config it trains from
    "lora_r8": "train/lora_tiny.yaml",
    "lora_r56": "train/lora_tiny.yaml",
    "molora_lang": "molora/molora_lang.yaml",
    "molora_learned": "molora/molora_learned.yaml",
    "molora_hybrid": "molora/molora_hybrid.yaml",
    "molora_lang_mgrf": "molora/molora_mgrf.yaml",
}
BASELINE = "lora_r56"  # the matched-parameter LoRA: the second difference of every row
ROUTED = ("molora_learned", "molora_hybrid")  # routers whose usage per language is measured


@dataclass(frozen=True)
class Budget:
    """The size of one run of the table (docs/benchmarks.md, Budgets)."""

    model: str  # Whisper to start from ("smoke": the tiny random multilingual model)
    whole_model: bool  # adapters on encoder + decoder (else decoder only: encoder-state cache)
    steps: int  # optimizer steps of every trained row
    batch_seconds: float  # audio per batch
    warmup: int
    rank: int  # per MoLoRA expert and of lora_r8; lora_r56: rank x (experts + shared)
    train_per_group: int | None  # training rows per (language, task); None = all
    test_per_group: int | None  # synthetic test rows per (language, task); None = all
    noisy_per_group: int | None  # rows of the noisy copy per (language, task)
    real_per_group: int | None  # real-speech rows per (language, task)
    routing_per_group: int | None  # clean test rows per (language, task) for the routing usage
    seeds: tuple[int, ...]
    min_input_seconds: float = 0.0  # training input padding (the cache's policy); trained
    # rows decode with it too, the zero-shot row at the decoder's default 10 s
    max_new_tokens: int = 96
    lr: float = 1e-3  # every trained row (LoRA, experts, routers, MGRF)


# `cpu` sizing, in CPU seconds of one thread (Whisper base fp32, measured on the 2-core machine
# under load, so pessimistic): a decoder-side LoRA / expert step from cached encoder states with
# 60 s of audio ~2 s (the experts table's cpu run: 150 steps in 431 s wall with the cache fill),
# MoLoRA ~1.1x (speed table a); MGRF trains live: + the encoder's forward on 60 s of audio (~2.5
# s) per step; filling the cache 0.04-0.07 s per clip (720 clips). Decoding (this script's rows
# on 72 test rows, 1 thread): zero-shot at 10 s 0.64 s per row (ASR and ST rows share a clip, so
# the encoder runs once per two rows); a trained row at its own length with the encoder memoised
# 0.14 s per row merged LoRA, 0.20 s routed MoLoRA (all routers), + ~0.12 s per row once for the
# own-length encoder states. Estimate: training 5 x 60 steps x ~2.1 + MGRF 60 x ~4.6 + fill ~50
# = ~950; decoding 2,000 rows (test 1,200, noisy 600 at 50 per group, real 200): zero-shot
# ~1,300, LoRA 2 x ~290 + 240, MoLoRA 4 x ~400: ~3,700; routing usage ~50. Total ~4,700 s of one
# thread, ~45 min on 2 quiet cores (~1.7x from the second thread): over 35 min because of the
# protocol's 100 rows per language and task; decoding is three quarters of it. With the zero-shot
# rows of the experts table's run (`--zero-shot-from bench/results/experts.json`: the same
# sample, model and options, checked) ~1,300 fewer: ~35 min.
BUDGETS = {
    "smoke": Budget(
        model="smoke",
        whole_model=False,
        steps=3,
        batch_seconds=8.0,
        warmup=0,
        rank=2,
        train_per_group=3,
        test_per_group=2,
        noisy_per_group=2,
        real_per_group=2,
        routing_per_group=2,
        seeds=(0,),
        max_new_tokens=8,
        lr=0.05,  # large steps: three of them must change what the random model says
    ),
    "cpu": Budget(
        model="base",
        whole_model=False,
        steps=60,
        batch_seconds=60.0,
        warmup=6,
        rank=8,
        train_per_group=120,
        test_per_group=100,
        noisy_per_group=50,
        real_per_group=100,
        routing_per_group=10,
        seeds=(0,),
    ),
    "full": Budget(
        model="base",
        whole_model=True,
        steps=2000,
        batch_seconds=240.0,
        warmup=100,
        rank=8,
        train_per_group=None,
        test_per_group=None,
        noisy_per_group=None,
        real_per_group=None,
        routing_per_group=None,
        seeds=(0, 1, 2),
    ),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--parts", default="quality", help="quality, timing, decode (comma list)")
    p.add_argument("--budget", choices=tuple(BUDGETS), default="cpu")
    p.add_argument("--data", type=Path, default=Path("/work/data/corpus_large"))
    p.add_argument("--real", type=Path, action="append", default=[], help="real-speech manifest")
    p.add_argument("--langs", default=",".join(LANGS))
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--model", help="override the budget's model")
    p.add_argument("--steps", type=int, help="override the budget's training steps")
    p.add_argument("--test-per-group", type=int, help="override the budget's test sample")
    p.add_argument("--seeds", help="override the budget's seeds (comma list)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--routing-png", action="store_true", help="draw the routing heatmaps")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_molora"))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "molora.json")
    p.add_argument("--hyps", type=Path, help="default: <out folder>/molora/")
    p.add_argument(
        "--zero-shot-from",
        type=Path,
        help="another table's results JSON (e.g. bench/results/experts.json) whose zero-shot "
        "rows to reuse where it decoded the same sample with the same model (checked)",
    )
    speed = p.add_argument_group("speed (parts timing, decode)")
    speed.add_argument("--speed-model", help="default: the budget's model")
    speed.add_argument("--speed-out", type=Path, default=ROOT / "bench/results/molora_speed.json")
    speed.add_argument("--timing-batch-seconds", type=float, default=24.0)
    speed.add_argument("--timing-rounds", type=int, default=8)
    speed.add_argument("--timing-warmup", type=int, default=2)
    speed.add_argument("--decode-per-lang", type=int, default=6, help="ST rows per language")
    speed.add_argument("--decode-repeats", type=int, default=2, help="best of N passes")
    return p.parse_args(argv)


def budget_of(args) -> Budget:
    b = BUDGETS[args.budget]
    if args.model:
        b = replace(b, model=args.model)
    if args.steps:
        b = replace(b, steps=args.steps)
    if args.test_per_group:
        n = args.test_per_group
        b = replace(b, test_per_group=n, noisy_per_group=n, real_per_group=n)
    if args.seeds:
        b = replace(b, seeds=tuple(int(x) for x in args.seeds.split(",")))
    return b


# ----------------------------------------------------------------------------------- training
def equal_parameter_rank(rank: int, langs) -> int:
    """The LoRA rank with MoLoRA's (language router) trainable parameters on the same linears:
    rank x (shared experts + experts per language x languages), from molora_lang.yaml."""
    from babelora.config import read_yaml

    molora = read_yaml(CONFIGS / TRAINED["molora_lang"])["recipe"]["params"]["molora"]
    return rank * (int(molora.get("num_shared", 1)) + int(molora.get("experts_per_lang", 1)) *
                   len(langs))  # fmt: skip


def train_overrides(system: str, b: Budget, langs, model: str, data: Path, out: Path, seed: int):
    """Dotted overrides of the system's config (configs/*/*.yaml) for this budget."""
    over = [
        f"output_dir={out / f'{system}.seed{seed}'}",
        f"model.name={model}",
        "model.prompt_style=multilingual",
        f"data.train=[{data}]",
        "data.dev=[]",
        f"data.languages=[{','.join(langs)}]",
        "data.tasks=[asr,st]",
        f"data.batch_seconds={b.batch_seconds}",
        f"data.min_input_seconds={b.min_input_seconds}",
        f"max_steps={b.steps}",
        f"optim.warmup_steps={min(b.warmup, b.steps - 1)}",
        f"optim.lr={b.lr}",
        f"checkpoint.save_every={b.steps}",
        "checkpoint.keep_best=0",
        "eval.every=0",
        "progress_bar=false",
        f"log_every={max(1, b.steps // 10)}",
        f"cache_dir={out / 'cache'}",
        f"seed={seed}",
    ]
    if system.startswith("lora_"):
        rank = b.rank if system == "lora_r8" else equal_parameter_rank(b.rank, langs)
        parts = "encoder,decoder" if b.whole_model else "decoder"
        return over + [
            f"recipe.params.rank={rank}",
            f"recipe.params.alpha={2.0 * rank}",
            f"recipe.params.parts=[{parts}]",
        ]
    targets = "whisper-all" if b.whole_model else "whisper-decoder"
    over += [
        f"recipe.params.molora.lora.rank={b.rank}",
        f"recipe.params.molora.lora.alpha={2.0 * b.rank}",
        f"recipe.params.molora.lora.targets=[{targets}]",
    ]
    if system == "molora_learned":
        over.append(f"recipe.params.molora.num_experts={len(langs)}")  # one per language
    return over


def train_system(system: str, b: Budget, langs, model: str, data: Path, out: Path, seed: int):
    from babelora.train.config import load_train_config

    over = train_overrides(system, b, langs, model, data, out, seed)
    cfg = load_train_config(CONFIGS / TRAINED[system], over)
    record = P.train_once(cfg)
    record["config"] = str((CONFIGS / TRAINED[system]).relative_to(ROOT))
    record["overrides"] = over
    record["recipe_params"] = cfg.recipe.params
    return record


def router_of(system: str, record: dict | None) -> str:
    """The row's router, from its trained config."""
    if record is None or system.startswith("lora_"):
        return "none (one adapter)" if record is not None else "-"
    m = record["recipe_params"]["molora"]
    if m["router"] == "language":
        return "language (hard, per utterance)"
    level = m.get("routing_level", "token")
    top = f"top-{m.get('top_k', 2)}"
    if m["router"] == "hybrid":
        return f"hybrid ({top} per {level}, language prior {m.get('prior_strength', 5.0)})"
    return f"learned ({top} per {level})"


def setting(system: str, record: dict | None) -> dict:
    """What the row trains (the engine's label, counts per part), its router and adapter shape;
    the MGRF row says that its encoder-side parameters are MGRF's (the base encoder frozen)."""
    out = {**P.setting(record), "router": router_of(system, record), "language": "given"}
    if record is None:
        return out
    info = record["run_info"]
    out["parameters_by_part"] = dict(info["trainable_parameters"])
    if not info["encoder_cache"]["used"]:
        out["encoder_cache_reason"] = info["encoder_cache"].get("reason")
    params = record["recipe_params"]
    if system.startswith("lora_"):
        out["adapter"] = f"LoRA rank {params['rank']} on {'+'.join(params['parts'])}"
    else:
        m = params["molora"]
        experts = m.get("num_experts") or len(record["langs"]) * m.get("experts_per_lang", 1)
        out["adapter"] = (
            f"MoLoRA {m.get('num_shared', 1)} shared + {experts} routed experts, rank "
            f"{m['lora']['rank']} on {','.join(m['lora']['targets'])}"
        )
    if params.get("mgrf") is not None:
        out["mgrf"] = "after the encoder, before cross-attention (encoder weights frozen)"
    return out


# ----------------------------------------------------------------------------------- decoding
def load_system(system: str, base, pristine, records: dict, seed: int):
    """(handle, expert-set adapter or None) of a system: `base` for the zero-shot row, else a
    copy of the `pristine` base with the system's weights (LoRA merged; MoLoRA routed, with
    MGRF where trained)."""
    from babelora.methods.loading import apply_peft_adapter, load_expert_set

    if system == "zero_shot":
        return base, None
    handle = P.fresh(pristine)
    final = records[(system, seed)]["final"]
    if system.startswith("lora_"):
        return apply_peft_adapter(handle, final), None
    return handle, load_expert_set(handle, final)


def routing(handle, adapter, utts, min_input_seconds: float, png: Path | None) -> dict:
    """Expert usage per language (teacher-forced), its purity and, for language-tied experts,
    each language's share on its own expert; per layer group (all, encoder, decoder)."""
    from babelora.methods.molora.analysis import collect_routing_usage, plot_usage

    usage = collect_routing_usage(handle, adapter, list(utts), min_input_seconds=min_input_seconds)
    adapter.context.clear()
    data = usage.to_json()
    out = {"usage": {k: data[k] for k in ("languages", "experts", "utterances", "groups")}}
    counts = np.asarray(usage.counts, dtype=float)
    out["purity"] = {g: purity(usage.table(g), counts) for g in usage.groups()}
    own = [usage.experts.index(x) if x in usage.experts else None for x in usage.languages]
    if all(i is not None for i in own):
        out["own_expert_share"] = {
            g: {x: round(float(usage.table(g)[li, ei]), 4) for li, (x, ei) in
                enumerate(zip(usage.languages, own))}
            for g in usage.groups()
        }  # fmt: skip
    out["chance_purity"] = 1.0 / max(len(usage.languages), 1)
    if png is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
        out["png"] = str(plot_usage(usage, png, f"{adapter.config.router} router: expert usage"))
    return out


def purity(table: np.ndarray, counts: np.ndarray) -> float:
    """Share of routed mass that goes to each expert's dominant language: sum over experts of
    the largest language's mass / total mass (table: mean weight per utterance, (L, E))."""
    mass = table * counts[:, None]
    total = mass.sum()
    return round(float(mass.max(axis=0).sum() / total), 4) if total > 0 else 0.0


def run(args) -> dict:
    from babelora.data.manifest import write_manifest
    from babelora.models.whisper import load_whisper

    b = budget_of(args)
    langs = [x for x in args.langs.split(",") if x]
    systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")
    systems = [s for s in SYSTEMS if s in systems or s == "zero_shot"]  # zero-shot first
    torch.set_num_threads(args.threads)
    work = args.work.resolve()
    hyps_dir = (args.hyps or args.out.parent / "molora").resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = model_path(b.model, work)
    t0 = time.perf_counter()

    train = write_manifest(
        P.training_rows(args.data / "train.jsonl", langs, b.train_per_group), work / "train.jsonl"
    )
    tests = P.test_sets(
        args.data, args.real, langs, b.test_per_group, b.real_per_group, b.noisy_per_group
    )
    for ts in tests:
        P.write_subset(ts, hyps_dir)
    log(f"test sets: {', '.join(f'{t.name} {len(t.utts)}' for t in tests)}")

    records: dict = {}
    for seed in b.seeds:
        for system in systems[1:]:
            rec = train_system(system, b, langs, model, train, work, seed)
            rec["langs"] = langs
            records[(system, seed)] = rec
            info = rec["run_info"]
            log(
                f"train {system} seed {seed}: {rec['seconds']:.0f} s"
                f"{' (cached)' if rec['cached'] else ''}, trains {info['trains']} "
                f"{sum(info['trainable_parameters'].values()):,}, "
                f"encoder cache {info['encoder_cache']['used']}"
            )

    pristine = load_whisper(model, prompt_style="multilingual")  # copied for every system
    memo = P.EncoderMemo(pristine.model.get_encoder())
    zero_options = P.runner_options(10.0)
    trained_options = P.runner_options(b.min_input_seconds)  # as the rows trained
    rows: dict = {}
    decode_info: dict = {}
    routing_info: dict = {}
    for ts in tests:
        memo.clear()
        base = P.fresh(pristine)
        for seed in b.seeds:
            for system in systems:
                if system == "zero_shot" and seed != b.seeds[0]:
                    continue
                if system == "zero_shot":
                    found, why = P.reused_zero_shot(
                        args.zero_shot_from,
                        ts,
                        hyps_dir,
                        P.model_label(b.model, model),
                        b.max_new_tokens,
                    )
                    log(f"zero_shot on {ts.name}: {why}")
                    if found is not None:
                        rows[(system, seed, ts.name)] = found
                        decode_info[f"{system}/{seed}/{ts.name}"] = {"seconds": 0.0, "reused": why}
                        continue
                handle, adapter = load_system(system, base, pristine, records, seed)
                P.attach_memo_below(memo, handle.model)  # MGRF runs on the memoised states
                options = zero_options if system == "zero_shot" else trained_options
                out, seconds, memoised = P.decode(
                    handle, P.requests_of(ts.utts), memo, options, b.max_new_tokens, adapter
                )
                rows[(system, seed, ts.name)] = out
                P.save_rows(hyps_dir, system, ts.name, out, seed if system != "zero_shot" else 0)
                decode_info[f"{system}/{seed}/{ts.name}"] = {
                    "seconds": seconds,
                    "rows": len(out),
                    "encoder_memo": memoised,
                }
                log(f"decode {system} seed {seed} on {ts.name}: {seconds:.0f} s")
                if system in ROUTED and ts.name == "test" and b.routing_per_group != 0:
                    png = (
                        args.out.parent / f"molora_routing_{system}.png"
                        if args.routing_png and seed == b.seeds[0]
                        else None
                    )
                    subset = P.first_per_group(ts.utts, b.routing_per_group)
                    start = time.perf_counter()
                    usage = routing(handle, adapter, subset, b.min_input_seconds, png)
                    usage["seconds"] = time.perf_counter() - start
                    routing_info[f"{system}/{seed}"] = usage
                del handle, adapter
    decode_info["encoder_memo"] = {"hits": memo.hits, "misses": memo.misses}

    results: dict = {}
    zero_seed = b.seeds[0]
    for ts in tests:
        zero = rows[("zero_shot", zero_seed, ts.name)]
        for system in systems:
            for seed in [zero_seed] if system == "zero_shot" else b.seeds:
                mine = rows[(system, seed, ts.name)]
                entry = {
                    "scores": P.scores(ts.utts, mine),
                    "vs_zero_shot": P.differences(ts.utts, zero, mine),
                }
                if BASELINE in systems and system not in ("zero_shot", BASELINE):
                    entry[f"vs_{BASELINE}"] = P.differences(
                        ts.utts, rows[(BASELINE, seed, ts.name)], mine
                    )
                results.setdefault(system, {}).setdefault(str(seed), {})[ts.name] = entry
    settings = {s: setting(s, records.get((s, b.seeds[0]))) for s in systems}
    wall = time.perf_counter() - t0
    return {
        "benchmark": "molora",
        "command": "python bench/molora.py " + " ".join(args.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": P.machine(args.threads),
        "budget": {
            "name": args.budget,
            **asdict(b),
            "model": P.model_label(b.model, model),
            "equal_parameter_rank": equal_parameter_rank(b.rank, langs),
        },
        "langs": langs,
        "test_sets": {t.name: {"source": str(t.source), "rows": len(t.utts)} for t in tests},
        "train_rows": sum(1 for _ in open(train)),
        "systems": systems,
        "settings": settings,
        "matched_parameters": matched(settings),
        "train": {f"{s}/{seed}": P.slim(r) for (s, seed), r in records.items()},
        "decode": decode_info,
        "routing": routing_info,
        "results": results,
        "hypotheses": str(P.relative(hyps_dir, ROOT)),
        "wall_s": wall,
    }


def matched(settings: dict) -> dict | None:
    """Trainable parameters of the equal-parameter LoRA and of MoLoRA with the language router
    (the learned and hybrid routers add their router weights)."""
    if BASELINE not in settings or "molora_lang" not in settings:
        return None
    a, m = settings[BASELINE]["parameters"], settings["molora_lang"]["parameters"]
    return {BASELINE: a, "molora_lang": m, "equal": a == m}


def model_path(name: str, work: Path) -> str:
    """The Whisper a budget names ("smoke": the tiny random multilingual model, made once)."""
    return str(P.tiny_multilingual(work / "tiny_multilingual")) if name == "smoke" else name


# ------------------------------------------------------------------------------------- tables
def markdown(report: dict) -> str:
    """One table per test set: macro WER and BLEU of every row, the differences vs zero-shot and
    vs the matched-parameter LoRA with their paired 95 % intervals (* = excludes zero), then the
    per-language scores; the routers' purity. Seed-0 numbers; with several seeds, their spread."""
    langs = report["langs"]
    b = report["budget"]
    parts = [
        f"MoLoRA vs LoRA, budget `{b['name']}` ({b['model']}, {b['steps']} steps, batch "
        f"{b['batch_seconds']} s, expert rank {b['rank']}, equal-parameter LoRA rank "
        f"{b['equal_parameter_rank']}, {'whole model' if b['whole_model'] else 'decoder only'}); "
        f"{report['date']}; {report['machine']['processor']} x{report['machine']['cpu_count']}, "
        f"{report['machine']['threads']} threads; wall {report['wall_s']:.0f} s.\n"
        f"Command: `{report['command']}`"
    ]
    seed = str(b["seeds"][0])
    versus = f"vs_{BASELINE}"
    for test, meta in report["test_sets"].items():
        lines = [
            f"\n### {test} ({meta['rows']} rows: {meta['source']})\n",
            "| system | trains | router | params | WER | Δ vs zero-shot | Δ vs LoRA r56 | BLEU "
            "| Δ vs zero-shot | Δ vs LoRA r56 |",
            "|---" * 10 + "|",
        ]
        for system in report["systems"]:
            entry = _entry(report, system, seed)[test]
            st = report["settings"][system]
            z_asr, z_st = (P.headline(entry["vs_zero_shot"], t) for t in ("asr", "st"))
            l_asr, l_st = (
                (P.headline(entry[versus], t) for t in ("asr", "st"))
                if versus in entry
                else (None, None)
            )
            zero = system == "zero_shot"
            trains = st["trains"] + (" (MGRF)" if "mgrf" in st else "")
            lines.append(
                f"| {system} | {trains} | {st['router']} | {st['parameters']:,} "
                f"| {P.cell(z_asr)}{_spread(report, system, test, 'asr')} "
                f"| {'-' if zero else P.delta(z_asr)} | {P.delta(l_asr)} "
                f"| {P.cell(z_st)}{_spread(report, system, test, 'st')} "
                f"| {'-' if zero else P.delta(z_st)} | {P.delta(l_st)} |"
            )
        parts.append("\n".join(lines))
        per_lang = {s: _entry(report, s, seed)[test]["vs_zero_shot"] for s in report["systems"]}
        parts.append("\n" + P.language_table(per_lang, langs))
    for key, r in report.get("routing", {}).items():
        share = r.get("own_expert_share", {}).get("all")
        own = (
            "; own-language expert share " + ", ".join(f"{x} {v:.2f}" for x, v in share.items())
            if share
            else ""
        )
        parts.append(
            f"\nRouting {key} (teacher-forced, {sum(r['usage']['utterances'].values())} clean "
            f"test rows): purity {r['purity'].get('all', 0):.3f} (chance "
            f"{r['chance_purity']:.3f}){own}."
        )
    parts.append(
        "\nΔ = system - baseline with its paired bootstrap 95 % interval (1,000 resamples, "
        "seed 0; macro rows resample within each language); * = the interval excludes zero. "
        f"Hypotheses: {report['hypotheses']}/<system>.<test set>.jsonl.gz."
    )
    return "\n".join(parts) + "\n"


def _entry(report: dict, system: str, seed: str) -> dict:
    res = report["results"][system]
    return res.get(seed) or next(iter(res.values()))


def _spread(report: dict, system: str, test: str, task: str) -> str:
    values = [
        d["b"]
        for per_test in report["results"][system].values()
        if (d := P.headline(per_test[test]["vs_zero_shot"], task)) is not None
    ]
    if len(values) < 2:
        return ""
    mean, spread = statistics.fmean(values), statistics.pstdev(values)
    return f" ({mean:.1f} ± {spread:.1f}, {len(values)} seeds)"


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    parts = {x for x in args.parts.split(",") if x}
    unknown = parts - {"quality", "timing", "decode"}
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}; known: quality, timing, decode")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if parts & {"timing", "decode"}:
        import molora_speed

        name = args.speed_model or budget_of(args).model
        speed = molora_speed.run_speed(args, parts, model_path(name, args.work.resolve()), name)
        write_json(args.speed_out, speed)
        print(molora_speed.tables(speed))
        log(f"speed results in {args.speed_out}; {speed['wall_s']:.0f} s")
    if "quality" in parts:
        report = run(args)
        write_json(args.out, report)
        text = markdown(report)
        args.out.with_suffix(".md").write_text(text, encoding="utf-8")
        print(text)
        log(f"results in {args.out}; total {report['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
