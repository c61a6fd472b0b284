"""LoRA language experts (Interspeech 2025) vs baselines, side by side on the offline corpus.

Systems (same training data, optimizer-step budget, batch size and test subset for all):
  base         zero-shot tiny.en (its own prompt, the decoder's best 10 s padding)
  joint_lora   one LoRA on all languages, rank = expert rank x languages (matched parameters)
  full         full fine-tuning
  experts      one LoRA expert per language, language-aware (given language routes the expert)
  experts_lid  the same experts, language-agnostic: a LID head on the base encoder predicts the
               language, which routes the expert AND sets the prompt's language token
  fused        the experts fused in weight space with per-layer weights learned on dev data
               (experts frozen), one PEFT adapter; the prompt carries the given language
  distilled    one student LoRA (rank = joint LoRA's) trained with CE + lambda T^2 KL to the
               utterance's own expert; the prompt carries the given language
Training data: ASR and ST X->en rows of the expert languages. Metrics: per-language WER (ASR)
and BLEU (ST X->en) on `--eval-per-lang` test utterances per language and task; wall time and
peak RSS (each system runs in its own process; the peak covers its training and decoding).
Configs: configs/experts/*.yaml with the overrides below (the JSON records them).

    python bench/experts.py                      # default scale (about 15 min, 1 thread, idle)
    python bench/experts.py --steps 20 --eval-per-lang 4 --out /tmp/x.json   # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Stopwatch, read_jsonl, requests_of, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "experts"
SYSTEMS = ("base", "joint_lora", "full", "experts", "experts_lid", "fused", "distilled")
CONFIG_OF = {
    "joint_lora": "joint_lora.yaml",
    "full": "full.yaml",
    "experts": "experts_tiny.yaml",
    "fused": "weight_fusion.yaml",
    "distilled": "distill.yaml",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", type=Path, default=Path("/tmp/corpus_default"))
    p.add_argument("--model", default="tiny.en", help="base model (default: offline tiny.en)")
    p.add_argument("--langs", default="de,fr,es,it,nl,pt")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per trained system")
    p.add_argument("--batch-seconds", type=float, default=16.0, help="padded audio per batch")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rank", type=int, default=8, help="expert rank (joint LoRA: x languages)")
    p.add_argument("--lora-lr", type=float, default=2e-3)
    p.add_argument("--full-lr", type=float, default=5e-5)
    p.add_argument("--fusion-steps", type=int, default=40)
    p.add_argument("--fusion-dev-per-lang", type=int, default=16, help="dev rows per lang/task")
    p.add_argument("--fusion-rank", type=int, default=None, help="default: rank x languages")
    p.add_argument("--kd-temperature", type=float, default=2.0)
    p.add_argument("--kd-weight", type=float, default=1.0)
    p.add_argument("--lid-train-per-lang", type=int, default=60, help="audio files per language")
    p.add_argument("--eval-per-lang", type=int, default=16, help="test rows per language and task")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_experts"))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "experts.json")
    p.add_argument("--system", default=None, help=argparse.SUPPRESS)  # child process mode
    return p.parse_args(argv)


# -- data -------------------------------------------------------------------------------------
def _subset(utts, langs, per_group: int | None):
    """Rows of `langs` (ASR and ST X->en), the first `per_group` per (lang, task) by id."""
    groups: dict = {}
    for u in sorted(utts, key=lambda u: u.id):
        if u.lang in langs and (u.task == "asr" or u.target_lang == "en"):
            groups.setdefault((u.lang, u.task), []).append(u)
    return [u for key in sorted(groups) for u in groups[key][:per_group]]


def prepare_data(args, langs) -> dict[str, Path]:
    from babelora.data.manifest import read_manifest, write_manifest

    args.work.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, split, per in (
        ("train", "train", None),
        ("dev", "dev", args.fusion_dev_per_lang),
        ("test", "test", args.eval_per_lang),
    ):
        utts = _subset(read_manifest(args.corpus / f"{split}.jsonl"), langs, per)
        out[name] = write_manifest(utts, args.work / f"{name}.jsonl")
    return out


# -- training ---------------------------------------------------------------------------------
def train_config(system: str, args, langs, data: dict[str, Path], extra: list[str]):
    from babelora.train.config import load_train_config

    steps = args.fusion_steps if system == "fused" else args.steps
    overrides = [
        f"output_dir={args.work / system}",
        f"data.train=[{data['dev'] if system == 'fused' else data['train']}]",
        "data.dev=[]",
        f"data.languages=[{','.join(langs)}]",
        f"data.batch_seconds={args.batch_seconds}",
        f"max_steps={steps}",
        f"optim.warmup_steps={0 if system == 'fused' else min(args.warmup, steps - 1)}",
        f"checkpoint.save_every={steps}",
        "checkpoint.keep_best=0",
        "eval.every=0",
        "progress_bar=false",
        "log_every=25",
        *extra,
    ]
    if args.model:
        overrides.append(f"model.name={args.model}")
    return load_train_config(CONFIGS / CONFIG_OF[system], overrides), overrides


def run_training(system: str, args, langs, data, extra: list[str]) -> dict:
    import shutil

    from babelora.methods.registry import train
    from babelora.train import checkpoint as ckpt

    cfg, overrides = train_config(system, args, langs, data, extra)
    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    with Stopwatch() as clock:
        result = train(cfg)
    trained = ckpt.load_checkpoint(result.last_checkpoint).trainable
    rows = read_jsonl(Path(cfg.output_dir) / "metrics.jsonl")
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    return {
        "final": str(result.final_dir),
        "config": str(CONFIGS / CONFIG_OF[system]),
        "overrides": overrides,
        "train_s": clock.wall,
        "steps": result.step,
        "trained_params": int(sum(v.numel() for v in trained.values())),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }


def _numel(path: Path) -> int:
    """Number of values stored in a safetensors file."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), "pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            n = 1
            for size in f.get_slice(key).get_shape():
                n *= int(size)
            total += n
    return total


