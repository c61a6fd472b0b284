"""Training speed with cached encoder states / log-mel features / DataLoader workers, per recipe.

For each recipe the same config trains twice from the same batches: once with the encoder (or
the features) computed live, once from the cache (train/encoder_cache.py, train/feature_cache.py).
Reported per row: what trains (run_info.json), seconds per optimizer step (median of the logged
windows after the first, so start-up and the cache fill are excluded), the speed-up, the one-time
cost of filling the cache, and the first-step losses of both runs (they must agree: the cache
changes speed, not the arithmetic). The last rows time `data.num_workers` 0 / 1 / 2 on a recipe
that trains the encoder (live features), which chose the default.

    python bench/train_cache.py --model base --steps 30            # the table (2-core CPU)
    python bench/train_cache.py --smoke                            # seconds, tiny random model

Audio is synthetic (tones + noise, 1-6 s, from bench/train_overhead.py; speed does not depend on
what is said), padded to `min_input_seconds` 10 as decoding does.
Writes bench/results/train_cache.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import reset_accelerate, write_json  # noqa: E402
from train_overhead import make_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parent
DECODER = ["whisper-decoder"]
RECIPES = {  # name -> recipe config (decoder-only unless said)
    "experts (decoder)": {"name": "experts", "params": {"targets": DECODER}},
    "molora language router (decoder)": {
        "name": "molora",
        "params": {"molora": {"router": "language", "num_shared": 1, "lora": {"targets": DECODER}}},
    },
    "lora (decoder, LoRS fine-tune)": {"name": "lora", "params": {"parts": ["decoder"]}},
    "full (decoder, LoRS fine-tune)": {"name": "full", "params": {"train_encoder": False}},
}
ENCODER_RECIPE = {"name": "experts", "params": {}}  # trains encoder and decoder experts


def config(args, manifest: Path, out: Path, recipe: dict, **extra):
    from babelora.config import build_dataclass
    from babelora.train.config import TrainConfig

    model = {"tiny_random": True} if args.smoke else {"name": args.model}
    raw = {
        "output_dir": str(out),
        "model": model,
        "data": {
            "train": [str(manifest)],
            "languages": ["de", "fr"],
            "batch_seconds": args.batch_seconds,
            "min_input_seconds": 10.0,
        },
        "optim": {"lr": 1e-4},
        "recipe": recipe,
        "checkpoint": {"save_every": 10**6, "keep_last": 1, "keep_best": 0},
        "max_steps": args.steps,
        "log_every": args.log_every,
        "progress_bar": False,
        "mixed_precision": "no",
        "seed": 0,
        "cache_dir": str(args.work / "cache"),
    }
    for key, value in extra.items():
        node = raw
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return build_dataclass(TrainConfig, raw)


def timed_run(cfg) -> dict:
    from babelora.methods.registry import train

    reset_accelerate()
    start = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - start
    out = Path(cfg.output_dir)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/step_time_s" in r]
    windows = [r["train/step_time_s"] for r in rows[1:]] or [rows[0]["train/step_time_s"]]
    info = json.loads((out / "run_info.json").read_text())
    shutil.rmtree(out)
    return {
        "trains": result.trains,
        "encoder_cache": info["encoder_cache"],
        "feature_cache": info["feature_cache"],
        "step_s": statistics.median(windows),
        "wall_s": wall,
        "first_loss": rows[0]["train/loss"],
        "audio_s_per_s": statistics.median(r["train/audio_s_per_s"] for r in rows),
    }


def pair(args, manifest: Path, label: str, live_extra: dict, fast_extra: dict, recipe) -> dict:
    tag = label.split()[0]
    live = timed_run(config(args, manifest, args.work / f"{tag}-live", recipe, **live_extra))
    fast = timed_run(config(args, manifest, args.work / f"{tag}-fast", recipe, **fast_extra))
    row = {
        "recipe": label,
        "trains": live["trains"],
        "live": live,
        "cached": fast,
        "speedup": live["step_s"] / fast["step_s"],
        "fill_s": fast["encoder_cache"].get("fill_seconds"),
    }
    print(
        f"{label:38s} trains {row['trains']:16s} live {live['step_s']:.3f} s/step, "
        f"cached {fast['step_s']:.3f} s/step: x{row['speedup']:.2f} "
        f"(losses {live['first_loss']:.4f} / {fast['first_loss']:.4f})",
        flush=True,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="base", help="offline Whisper name (base, tiny.en)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--batch-seconds", type=float, default=60.0)
    p.add_argument("--utterances", type=int, default=120)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the machine's cores)")
    p.add_argument("--smoke", action="store_true", help="tiny random model, a few steps")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "train_cache.json")
    args = p.parse_args()
    if args.smoke:
        args.steps, args.log_every, args.utterances, args.batch_seconds = 4, 2, 12, 20.0
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="train_cache-") as tmp:
        args.work = args.work or Path(tmp)
        manifest = make_corpus(args.work / "corpus", args.utterances)
        start = time.perf_counter()
        rows = []
        for label, recipe in RECIPES.items():
            on = {"encoder_cache": "on"}
            rows.append(pair(args, manifest, label, {"encoder_cache": "off"}, on, recipe))
        # log-mel cache on a recipe that trains the encoder: warm it once, then time
        warm = config(args, manifest, args.work / "warm", ENCODER_RECIPE, **{
            "data.feature_cache": "auto", "max_steps": 1})  # fmt: skip
        timed_run(warm)
        rows.append(
            pair(
                args,
                manifest,
                "experts (encoder+decoder), log-mel cache",
                {},
                {"data.feature_cache": "auto"},
                ENCODER_RECIPE,
            )
        )
        workers = []
        for n in (0, 1, 2):
            cfg = config(args, manifest, args.work / f"w{n}", ENCODER_RECIPE, **{
                "data.num_workers": n})  # fmt: skip
            run = timed_run(cfg)
            workers.append({"num_workers": n, **run})
            print(f"experts (encoder+decoder), live features, {n} workers: "
                  f"{run['step_s']:.3f} s/step", flush=True)  # fmt: skip
        total = time.perf_counter() - start
    write_json(
        args.out,
        {
            "command": " ".join(sys.argv),
            "model": "tiny-random" if args.smoke else args.model,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            "date": time.strftime("%Y-%m-%d"),
            "steps": args.steps,
            "batch_seconds": args.batch_seconds,
            "utterances": args.utterances,
            "rows": rows,
            "workers": workers,
            "total_s": total,
        },
    )
    print(f"wrote {args.out} ({total:.0f} s)")


if __name__ == "__main__":
    main()
