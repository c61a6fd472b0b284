"""Trainer overhead: babelora's Accelerate loop vs a plain PyTorch loop, same model and batches.

Both sides build the model with the same recipe and iterate the same DataLoader (same sampler
plan, collator and seed), so they see identical batches; the plain loop does forward, token-mean
cross-entropy, backward, clip, AdamW and scheduler steps and nothing else. The trainer's time is
measured between consecutive steps of its loop (data, forward/backward, step, token counting,
metric reduction, JSONL/TensorBoard logging). The first `--warmup` steps are excluded on both
sides; trials alternate which side runs first and the median trial is reported, as wall time and as
CPU time (robust on a shared machine when run with --threads 1).
Throughput = audio seconds / wall seconds. Goal: overhead under 5%.

    python bench/train_overhead.py --model default --recipe lora --steps 25 --warmup 5 \
        --trials 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import read_jsonl, reset_accelerate, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent


def make_corpus(root: Path, n: int, seed: int = 0) -> Path:
    """`n` tone+noise clips of 1-6 s in de/fr with short texts; returns the manifest."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    texts = {
        "de": "guten morgen wie geht es dir heute",
        "fr": "bonjour comment allez vous ce matin",
    }
    rows = []
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        lang = "de" if i % 2 else "fr"
        seconds = float(rng.uniform(1.0, 6.0))
        t = np.arange(int(seconds * 16000)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (120 + 7 * i) * t) + 0.02 * rng.standard_normal(t.size)
        path = root / "audio" / f"{i}.wav"
        sf.write(str(path), wave.astype(np.float32), 16000)
        rows.append(
            {
                "id": str(i),
                "audio_filepath": str(path),
                "duration": len(t) / 16000,
                "lang": lang,
                "text": texts[lang],
            }
        )
    manifest = root / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def make_config(args: argparse.Namespace, manifest: Path, out: Path):
    from babelora.config import build_dataclass
    from babelora.train.config import TrainConfig

    model = (
        {"tiny_random": True}
        if args.model == "tiny-random"
        else {
            "name": "tiny.en" if args.model == "default" else args.model,
            "prompt_style": "multilingual",
        }
    )
    return build_dataclass(
        TrainConfig,
        {
            "output_dir": str(out),
            "model": model,
            "data": {
                "train": [str(manifest)],
                "languages": ["de", "fr"],
                "batch_seconds": args.batch_seconds,
                "feature_cache": str(out.parent / "feats"),
            },
            "optim": {"lr": 1e-4, "warmup_steps": 0, "schedule": "constant", "clip_norm": 1.0},
            "recipe": {"name": args.recipe, "params": {}},
            "checkpoint": {"save_every": 10**9, "keep_best": 0},
            "max_steps": args.steps,
            "log_every": args.warmup,
            "progress_bar": False,
        },
    )


def warm_feature_cache(cfg) -> None:
    """Compute every utterance's log-mel once, so no trial pays for feature extraction."""
    from babelora.data.collate import SpeechDataset
    from babelora.data.manifest import read_manifest

    utts = read_manifest(cfg.data.train[0])
    dataset = SpeechDataset(utts, 80, cfg.data.feature_cache)
    for i in range(len(dataset)):
        dataset[i]


