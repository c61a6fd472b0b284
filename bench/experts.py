"""LoRA language experts (Interspeech 2025) vs standard fine-tuning on Whisper base, to the
evaluation protocol of docs/benchmarks.md.

Rows (each states what trains, from the run's run_info.json, and whether the language is given):
  zero_shot      Whisper base, nothing trained; language given
  full           standard fine-tuning (cpu: the decoder's weights, encoder frozen; full: whole
                 model); language given
  joint_lora     one LoRA on all languages, rank = expert rank x languages (matched parameters,
                 same target linears); language given
  experts        one LoRA expert per language; language given (gold token and expert)
  experts_lid    the same experts, language-agnostic: Whisper base's own LID (first decoding
                 step, candidates = the expert languages) sets the prompt's token and the expert
  weight_fusion  the experts fused in weight space with per-layer weights fitted on dev data
                 (experts frozen), one adapter; language-agnostic (predicted token)
  gated_fusion   output-space gate over the frozen experts, fitted on dev; language-agnostic
  distilled      one student LoRA (rank = joint LoRA's) trained with CE + T^2 KL to each
                 utterance's own expert; language-agnostic
Every language-agnostic row uses the same LID predictions (the base model's, computed once).

Data: the training rows (ASR and ST X->en of the six languages) of a corpus build (`--data`,
the `large` build of the protocol), the fusion rows from its dev split; test sets: the build's
unseen-speaker `test.jsonl`, its `test_noisy.jsonl` when present, and each `--real` manifest
(Fish Fillets NG). Every difference (vs zero-shot, vs the standard fine-tune) is a paired
bootstrap 95 % interval (1,000 resamples, seed 0). Per-utterance hypotheses are kept in
`bench/results/experts/<system>.<test set>.jsonl.gz` beside each test set's sampled manifest
(`<test set>.manifest.jsonl`), so any cell can be re-derived:

    babelora score --manifest bench/results/experts/test.manifest.jsonl \\
        --hyps bench/results/experts/experts.test.jsonl.gz \\
        --baseline bench/results/experts/zero_shot.test.jsonl.gz

Budgets (`--budget`; single options below override):
  smoke  tiny random multilingual Whisper (base's tokenizer), a few steps and rows: 1-2 min
  cpu    Whisper base, decoder-side training (experts on the `whisper-decoder` preset, the joint
         LoRA on the decoder's same linears, full fine-tuning of the decoder) so every system
         trains from the encoder-state cache; 80 steps, sized for < 60 min on 2 quiet cores
         (timings in the `cpu` budget's comment and in the results JSON)
  full   Whisper base, whole-model training (encoder + decoder), all rows, seeds 0, 1, 2: a GPU

    python bench/experts.py --budget smoke --data /tmp/corpus_default \\
        --real /tmp/fil/fillets.nl.test.jsonl --work /tmp/bench_experts_smoke --out /tmp/x.json
    python bench/experts.py --budget cpu --data /work/data/corpus_large \\
        --real /tmp/fil/fillets.nl.test.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import fmean, pstdev

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol as P  # noqa: E402
from common import log  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "experts"
LANGS = ("de", "fr", "es", "it", "nl", "pt")
SYSTEMS = (
    "zero_shot",
    "full",
    "joint_lora",
    "experts",
    "experts_lid",
    "weight_fusion",
    "gated_fusion",
    "distilled",
)
TRAINED = {  # system -> config it trains from (experts_lid reuses the experts)
    "full": "full.yaml",
    "joint_lora": "joint_lora.yaml",
    "experts": "experts_tiny.yaml",
    "weight_fusion": "weight_fusion.yaml",
    "gated_fusion": "gated_fusion.yaml",
    "distilled": "distill.yaml",
}
AGNOSTIC = ("experts_lid", "weight_fusion", "gated_fusion", "distilled")  # language predicted
NEEDS_EXPERTS = ("experts_lid", "weight_fusion", "gated_fusion", "distilled")


@dataclass(frozen=True)
class Budget:
    """The size of one run of the table (docs/benchmarks.md, Budgets)."""

    model: str  # Whisper to start from ("smoke": the tiny random multilingual model)
    whole_model: bool  # train encoder + decoder (else decoder only: encoder-state cache)
    steps: int  # optimizer steps of full, joint_lora, experts and distilled
    fusion_steps: int  # optimizer steps of weight_fusion and gated_fusion (dev data)
    batch_seconds: float  # audio per batch
    warmup: int
    rank: int  # per expert; joint LoRA and the student: rank x languages
    train_per_group: int | None  # training rows per (language, task); None = all
    dev_per_group: int | None  # fusion rows per (language, task)
    test_per_group: int | None  # synthetic test rows per (language, task); None = all
    noisy_per_group: int | None  # rows of the noisy copy per (language, task)
    real_per_group: int | None  # real-speech rows per (language, task)
    seeds: tuple[int, ...]
    min_input_seconds: float = 0.0  # training input padding (the cache's policy); trained
    # rows decode with it too, the zero-shot row and the LID at the decoder's default 10 s
    max_new_tokens: int = 96
    lora_lr: float = 1e-3
    full_lr: float = 5e-5
    fusion_lr: float = 1e-2
    kd_temperature: float = 2.0
    kd_weight: float = 1.0


# `cpu` sizing. Measured at 120 steps and 30 fusion steps (2026-11-27, 2 threads, partly loaded
# 2-core machine): 6,886 CPU-s, 65.9 min wall; training 3,148 CPU-s (distillation 1,022, experts
# 663, decoder full FT 642, joint LoRA 518, fusions 171 + 132), LID and decoding of the three
# test sets ~3,700 CPU-s, which the step count does not change. 80 steps and 20 fusion steps
# (every trained system still ends far below zero-shot at 120) cut ~1,050 CPU-s: < 60 min.
BUDGETS = {
    "smoke": Budget(
        model="smoke",
        whole_model=False,
        steps=3,
        fusion_steps=2,
        batch_seconds=8.0,
        warmup=0,
        rank=2,
        train_per_group=3,
        dev_per_group=2,
        test_per_group=2,
        noisy_per_group=2,
        real_per_group=2,
        seeds=(0,),
        max_new_tokens=8,
        lora_lr=0.05,  # large steps: three of them must change what the random model says
        full_lr=0.01,
        fusion_lr=0.1,
    ),
    "cpu": Budget(
        model="base",
        whole_model=False,
        steps=80,
        fusion_steps=20,
        batch_seconds=60.0,
        warmup=8,
        rank=8,
        train_per_group=120,
        dev_per_group=16,
        test_per_group=100,
        noisy_per_group=50,
        real_per_group=100,
        seeds=(0,),
    ),
    "full": Budget(
        model="base",
        whole_model=True,
        steps=2000,
        fusion_steps=300,
        batch_seconds=240.0,
        warmup=100,
        rank=8,
        train_per_group=None,
        dev_per_group=None,
        test_per_group=None,
        noisy_per_group=None,
        real_per_group=None,
        seeds=(0, 1, 2),
    ),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_experts"))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "experts.json")
    p.add_argument("--hyps", type=Path, help="default: <out folder>/experts/")
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
def train_overrides(system: str, b: Budget, langs, model: str, data: dict, out: Path, seed: int):
    """Dotted overrides of the system's config (configs/experts/*.yaml) for this budget."""
    fusion = system in ("weight_fusion", "gated_fusion")
    steps = b.fusion_steps if fusion else b.steps
    experts = out / f"experts.seed{seed}" / "final"
    joint_rank = b.rank * len(langs)
    over = [
        f"output_dir={out / f'{system}.seed{seed}'}",
        f"model.name={model}",
        "model.prompt_style=multilingual",
        f"data.train=[{data['dev'] if fusion else data['train']}]",
        "data.dev=[]",
        f"data.languages=[{','.join(langs)}]",
        f"data.batch_seconds={b.batch_seconds}",
        f"data.min_input_seconds={b.min_input_seconds}",
        f"max_steps={steps}",
        f"optim.warmup_steps={0 if fusion else min(b.warmup, steps - 1)}",
        f"checkpoint.save_every={steps}",
        "checkpoint.keep_best=0",
        "eval.every=0",
        "progress_bar=false",
        f"log_every={max(1, steps // 10)}",
        f"cache_dir={out / 'cache'}",
        f"seed={seed}",
    ]
    lora = [f"optim.lr={b.lora_lr}"]
    targets = "whisper-all" if b.whole_model else "whisper-decoder"
    if system == "experts":
        over += lora + [
            f"recipe.params.rank={b.rank}",
            f"recipe.params.alpha={2.0 * b.rank}",
            f"recipe.params.targets=[{targets}]",
        ]
    elif system == "joint_lora":
        parts = "encoder,decoder" if b.whole_model else "decoder"
        over += lora + [
            f"recipe.params.rank={joint_rank}",
            f"recipe.params.alpha={2.0 * joint_rank}",
            f"recipe.params.parts=[{parts}]",
        ]
    elif system == "full":
        over += [f"optim.lr={b.full_lr}", f"recipe.params.train_encoder={b.whole_model}"]
    elif system == "weight_fusion":
        over += [
            f"optim.lr={b.fusion_lr}",
            f"recipe.params.experts={experts}",
            f"recipe.params.rank={joint_rank}",
        ]
    elif system == "gated_fusion":
        over += [f"optim.lr={b.fusion_lr}", f"recipe.params.experts={experts}"]
    elif system == "distilled":
        over += lora + [
            f"recipe.params.teacher={experts}",
            f"recipe.params.student_experts={len(langs)}",
            f"recipe.params.temperature={b.kd_temperature}",
            f"recipe.params.kd_weight={b.kd_weight}",
        ]
    return over


