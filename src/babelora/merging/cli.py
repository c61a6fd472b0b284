"""`babelora merge RECIPE.yaml [key=value ...] [--dry-run]`: merge fine-tuned models or LoRAs.

The recipe (configs/merge/*.yaml, fields in babelora.merging.recipe) names the base model, the
inputs and their weights, the method (average, task_arithmetic, ties, dare, dare_ties,
magnitude_prune, svd_lowrank, lors) and the output (full checkpoint or LoRA adapter).
"""

from __future__ import annotations

import argparse
import dataclasses


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge per-language models or LoRA adapters (LoRS, TIES, DARE, task arithmetic)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", help="merge recipe YAML (see configs/merge/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted recipe overrides, e.g. output.path=runs/m params.density=0.3 seed=1",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="open and check every input, print the per-tensor plan, write nothing",
    )
    parser.add_argument(
        "--ignore-base-mismatch",
        action="store_true",
        help="merge LoRA inputs whose saved base signature (or base name) is not the recipe's "
        "base (sets every inputs[].check_base: false)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from babelora.merging.driver import merge  # torch: imported when a merge runs, not at start
    from babelora.merging.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.ignore_base_mismatch:
        inputs = tuple(dataclasses.replace(s, check_base=False) for s in recipe.inputs)
        recipe = dataclasses.replace(recipe, inputs=inputs)
    result = merge(recipe, dry_run=args.dry_run)
    if args.dry_run:
        print(result.plan.summary())
        return 0
    report = result.report
    counts = report["counts"]
    print(
        f"merged {counts.get('merge', 0)} tensors ({report['method']}), copied "
        f"{counts.get('base', 0) + counts.get('keep', 0)}, in {report['seconds']:.1f} s "
        f"-> {result.output}"
    )
    if "lora" in report:
        lora = report["lora"]
        print(
            f"LoRA rank {lora['rank']}: {lora['modules']} modules, relative reconstruction "
            f"error mean {lora['mean_error']:.3g}, max {lora['max_error']:.3g}"
        )
        if lora["dropped_updates"]:
            print(f"warning: {len(lora['dropped_updates'])} non-LoRA updates were dropped")
    print(f"report: {result.output / 'merge_report.json'}")
    return 0
