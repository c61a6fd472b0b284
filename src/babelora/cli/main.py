"""`babelora <command>`: a dispatch table over small per-command modules.

Each module in COMMAND_MODULES defines `register(subparsers)`, which adds its sub-command(s) and
sets `func` (called with the parsed args, returning an exit code). User errors (BabeloraError)
become one line on stderr and exit code 2; a batch job with failed items returns 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from babelora.errors import BabeloraError

COMMAND_MODULES = (
    "babelora.cli.decode",  # transcribe, translate, evaluate
    "babelora.cli.score",  # score
    "babelora.cli.merge",  # merge (LoRS, TIES, DARE, task arithmetic; models or LoRAs)
    "babelora.cli.corpus",  # corpus build / langs / import {covost2,mustc,fleurs}
    "babelora.cli.stages",  # train-stages (multi-stage training, e.g. the speech-LLM)
    "babelora.cli.train",  # train (recipes: full, lora, ...)
    "babelora.cli.analyze",  # analyze routing (per-language expert usage heatmap)
    "babelora.cli.experts",  # experts fuse / train-lid / export (LoRA language experts)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="babelora",
        description="Multilingual ASR/ST with parameter-efficient language experts.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BabeloraError as err:
        print(f"babelora {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"babelora {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
