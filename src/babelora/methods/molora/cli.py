"""`babelora analyze routing`: per-language expert usage of a MoLoRA / expert set.

    babelora analyze routing --experts RUN/final --manifest test.jsonl --out DIR \
        [--model M] [--max-items N] [--langs de,fr]

Runs the model teacher-forced over the manifest (babelora.methods.molora.analysis) and writes
`routing_usage.png` (language x expert heatmap per layer group), `.csv`, `.json` and `.md`.
"""

from __future__ import annotations

import argparse
import random

from babelora.errors import ManifestError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("analyze", help="analyse trained models (expert routing)")
    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS")
    r = sub.add_parser(
        "routing",
        help="per-language expert usage heatmap and table of a MoLoRA / expert set",
        description=__doc__.split("\n\n")[0],
    )
    r.add_argument("--experts", required=True, help="expert set folder (a molora run's final/)")
    r.add_argument("--manifest", required=True, help="manifest JSONL (references are the input)")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--model", default=None, help="base Whisper (default: offline base)")
    r.add_argument(
        "--prompt-style",
        choices=["multilingual", "english"],
        default="multilingual",
        help="decoder prompt the experts were trained with (default %(default)s)",
    )
    r.add_argument("--langs", default=None, help="only these languages, e.g. de,fr")
    r.add_argument("--max-items", type=int, default=None, help="random subset of N utterances")
    r.add_argument("--seed", type=int, default=0, help="seed of the --max-items subset")
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument(
        "--min-input-seconds",
        type=float,
        default=0.0,
        help="pad batches to this length, as in training (data.min_input_seconds)",
    )
    r.add_argument("--data-root", default=None, help="audio paths may not escape this folder")
    r.add_argument("--device", default="cpu")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=run_routing)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_routing(args: argparse.Namespace) -> int:
    import torch

    from babelora.data.manifest import read_manifest
    from babelora.languages import check_lang
    from babelora.methods.molora.analysis import collect_routing_usage, write_usage
    from babelora.methods.molora.model import load_molora
    from babelora.models.whisper import load_whisper

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        raise ManifestError(f"--batch-size must be >= 1, got {args.batch_size}")
    langs = [check_lang(x.strip()) for x in args.langs.split(",")] if args.langs else None
    utts = read_manifest(args.manifest, data_root=args.data_root)
    if langs is not None:
        utts = [u for u in utts if u.lang in langs]
    if args.max_items is not None and len(utts) > args.max_items:
        utts = random.Random(args.seed).sample(utts, args.max_items)
    if not utts:
        raise ManifestError(f"{args.manifest}: no utterances to analyse")
    handle = load_whisper(args.model, device=args.device, prompt_style=args.prompt_style)
    adapter = load_molora(handle, args.experts)
    usage = collect_routing_usage(
        handle,
        adapter,
        utts,
        batch_size=args.batch_size,
        min_input_seconds=args.min_input_seconds,
        progress=not args.no_progress,
    )
    cfg = adapter.config
    from pathlib import Path

    name = "/".join(Path(args.experts).resolve().parts[-2:])
    title = f"{name}: router {cfg.router} ({cfg.routing_level}), top-{cfg.top_k}"
    paths = write_usage(usage, args.out, title)
    print(usage.to_markdown("all"))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
