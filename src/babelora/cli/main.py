"""`babelora <command>`: a dispatch table over small per-command modules.

Each module in COMMANDS defines `register(subparsers)`, which adds its sub-command(s) and sets
`func` (called with the parsed args, returning an exit code). A method's verbs live in its own
folder (`methods/<name>/cli.py`, `merging/cli.py`); this file only lists them. User errors
(BabeloraError) become one line on stderr and exit code 2; a batch job with failed items
returns 1.
"""

from __future__ import annotations

import argparse
import logging
import sys

from babelora.cli import corpus, decode, export, models, score, serve, train
from babelora.errors import BabeloraError
from babelora.merging import cli as merging_cli
from babelora.methods.experts import cli as experts_cli
from babelora.methods.molora import cli as molora_cli
from babelora.methods.speech_llm import cli as speech_llm_cli

COMMANDS = (
    decode,  # transcribe, translate, evaluate
    score,  # score
    merging_cli,  # merge (LoRS, TIES, DARE, task arithmetic; models or LoRAs)
    corpus,  # corpus build / langs / import {covost2,mustc,fleurs}
    speech_llm_cli,  # train-stages (multi-stage training, e.g. the speech-LLM)
    train,  # train (recipes: full, lora, experts, molora, ...)
    molora_cli,  # analyze routing (per-language expert usage heatmap)
    experts_cli,  # experts fuse / train-lid / export (LoRA language experts)
    models,  # models (the Whisper models available offline by name)
    export,  # export --format ct2|hf (faster-whisper / transformers folders)
    serve,  # serve (HTTP, OpenAI's audio API; batches languages' experts together)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="babelora",
        description="Multilingual ASR/ST with parameter-efficient language experts.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
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