def train_system(system: str, b: Budget, langs, model: str, data: dict, out: Path, seed: int):
    from babelora.train.config import load_train_config

    over = train_overrides(system, b, langs, model, data, out, seed)
    cfg = load_train_config(CONFIGS / TRAINED[system], over)
    record = P.train_once(cfg)
    record["config"] = str((CONFIGS / TRAINED[system]).relative_to(ROOT))
    record["overrides"] = over
    return record


def setting(system: str, record: dict | None) -> dict:
    """What the row trains (the engine's label and count) and how its language is chosen."""
    lang = "predicted (Whisper LID)" if system in AGNOSTIC else "given"
    return {**P.setting(None if system == "zero_shot" else record), "language": lang}


# ----------------------------------------------------------------------------------- decoding
def load_system(system: str, base, pristine, records: dict, seed: int):
    """(handle, expert-set adapter or None) of a system: `base` for the zero-shot row, else a
    copy of the `pristine` base with the system's weights."""
    from babelora.methods.loading import apply_peft_adapter, load_expert_set
    from babelora.models.whisper import load_whisper

    if system == "zero_shot":
        return base, None  # the copy the LID ran on
    if system == "full":
        return load_whisper(records[("full", seed)]["final"], prompt_style="multilingual"), None
    handle = P.fresh(pristine)
    if system in ("experts", "experts_lid", "gated_fusion"):
        key = ("gated_fusion" if system == "gated_fusion" else "experts", seed)
        return handle, load_expert_set(handle, records[key]["final"])
    return apply_peft_adapter(handle, records[(system, seed)]["final"]), None


