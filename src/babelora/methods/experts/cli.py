"""`babelora experts fuse | train-lid | export`: serve LoRA language experts (Interspeech 2025).

- `fuse`: weight-space fusion into ONE PEFT adapter (given weights, the uniform average, or
  weights learned on dev data with the experts frozen), or `--gated` output-space fusion (a
  learned gate; saved as an expert set). Training runs through the engine
  (recipes weight_fusion / gated_fusion) in `--work`.
- `train-lid`: a spoken-LID head on the base encoder for language-agnostic routing, with its
  accuracy on an evaluation manifest.
- `export`: one PEFT adapter folder per language from an expert set.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from babelora.errors import ConfigError

log = logging.getLogger("babelora.experts")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("experts", help="fuse, export LoRA language experts; train a LID")
    sub = p.add_subparsers(dest="experts_command", metavar="SUBCOMMAND")
    sub.required = True

    f = sub.add_parser("fuse", help="fuse language experts into one adapter (or a gated set)")
    f.add_argument("--experts", required=True, help="expert set folder (an experts run's final/)")
    f.add_argument("--out", required=True, help="output folder (PEFT adapter, or set with --gated)")
    how = f.add_mutually_exclusive_group()
    how.add_argument("--weights", help="fixed weights, e.g. de=0.5,fr=0.5 (others 0)")
    how.add_argument("--learn", metavar="DEV.jsonl", help="learn the weights (or gates) on data")
    f.add_argument("--gated", action="store_true", help="output-space gated fusion (with --learn)")
    f.add_argument("--rank", type=int, default=None, help="fused rank (default: the experts')")
    f.add_argument(
        "--granularity",
        choices=["per_layer", "global"],
        default="per_layer",
        help="learned weights per language and layer, or per language (default per_layer)",
    )
    f.add_argument("--model", default=None, help="base model (default: offline base)")
    f.add_argument("--steps", type=int, default=200, help="optimizer steps with --learn")
    f.add_argument("--lr", type=float, default=1e-2, help="learning rate with --learn")
    f.add_argument("--batch-seconds", type=float, default=60.0, help="audio per batch (--learn)")
    f.add_argument("--langs", default=None, help="data languages (default: the set's)")
    f.add_argument("--work", default=None, help="training run folder (default: OUT.run)")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=run_fuse)

    lid = sub.add_parser("train-lid", help="train a LID head on the base encoder (+ accuracy)")
    lid.add_argument("--manifest", required=True, nargs="+", help="training manifest(s)")
    lid.add_argument("--langs", default=None, help="languages, e.g. de,fr (default: manifest's)")
    lid.add_argument("--out", required=True, help="LID head folder")
    lid.add_argument("--eval", nargs="*", default=[], help="manifest(s) to report accuracy on")
    lid.add_argument("--model", default=None, help="base model (default: offline base)")
    lid.add_argument("--epochs", type=int, default=None, help="head epochs (default LidConfig)")
    lid.add_argument("--hidden", type=int, default=None, help="MLP width, 0 = linear")
    lid.add_argument("--min-input-seconds", type=float, default=None, help="as for decoding")
    lid.add_argument("--threads", type=int, default=None)
    lid.set_defaults(func=run_train_lid)

    e = sub.add_parser("export", help="one PEFT adapter folder per language from an expert set")
    e.add_argument("--experts", required=True, help="expert set folder")
    e.add_argument("--out", required=True, help="output folder (one subfolder per language)")
    e.add_argument("--langs", default=None, help="only these languages (default: all)")
    e.add_argument("--model", default=None, help="base model (default: offline base)")
    e.set_defaults(func=run_export)


def _load_set(model: str | None, experts: str):
    """Base model + the expert set on it (base checked); returns (WhisperHandle, adapter)."""
    from babelora.adapters import load_adapter_set
    from babelora.methods.experts.expert_sets import read_set_config
    from babelora.models.base_check import check_base
    from babelora.models.whisper import load_whisper

    read_set_config(experts)  # clear error when the folder is not a set
    handle = load_whisper(model)
    check_base(experts, handle.model, handle.name)
    return handle, load_adapter_set(handle.model, experts)


def _split_langs(text: str | None) -> list[str] | None:
    from babelora.languages import check_lang

    if not text:
        return None
    return [check_lang(x) for x in text.split(",") if x.strip()]


def run_export(args: argparse.Namespace) -> int:
    from babelora.adapters import export_peft
    from babelora.models.base_check import write_base_signature

    handle, adapter = _load_set(args.model, args.experts)
    cfg = adapter.config
    langs = _split_langs(args.langs) or list(cfg.languages)
    for lang in langs:
        adapter.context.lang_index(lang)  # LanguageError names the set's languages
    out = Path(args.out)
    for lang in langs:
        export_peft(adapter, out / lang, lang=lang, base_model_name_or_path=args.model)
        write_base_signature(out / lang, handle.model, handle.name)
        print(f"{lang}: {out / lang}")
    return 0


def _fixed_weights(adapter, text: str | None):
    import torch

    from babelora.methods.experts.expert_sets import parse_lang_values

    cfg = adapter.config
    if text is None:
        return torch.full((cfg.num_total,), 1.0 / cfg.num_routed)
    weights = torch.zeros(cfg.num_total)
    for lang, value in parse_lang_values(text, "--weights").items():
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"--weights: {lang}={value!r} is not a number") from None
        weights[cfg.num_shared + adapter.context.lang_index(lang)] = number
    return weights


def _learn(args: argparse.Namespace) -> Path:
    """Train weight_fusion / gated_fusion through the engine; returns the export folder."""
    from babelora.config import build_dataclass
    from babelora.methods.registry import train
    from babelora.train.config import TrainConfig

    recipe = (
        {"name": "gated_fusion", "params": {"experts": args.experts}}
        if args.gated
        else {
            "name": "weight_fusion",
            "params": {
                "experts": args.experts,
                "granularity": args.granularity,
                "rank": args.rank,
            },
        }
    )
    work = Path(args.work or f"{args.out.rstrip('/')}.run")
    data = {"train": [args.learn], "batch_seconds": args.batch_seconds}
    langs = _split_langs(args.langs)
    if langs:
        data["languages"] = langs
    else:
        from babelora.methods.experts.expert_sets import set_languages

        data["languages"] = set_languages(args.experts)
    cfg = build_dataclass(
        TrainConfig,
        {
            "output_dir": str(work),
            "model": {"name": args.model, "prompt_style": "multilingual"},
            "data": data,
            "optim": {"lr": args.lr, "warmup_steps": 0, "schedule": "constant"},
            "recipe": recipe,
            "checkpoint": {"save_every": args.steps, "keep_last": 1, "keep_best": 0},
            "max_steps": args.steps,
            "seed": args.seed,
            "progress_bar": sys.stderr.isatty(),
        },
    )
    result = train(cfg)
    assert result.final_dir is not None
    return result.final_dir


def run_fuse(args: argparse.Namespace) -> int:
    if args.gated and not args.learn:
        raise ConfigError("--gated fusion learns its gates: give --learn DEV.jsonl")
    if args.rank is not None and args.rank < 1:
        raise ConfigError(f"--rank must be >= 1, got {args.rank}")
    out = Path(args.out)
    if args.learn:
        final = _learn(args)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(final, out)
    else:
        from babelora.methods.experts.fusion_recipe import save_fused

        handle, adapter = _load_set(args.model, args.experts)
        weights = _fixed_weights(adapter, args.weights)
        info = {
            "experts": str(args.experts),
            "weights": dict(zip(adapter.config.languages, weights.tolist())),
        }
        save_fused(adapter, out, weights, args.rank, handle.name, args.model, info)
    if args.gated:
        print(f"gated fusion set written to {out} (decode with --experts {out})")
        return 0
    summary = json.loads((out / "fusion.json").read_text(encoding="utf-8"))
    print(
        f"fused {len(summary['languages'])} experts into one rank-{summary['rank']} PEFT adapter "
        f"at {out}: relative reconstruction error max {summary['max_rel_error']:.4f}, "
        f"mean {summary['mean_rel_error']:.4f}"
    )
    return 0


def run_train_lid(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from babelora.data.manifest import read_manifest
    from babelora.decode.runner import RunnerOptions
    from babelora.methods.experts.lid_training import evaluate_lid, train_lid
    from babelora.models.lid import LidConfig
    from babelora.models.whisper import load_whisper

    if args.threads:
        torch.set_num_threads(args.threads)
    utts = [u for path in args.manifest for u in read_manifest(path)]
    langs = _split_langs(args.langs) or sorted({u.lang for u in utts})
    if len(langs) < 2:
        raise ConfigError(f"LID needs at least two languages, got {langs}")
    changes = {k: v for k, v in (("epochs", args.epochs), ("hidden", args.hidden)) if v is not None}
    cfg = dataclasses.replace(LidConfig(), **changes)
    options = RunnerOptions(show_progress=False)
    if args.min_input_seconds is not None:
        options = dataclasses.replace(options, min_input_seconds=args.min_input_seconds)
    handle = load_whisper(args.model)
    head = train_lid(handle, utts, langs, cfg, options)
    head.save(args.out)
    report = {"languages": langs, "train": evaluate_lid(head, handle, utts, options).to_json()}
    for path in args.eval:
        report[str(path)] = evaluate_lid(head, handle, read_manifest(path), options).to_json()
    (Path(args.out) / "lid_report.json").write_text(json.dumps(report, indent=2), "utf-8")
    for name, rep in report.items():
        if name != "languages":
            per = " ".join(f"{k}={v:.3f}" for k, v in sorted(rep["per_lang"].items()))
            print(f"LID accuracy on {name}: {rep['accuracy']:.4f} ({rep['n']} files; {per})")
    return 0
