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
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

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
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    trained = ckpt.load_checkpoint(result.last_checkpoint).trainable
    rows = [
        json.loads(x) for x in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    return {
        "final": str(result.final_dir),
        "config": str(CONFIGS / CONFIG_OF[system]),
        "overrides": overrides,
        "train_s": seconds,
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
    from babelora.decode.runner import Request, RunnerOptions, decode_requests
    from babelora.decode.search import DecodeOptions
    from babelora.evaluate.metrics import bleu, error_rate

    # fine-tuned systems decode with the padding they trained with (to the longest, no tail);
    # the zero-shot base with the decoder's default (10 s), its best setting (docs/design.md)
    ropts = (
        RunnerOptions(
            batch_seconds=60.0,
            max_batch_size=16,
            min_input_seconds=0.0,
            tail_seconds=0.0,
            show_progress=False,
        )
        if finetuned
        else RunnerOptions(batch_seconds=160.0, max_batch_size=16, show_progress=False)
    )
    utts = read_manifest(test)
    reqs = [Request(u.id, u.audio_filepath, u.lang, u.task, u.target_lang) for u in utts]
    start = time.perf_counter()
    if lid is not None:
        reqs = predict_languages(handle, lid, reqs, ropts, adapter)
    hook = adapter_batch_hook(adapter) if adapter is not None else None
    results = decode_requests(handle, reqs, DecodeOptions(max_new_tokens=64), ropts, hook)
    seconds = time.perf_counter() - start
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
    return metrics, seconds


def run_system(system: str, args) -> dict:
    import torch

    from babelora.methods.loading import apply_peft_adapter, load_expert_set
    from babelora.models.whisper import load_whisper

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    langs = args.langs.split(",")
    data = {k: args.work / f"{k}.jsonl" for k in ("train", "dev", "test")}
    experts_final = args.work / "experts" / "final"
    out: dict = {"system": system}
    r, n = args.rank, len(langs)
    lora = [f"optim.lr={args.lora_lr}"]
    if system == "base":
        handle = load_whisper(args.model)
        out["prompt_style"] = handle.prompt_style
        out["metrics"], out["eval_s"] = decode_and_score(handle, data["test"], finetuned=False)
    elif system == "joint_lora":
        out.update(
            run_training(
                system,
                args,
                langs,
                data,
                lora + [f"recipe.params.rank={r * n}", f"recipe.params.alpha={2.0 * r * n}"],
            )
        )
        handle = apply_peft_adapter(
            load_whisper(args.model, prompt_style="multilingual"), Path(out["final"])
        )
        out["deployed_params"] = _numel(Path(out["final"]) / "adapter_model.safetensors")
        out["metrics"], out["eval_s"] = decode_and_score(handle, data["test"])
    elif system == "full":
        out.update(run_training(system, args, langs, data, [f"optim.lr={args.full_lr}"]))
        handle = load_whisper(out["final"], prompt_style="multilingual")
        out["deployed_params"] = sum(p.numel() for p in handle.model.parameters())
        out["metrics"], out["eval_s"] = decode_and_score(handle, data["test"])
    elif system == "experts":
        out.update(
            run_training(
                system,
                args,
                langs,
                data,
                lora + [f"recipe.params.rank={r}", f"recipe.params.alpha={2.0 * r}"],
            )
        )
        handle = load_whisper(args.model, prompt_style="multilingual")
        adapter = load_expert_set(handle, out["final"])
        out["deployed_params"] = _numel(Path(out["final"]) / "babelora_experts.safetensors")
        out["metrics"], out["eval_s"] = decode_and_score(handle, data["test"], adapter)
    elif system == "experts_lid":
        from babelora.data.manifest import read_manifest
        from babelora.decode.runner import RunnerOptions
        from babelora.methods.experts.lid_training import evaluate_lid, train_lid

        handle = load_whisper(args.model, prompt_style="multilingual")
        ropts = RunnerOptions(
            batch_seconds=60.0,
            max_batch_size=16,
            min_input_seconds=0.0,
            tail_seconds=0.0,
            show_progress=False,
        )
        train_utts = read_manifest(data["train"])
        per: dict = {}
        lid_utts = [
            u
            for u in train_utts
            if per.setdefault(u.lang, set()).add(u.audio_filepath)
            or len(per[u.lang]) <= args.lid_train_per_lang
        ]
        start = time.perf_counter()
        head = train_lid(handle, lid_utts, langs, options=ropts)
        out["train_s"] = time.perf_counter() - start
        report = evaluate_lid(head, handle, read_manifest(data["test"]), ropts)
        out["lid_test"] = report.to_json()
        adapter = load_expert_set(handle, experts_final)
        out["metrics"], out["eval_s"] = decode_and_score(handle, data["test"], adapter, lid=head)
    elif system == "fused":
        out.update(
            run_training(
                system,
                args,
                langs,
                data,
                [
                    "optim.lr=1e-2",
                    f"recipe.params.experts={experts_final}",
                    f"recipe.params.rank={args.fusion_rank or r * n}",
                ],
            )
        )
        out["fusion"] = json.loads((Path(out["final"]) / "fusion.json").read_text())
        out["fusion"].pop("weights", None)
        handle = apply_peft_adapter(
            load_whisper(args.model, prompt_style="multilingual"), Path(out["final"])
        )
        out["deployed_params"] = _numel(Path(out["final"]) / "adapter_model.safetensors")
        out["metrics"], out["eval_s"] = decode_and_score(handle, data["test"])
    elif system == "distilled":
        out.update(
            run_training(
                system,
                args,
                langs,
                data,
                lora
                + [
                    f"recipe.params.teacher={experts_final}",
                    f"recipe.params.student_experts={n}",
                    f"recipe.params.temperature={args.kd_temperature}",
                    f"recipe.params.kd_weight={args.kd_weight}",
                ],
            )
        )
        handle = apply_peft_adapter(
            load_whisper(args.model, prompt_style="multilingual"), Path(out["final"])
        )
        out["deployed_params"] = _numel(Path(out["final"]) / "adapter_model.safetensors")
        out["trained_params"] = out["deployed_params"]  # the checkpoint also holds the teachers
        out["metrics"], out["eval_s"] = decode_and_score(handle, data["test"])
    else:
        raise SystemExit(f"unknown system {system}")
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


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.system:
        res = run_system(args.system, args)
        (args.work / f"{args.system}.json").write_text(json.dumps(res, indent=1), "utf-8")
        return
    import torch

    langs = args.langs.split(",")
    start = time.perf_counter()
    data = prepare_data(args, langs)
    counts = {k: len(v.read_text(encoding="utf-8").splitlines()) for k, v in data.items()}
    print(f"data: {counts} rows in {args.work}", file=sys.stderr, flush=True)
    results = {}
    child_args = [a for a in (argv if argv is not None else sys.argv[1:])]
    for system in args.systems.split(","):
        t0 = time.perf_counter()
        print(f"== {system}", file=sys.stderr, flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), *child_args, "--system", system]
        subprocess.run(cmd, check=True)
        results[system] = json.loads((args.work / f"{system}.json").read_text())
        results[system]["wall_s"] = time.perf_counter() - t0
        m = results[system]["metrics"]
        print(
            f"== {system}: WER {m['wer']:.1f} BLEU {m['bleu']:.1f} "
            f"({results[system]['wall_s']:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    wall = time.perf_counter() - start
    report = {
        "command": "python bench/experts.py " + " ".join(child_args),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": __import__("os").cpu_count(),
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(table(results, langs))
    rel = report["relative"]
    print(
        "\n| system | WER rel. reduction vs joint LoRA | vs full FT "
        "| BLEU rel. gain vs joint LoRA | vs full FT |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, r in rel.items():
        print(
            f"| {name} | {r.get('wer_rel_reduction_vs_joint_lora', 0):+.1f}% | "
            f"{r.get('wer_rel_reduction_vs_full', 0):+.1f}% | "
            f"{r.get('bleu_rel_gain_vs_joint_lora', 0):+.1f}% | "
            f"{r.get('bleu_rel_gain_vs_full', 0):+.1f}% |"
        )
    if "experts_lid" in results:
        print(f"\nLID accuracy (test files): {results['experts_lid']['lid_test']['accuracy']:.3f}")
    print(f"total wall time {wall:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