# -- decoding and scoring ---------------------------------------------------------------------
def decode_and_score(
    handle, test: Path, adapter=None, lid=None, finetuned=True
) -> tuple[dict, float]:
    from babelora.data.manifest import read_manifest
    from babelora.decode.routing import adapter_batch_hook, predict_languages
    from babelora.decode.runner import RunnerOptions, decode_requests
    from babelora.decode.search import DecodeOptions
    from babelora.evaluate.metrics import bleu, error_rate

    # fine-tuned systems decode with the padding they trained with (to the longest, no tail);
    # the zero-shot base with the decoder's default (10 s), its best setting (docs/design.md)
    ropts = (
        finetuned_options()
        if finetuned
        else RunnerOptions(batch_seconds=160.0, max_batch_size=16, show_progress=False)
    )
    utts = read_manifest(test)
    reqs = requests_of(utts)
    with Stopwatch() as clock:
        if lid is not None:
            reqs = predict_languages(handle, lid, reqs, ropts, adapter)
        hook = adapter_batch_hook(adapter) if adapter is not None else None
        results = decode_requests(handle, reqs, DecodeOptions(max_new_tokens=64), ropts, hook)
    groups: dict = {}
    for u, r in zip(utts, results):
        if r.error:
            raise RuntimeError(f"{u.id}: {r.error}")
        hyps, refs = groups.setdefault((u.task, u.lang), ([], []))
        hyps.append(r.hypothesis)
        refs.append(u.reference)
    metrics = {}
    for (task, lang), (hyps, refs) in sorted(groups.items()):
        if task == "asr":
            metrics[f"wer/{lang}"] = error_rate(hyps, refs, lang).score
        else:
            metrics[f"bleu/{lang}"] = bleu(hyps, refs, "en").score
    for kind in ("wer", "bleu"):
        vals = [v for k, v in metrics.items() if k.startswith(kind + "/")]
        if vals:
            metrics[kind] = sum(vals) / len(vals)
    if lid is not None:
        metrics["lid_routing_accuracy"] = sum(r.lang == u.lang for r, u in zip(reqs, utts)) / len(
            utts
        )
    return metrics, clock.wall


# -- systems: each returns its fields of the system's JSON ------------------------------------
def finetuned_options():
    """Decoding as in training: padded to the longest input, no tail."""
    from babelora.decode.runner import RunnerOptions

    return RunnerOptions(
        batch_seconds=60.0,
        max_batch_size=16,
        min_input_seconds=0.0,
        tail_seconds=0.0,
        show_progress=False,
    )


def multilingual_base(args):
    from babelora.models.whisper import load_whisper

    return load_whisper(args.model, prompt_style="multilingual")


def peft_fields(args, out: dict, data: dict[str, Path]) -> dict:
    """Deployed size and scores of a run whose export is one PEFT adapter."""
    from babelora.methods.loading import apply_peft_adapter

    handle = apply_peft_adapter(multilingual_base(args), Path(out["final"]))
    out["deployed_params"] = _numel(Path(out["final"]) / "adapter_model.safetensors")
    out["metrics"], out["eval_s"] = decode_and_score(handle, data["test"])
    return out


