"""`babelora train-stages STAGES.yaml [KEY=VALUE ...]`: run a multi-stage training
(babelora.methods.speech_llm.stages), e.g. the speech-LLM's ASR -> ST -> code-switched ST stages.

KEY=VALUE overrides apply to every stage's training config (e.g. `max_steps=100`);
`--set KEY=VALUE` changes the stages file itself (e.g. `--set output_dir=runs/x`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-stages", help="run a multi-stage training (stages YAML)")
    p.add_argument("stages", help="stages YAML (list of per-stage training configs)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides for every stage's training config",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the stages file (e.g. output_dir=runs/x)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from babelora.methods.speech_llm.stages import load_stages, run_stages

    stages = load_stages(args.stages, args.set)
    results = run_stages(stages, Path(args.stages).parent, args.overrides)
    for stage, result in zip(stages.stages, results):
        if result is None:
            print(f"{stage.name}: already finished")
        else:
            print(
                f"{stage.name}: {result.step} steps, train loss {result.train_loss}, "
                f"export {result.final_dir}"
            )
    return 0 if all(r is None or r.finished for r in results) else 1