def run(args) -> dict:
    import torch

    from babelora.models.whisper import load_whisper

    b = budget_of(args)
    langs = [x for x in args.langs.split(",") if x]
    systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")
    if "zero_shot" not in systems:
        systems.insert(0, "zero_shot")  # the first row of every table
    torch.set_num_threads(args.threads)
    work = args.work.resolve()
    hyps_dir = (args.hyps or args.out.parent / "experts").resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = str(P.tiny_multilingual(work / "tiny_multilingual")) if b.model == "smoke" else b.model
    t0 = time.perf_counter()

    # data: training rows, fusion rows, test sets
    from babelora.data.manifest import write_manifest

    data = {
        "train": write_manifest(
            P.training_rows(args.data / "train.jsonl", langs, b.train_per_group),
            work / "train.jsonl",
        ),
        "dev": write_manifest(
            P.training_rows(args.data / "dev.jsonl", langs, b.dev_per_group), work / "dev.jsonl"
        ),
    }
    tests = P.test_sets(
        args.data, args.real, langs, b.test_per_group, b.real_per_group, b.noisy_per_group
    )
    for ts in tests:
        P.write_subset(ts, hyps_dir)
    log(f"test sets: {', '.join(f'{t.name} {len(t.utts)}' for t in tests)}")

    # training: experts first (the fusion, distillation and LID rows reuse them)
    records: dict = {}
    order = ["experts", "full", "joint_lora", "weight_fusion", "gated_fusion", "distilled"]
    wanted = set(systems) | ({"experts"} if set(systems) & set(NEEDS_EXPERTS) else set())
    for seed in b.seeds:
        for system in [s for s in order if s in wanted]:
            rec = train_system(system, b, langs, model, data, work, seed)
            records[(system, seed)] = rec
            info = rec["run_info"]
            log(
                f"train {system} seed {seed}: {rec['seconds']:.0f} s"
                f"{' (cached)' if rec['cached'] else ''}, trains {info['trains']}, "
                f"encoder cache {info['encoder_cache']['used']}"
            )

    # decoding: test set by test set (the encoder memo holds one test set's clips)
    pristine = load_whisper(model, prompt_style="multilingual")  # copied for every system
    memo = P.EncoderMemo(pristine.model.get_encoder())
    zero_options = P.runner_options(10.0)  # the zero-shot row's best setting; Whisper's LID
    trained_options = P.runner_options(b.min_input_seconds)  # as the fine-tunes trained
    rows: dict = {}  # (system, seed, test) -> hypothesis rows
    decode_info: dict = {}
    lid: dict = {}
    for ts in tests:
        memo.clear()
        given = P.requests_of(ts.utts)
        base = P.fresh(pristine)
        memo.attach(base.model)  # the LID's encoder states are the decoding's (same input)
        predicted, lid[ts.name] = P.detect(base, ts.utts, langs, zero_options)
        prob = lid[ts.name].pop("prob")
        log(f"{ts.name}: LID accuracy {lid[ts.name]['accuracy']:.3f}")
        for seed in b.seeds:
            for system in systems:
                if system == "zero_shot" and seed != b.seeds[0]:
                    continue
                handle, adapter = load_system(system, base, pristine, records, seed)
                reqs = predicted if system in AGNOSTIC else given
                options = zero_options if system == "zero_shot" else trained_options
                out, seconds, memoised = P.decode(
                    handle, reqs, memo, options, b.max_new_tokens, adapter,
                    prob if system in AGNOSTIC else None,
                )  # fmt: skip
                rows[(system, seed, ts.name)] = out
                P.save_rows(hyps_dir, system, ts.name, out, seed if system != "zero_shot" else 0)
                decode_info[f"{system}/{seed}/{ts.name}"] = {
                    "seconds": seconds,
                    "encoder_memo": memoised,
                }
                log(f"decode {system} seed {seed} on {ts.name}: {seconds:.0f} s")
    decode_info["encoder_memo"] = {"hits": memo.hits, "misses": memo.misses}

    # differences: vs zero-shot and vs the standard fine-tune, per seed and test set
    results: dict = {}
    zero_seed = b.seeds[0]
    for ts in tests:
        zero = rows[("zero_shot", zero_seed, ts.name)]
        for system in systems:
            for seed in [zero_seed] if system == "zero_shot" else b.seeds:
                mine = rows[(system, seed, ts.name)]
                entry = {"vs_zero_shot": P.differences(ts.utts, zero, mine)}
                if "full" in systems and system not in ("zero_shot", "full"):
                    entry["vs_full"] = P.differences(ts.utts, rows[("full", seed, ts.name)], mine)
                results.setdefault(system, {}).setdefault(str(seed), {})[ts.name] = entry
    wall = time.perf_counter() - t0
    return {
        "benchmark": "experts",
        "command": "python bench/experts.py " + " ".join(args.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": P.machine(args.threads),
        "budget": {
            "name": args.budget,
            **asdict(b),
            "model": P.model_label(b.model, model),
        },
        "langs": langs,
        "test_sets": {t.name: {"source": str(t.source), "rows": len(t.utts)} for t in tests},
        "train_rows": {k: sum(1 for _ in open(v)) for k, v in data.items()},
        "systems": systems,
        "settings": {
            s: setting(s, records.get(("experts" if s == "experts_lid" else s, b.seeds[0])))
            for s in systems
        },
        "train": {f"{s}/{seed}": P.slim(r) for (s, seed), r in records.items()},
        "decode": decode_info,
        "lid": lid,
        "results": results,
        "hypotheses": str(P.relative(hyps_dir, ROOT)),
        "wall_s": wall,
    }


# ------------------------------------------------------------------------------------- tables
def _seed_spread(report: dict, system: str, test: str, task: str) -> str:
    values = []
    for per_test in report["results"][system].values():
        d = P.headline(per_test[test]["vs_zero_shot"], task)
        if d is not None:
            values.append(d["b"])
    if len(values) < 2:
        return ""
    return f" (mean {fmean(values):.1f} ± {pstdev(values):.1f} over {len(values)} seeds)"


def markdown(report: dict) -> str:
    """One table per test set: macro WER and BLEU of every row, the difference vs zero-shot and
    vs the standard fine-tune with its paired 95 % interval (* = excludes zero), then the
    per-language scores. Seed-0 numbers; with several seeds, their mean and spread."""
    parts = []
    langs = report["langs"]
    b = report["budget"]
    parts.append(
        f"LoRA language experts, budget `{b['name']}` ({b['model']}, {b['steps']} steps, "
        f"batch {b['batch_seconds']} s, rank {b['rank']}, "
        f"{'whole model' if b['whole_model'] else 'decoder only'}); {report['date']}; "
        f"{report['machine']['processor']} x{report['machine']['cpu_count']}, "
        f"{report['machine']['threads']} threads; wall {report['wall_s']:.0f} s.\n"
        f"Command: `{report['command']}`"
    )
    seed = str(b["seeds"][0])
    for test, meta in report["test_sets"].items():
        head = (
            "| system | trains | language | WER | Δ vs zero-shot | Δ vs full FT "
            "| BLEU | Δ vs zero-shot | Δ vs full FT |"
        )
        lines = [f"\n### {test} ({meta['rows']} rows: {meta['source']})\n", head, "|---" * 9 + "|"]
        for system in report["systems"]:
            res = report["results"][system].get(seed) or report["results"][system][str(0)]
            entry = res[test]
            st = report["settings"][system]
            z_asr, z_st = (P.headline(entry["vs_zero_shot"], t) for t in ("asr", "st"))
            f_asr, f_st = (
                (P.headline(entry["vs_full"], t) for t in ("asr", "st"))
                if "vs_full" in entry
                else (None, None)
            )
            zero = system == "zero_shot"
            lines.append(
                f"| {system} | {st['trains']} | {st['language']} | {P.cell(z_asr)}"
                f"{_seed_spread(report, system, test, 'asr')} | {'-' if zero else P.delta(z_asr)} "
                f"| {P.delta(f_asr)} | {P.cell(z_st)} | {'-' if zero else P.delta(z_st)} "
                f"| {P.delta(f_st)} |"
            )
        parts.append("\n".join(lines))
        per_system = {
            system: (report["results"][system].get(seed) or report["results"][system]["0"])[test][
                "vs_zero_shot"
            ]
            for system in report["systems"]
        }
        parts.append("\n" + P.language_table(per_system, langs))
    if report.get("lid"):
        parts.append(
            "\nWhisper base LID (candidates: the expert languages): "
            + ", ".join(f"{t} {v['accuracy']:.3f}" for t, v in report["lid"].items())
        )
    parts.append(
        "\nΔ = system - baseline with its paired bootstrap 95 % interval (1,000 resamples, "
        "seed 0; macro rows resample within each language); * = the interval excludes zero. "
        f"Hypotheses: {report['hypotheses']}/<system>.<test set>.jsonl.gz."
    )
    return "\n".join(parts) + "\n"


def main(argv=None) -> None:
    P.main(argv, parse_args, run, markdown)


if __name__ == "__main__":
    main()
