"""`babelora train CONFIG.yaml [key=value ...] [--resume]`: run or resume a training run.

Multi-GPU / multi-node: `accelerate launch [--num_processes N ...] -m babelora.cli.main train ...`
(DDP, FSDP and DeepSpeed come from the Accelerate config).
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("babelora.train")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train with a recipe (full, lora, ...) from a YAML config",
        description="Train from a YAML config; dotted key=value overrides follow the file, e.g. "
        "optim.lr=3e-4 data.batch_seconds=120 recipe.params.rank=16.",
    )
    p.add_argument("config", help="YAML config (see configs/train/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from babelora.methods.registry import load_config, train

    overrides = list(args.overrides) + (["resume=true"] if args.resume else [])
    cfg = load_config(args.config, overrides)
    result = train(cfg)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    if not result.finished:
        log.info(
            "stopped at step %d of %d; continue with --resume", result.step, result.total_steps
        )
    else:
        log.info("done: %d steps; model in %s", result.step, result.final_dir or result.output_dir)
    return 0