def run_base(args, langs, data) -> dict:
    from babelora.models.whisper import load_whisper

    handle = load_whisper(args.model)
    out = {"prompt_style": handle.prompt_style}
    out["metrics"], out["eval_s"] = decode_and_score(handle, data["test"], finetuned=False)
    return out


def lora_overrides(args, rank: int) -> list[str]:
    """LoRA learning rate, rank and alpha = 2 x rank."""
    return [
        f"optim.lr={args.lora_lr}",
        f"recipe.params.rank={rank}",
        f"recipe.params.alpha={2.0 * rank}",
    ]


def run_joint_lora(args, langs, data) -> dict:
    extra = lora_overrides(args, args.rank * len(langs))  # as many parameters as the experts
    return peft_fields(args, run_training("joint_lora", args, langs, data, extra), data)


def run_full(args, langs, data) -> dict:
    from babelora.models.whisper import load_whisper

    out = run_training("full", args, langs, data, [f"optim.lr={args.full_lr}"])
    handle = load_whisper(out["final"], prompt_style="multilingual")
    out["deployed_params"] = sum(p.numel() for p in handle.model.parameters())
    out["metrics"], out["eval_s"] = decode_and_score(handle, data["test"])
    return out


def run_experts(args, langs, data) -> dict:
    from babelora.methods.loading import load_expert_set

    out = run_training("experts", args, langs, data, lora_overrides(args, args.rank))
    handle = multilingual_base(args)
    adapter = load_expert_set(handle, out["final"])
    out["deployed_params"] = _numel(Path(out["final"]) / "babelora_experts.safetensors")
    out["metrics"], out["eval_s"] = decode_and_score(handle, data["test"], adapter)
    return out


def lid_training_rows(utts, per_lang: int) -> list:
    """The rows of the first `per_lang` audio files of each language."""
    files: dict = {}
    return [
        u
        for u in utts
        if files.setdefault(u.lang, set()).add(u.audio_filepath) or len(files[u.lang]) <= per_lang
    ]


def run_experts_lid(args, langs, data) -> dict:
    from babelora.data.manifest import read_manifest
    from babelora.methods.experts.lid_training import evaluate_lid, train_lid
    from babelora.methods.loading import load_expert_set

    handle = multilingual_base(args)
    ropts = finetuned_options()
    lid_utts = lid_training_rows(read_manifest(data["train"]), args.lid_train_per_lang)
    with Stopwatch() as clock:
        head = train_lid(handle, lid_utts, langs, options=ropts)
    out: dict = {"train_s": clock.wall}
    report = evaluate_lid(head, handle, read_manifest(data["test"]), ropts)
    out["lid_test"] = report.to_json()
    adapter = load_expert_set(handle, experts_final(args))
    out["metrics"], out["eval_s"] = decode_and_score(handle, data["test"], adapter, lid=head)
    return out


def run_fused(args, langs, data) -> dict:
    extra = [
        "optim.lr=1e-2",
        f"recipe.params.experts={experts_final(args)}",
        f"recipe.params.rank={args.fusion_rank or args.rank * len(langs)}",
    ]
    out = run_training("fused", args, langs, data, extra)
    out["fusion"] = json.loads((Path(out["final"]) / "fusion.json").read_text())
    out["fusion"].pop("weights", None)
    return peft_fields(args, out, data)


def run_distilled(args, langs, data) -> dict:
    extra = [
        f"optim.lr={args.lora_lr}",
        f"recipe.params.teacher={experts_final(args)}",
        f"recipe.params.student_experts={len(langs)}",
        f"recipe.params.temperature={args.kd_temperature}",
        f"recipe.params.kd_weight={args.kd_weight}",
    ]
    out = peft_fields(args, run_training("distilled", args, langs, data, extra), data)
    out["trained_params"] = out["deployed_params"]  # the checkpoint also holds the teachers
    return out


RUNNERS = {
    "base": run_base,
    "joint_lora": run_joint_lora,
    "full": run_full,
    "experts": run_experts,
    "experts_lid": run_experts_lid,
    "fused": run_fused,
    "distilled": run_distilled,
}


def experts_final(args) -> Path:
    """The trained experts (system `experts`), which experts_lid, fused and distilled reuse."""
    return args.work / "experts" / "final"