class StepClock:
    """Wall and CPU time at the end of every step; `since(k)` sums the steps after the k-th."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def tick(self) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))

    def since(self, k: int) -> tuple[float, float]:
        (w0, c0), (w1, c1) = self.marks[k - 1], self.marks[-1]
        return w1 - w0, c1 - c0


def run_trainer(cfg, warmup: int) -> tuple[float, float, float]:
    """(wall s, CPU s, audio s) of the trainer's steps after `warmup`. The clock ticks where
    the loop advances its progress bar, once per step after logging/eval/save."""
    from babelora.methods.registry import train
    from babelora.train.logging import MetricLogger

    reset_accelerate()
    clock = StepClock()
    original = MetricLogger.advance

    def advance(self, steps: int = 1) -> None:
        clock.tick()
        original(self, steps)

    MetricLogger.advance = advance
    try:
        train(cfg)
    finally:
        MetricLogger.advance = original
    rows = read_jsonl(Path(cfg.output_dir) / "metrics.jsonl")
    rows = [r for r in rows if "train/step_time_s" in r][1:]  # the first window is the warm-up
    audio = sum(r["train/audio_s_per_s"] * r["train/step_time_s"] * cfg.log_every for r in rows)
    return (*clock.since(warmup), audio)


def run_plain(cfg, warmup: int) -> tuple[float, float, float]:
    """The same steps as a bare PyTorch loop on the same model, batches and device."""
    import torch.nn.functional as F

    from babelora.data.collate import IGNORE_INDEX
    from babelora.methods.registry import build_recipe
    from babelora.train.data import build_run_data
    from babelora.train.optim import build_optimizer, build_scheduler

    torch.manual_seed(cfg.seed)
    recipe = build_recipe(cfg)
    data = build_run_data(cfg, recipe, 1, 0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = recipe.model.to(device).train()
    opt = build_optimizer(model, cfg.optim)
    sched = build_scheduler(opt, cfg.optim, cfg.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def batches():
        epoch = 0
        while True:
            data.train_sampler.set_epoch(epoch)
            yield from data.train_loader
            epoch += 1

    stream = batches()
    clock = StepClock()
    audio = 0.0
    for step in range(cfg.max_steps):
        batch = next(stream)
        feats = batch["input_features"].to(device)
        ids, labels = batch["decoder_input_ids"].to(device), batch["labels"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(input_features=feats, decoder_input_ids=ids, use_cache=False).logits
        loss = F.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        clock.tick()
        if step >= warmup:
            audio += float(batch["feature_lens"].sum()) / 100.0
    return (*clock.since(warmup), audio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="default", help="default (tiny.en), tiny-random, or a path/id"
    )
    parser.add_argument("--recipe", default="lora", choices=["lora", "full"])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument(
        "--warmup", type=int, default=5, help="steps excluded (also the log window)"
    )
    parser.add_argument("--batch-seconds", type=float, default=40.0)
    parser.add_argument("--utterances", type=int, default=64)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    if (args.steps - args.warmup) % args.warmup:
        parser.error("--steps minus --warmup must be a multiple of --warmup (the log window)")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="train_overhead-"))
    manifest = make_corpus(work / "corpus", args.utterances)

    warm_feature_cache(make_config(args, manifest, work / "warm"))
    results: dict[str, list[tuple[float, float, float]]] = {"trainer": [], "plain": []}
    for trial in range(args.trials):
        cfg = make_config(args, manifest, work / f"run{trial}")
        if trial % 2:  # alternate the order, so neither side always runs second
            results["plain"].append(run_plain(cfg, args.warmup))
            results["trainer"].append(run_trainer(cfg, args.warmup))
        else:
            results["trainer"].append(run_trainer(cfg, args.warmup))
            results["plain"].append(run_plain(cfg, args.warmup))
        print(
            f"trial {trial}: (wall s, cpu s, audio s) trainer {results['trainer'][-1]}, "
            f"plain {results['plain'][-1]}",
            file=sys.stderr,
        )

    measured = args.steps - args.warmup
    summary = {}
    for name, trials in results.items():
        wall = statistics.median(t[0] for t in trials)
        cpu = statistics.median(t[1] for t in trials)
        audio = trials[0][2]
        summary[name] = {
            "step_time_s": wall / measured,
            "cpu_time_s": cpu / measured,
            "audio_s_per_s": audio / wall,
            "trial_wall_s": [round(t[0], 3) for t in trials],
            "trial_cpu_s": [round(t[1], 3) for t in trials],
        }
    overhead = summary["trainer"]["step_time_s"] / summary["plain"]["step_time_s"] - 1
    cpu_overhead = summary["trainer"]["cpu_time_s"] / summary["plain"]["cpu_time_s"] - 1
    device = (
        torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU"
    )
    report = {
        "command": " ".join(sys.argv),
        "device": device,
        "threads": torch.get_num_threads(),
        "model": args.model,
        "recipe": args.recipe,
        "batch_seconds": args.batch_seconds,
        "measured_steps": measured,
        "audio_s_per_step": results["plain"][0][2] / measured,
        "summary": summary,
        "overhead": overhead,
        "cpu_overhead": cpu_overhead,
    }
    print("| loop | step time (s) | CPU time per step (s) | throughput (audio s / s) |")
    print("| --- | ---: | ---: | ---: |")
    for name in ("plain", "trainer"):
        s = summary[name]
        cells = [f"{s['step_time_s']:.4f}", f"{s['cpu_time_s']:.4f}", f"{s['audio_s_per_s']:.1f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(
        f"\ntrainer overhead: {100 * overhead:+.1f}% wall, {100 * cpu_overhead:+.1f}% CPU time "
        f"({measured} steps x {args.trials} trials, "
        f"{report['audio_s_per_step']:.1f} audio s per step, {device}, "
        f"{report['threads']} threads)"
    )
    if args.out:
        write_json(args.out, report)


if __name__ == "__main__":
    main()