def run_system(system: str, args) -> dict:
    """Train (where the system trains) and evaluate one system, in this process."""
    import torch

    if system not in RUNNERS:
        raise SystemExit(f"unknown system {system}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = {k: args.work / f"{k}.jsonl" for k in ("train", "dev", "test")}
    out = {"system": system, **RUNNERS[system](args, args.langs.split(","), data)}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# -- report -----------------------------------------------------------------------------------
def table(results: dict, langs: list[str]) -> str:
    head = ["system"] + [f"WER {x}" for x in langs] + ["WER avg"]
    head += [f"BLEU {x}" for x in langs] + ["BLEU avg", "train s", "eval s", "peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results.items():
        m = res["metrics"]
        cells = [name]
        cells += [f"{m.get(f'wer/{x}', float('nan')):.1f}" for x in langs] + [f"{m['wer']:.1f}"]
        cells += [f"{m.get(f'bleu/{x}', float('nan')):.1f}" for x in langs] + [f"{m['bleu']:.1f}"]
        cells += [
            f"{res.get('train_s', 0):.0f}",
            f"{res['eval_s']:.0f}",
            f"{res['peak_rss_mb']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def relative(results: dict) -> dict:
    """Relative WER reduction and BLEU gain of each system vs joint LoRA and full FT (%)."""
    out = {}
    for ref in ("joint_lora", "full"):
        if ref not in results:
            continue
        rm = results[ref]["metrics"]
        for name, res in results.items():
            m = res["metrics"]
            out.setdefault(name, {})[f"wer_rel_reduction_vs_{ref}"] = (
                100 * (rm["wer"] - m["wer"]) / max(rm["wer"], 1e-9)
            )
            out[name][f"bleu_rel_gain_vs_{ref}"] = (
                100 * (m["bleu"] - rm["bleu"]) / max(rm["bleu"], 1e-9)
            )
    return out


def relative_table(rel: dict) -> str:
    lines = [
        "\n| system | WER rel. reduction vs joint LoRA | vs full FT "
        "| BLEU rel. gain vs joint LoRA | vs full FT |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rel.items():
        lines.append(
            f"| {name} | {r.get('wer_rel_reduction_vs_joint_lora', 0):+.1f}% | "
            f"{r.get('wer_rel_reduction_vs_full', 0):+.1f}% | "
            f"{r.get('bleu_rel_gain_vs_joint_lora', 0):+.1f}% | "
            f"{r.get('bleu_rel_gain_vs_full', 0):+.1f}% |"
        )
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------
def run_in_child(system: str, args, child_args: list[str]) -> dict:
    """One system in its own process (its own peak RSS); its JSON, plus the wall time."""
    print(f"== {system}", file=sys.stderr, flush=True)
    with Stopwatch() as clock:
        cmd = [sys.executable, str(Path(__file__).resolve()), *child_args, "--system", system]
        subprocess.run(cmd, check=True)
        result = json.loads((args.work / f"{system}.json").read_text())
    result["wall_s"] = clock.wall
    m = result["metrics"]
    print(
        f"== {system}: WER {m['wer']:.1f} BLEU {m['bleu']:.1f} ({result['wall_s']:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    return result


def report_of(args, langs, counts, child_args, wall: float, results: dict) -> dict:
    import torch

    return {
        "command": "python bench/experts.py " + " ".join(child_args),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "scale": {
            "langs": langs,
            "steps": args.steps,
            "batch_seconds": args.batch_seconds,
            "warmup": args.warmup,
            "rank": args.rank,
            "fusion_steps": args.fusion_steps,
            "fusion_dev_per_lang": args.fusion_dev_per_lang,
            "eval_per_lang_and_task": args.eval_per_lang,
            "rows": counts,
        },
        "wall_s": wall,
        "results": results,
        "relative": relative(results),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.system:  # child process: one system
        res = run_system(args.system, args)
        write_json(args.work / f"{args.system}.json", res)
        return
    langs = args.langs.split(",")
    start = time.perf_counter()
    data = prepare_data(args, langs)
    counts = {k: len(v.read_text(encoding="utf-8").splitlines()) for k, v in data.items()}
    print(f"data: {counts} rows in {args.work}", file=sys.stderr, flush=True)
    child_args = list(argv if argv is not None else sys.argv[1:])
    results = {system: run_in_child(system, args, child_args) for system in args.systems.split(",")}
    wall = time.perf_counter() - start
    report = report_of(args, langs, counts, child_args, wall, results)
    write_json(args.out, report)
    print(table(results, langs))
    print(relative_table(report["relative"]))
    if "experts_lid" in results:
        print(f"\nLID accuracy (test files): {results['experts_lid']['lid_test']['accuracy']:.3f}")
    print(f"total wall time {wall:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
