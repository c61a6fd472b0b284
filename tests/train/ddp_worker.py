"""Run by `accelerate launch` in test_ddp.py: one training run, then a note of this rank."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    from accelerate import PartialState

    from babelora.methods.registry import train
    from babelora.train.config import load_train_config

    cfg = load_train_config(sys.argv[1], sys.argv[2:])
    result = train(cfg)
    state = PartialState()
    note = {
        "rank": state.process_index,
        "world": state.num_processes,
        "step": result.step,
        "backend": str(state.backend),
    }
    Path(cfg.output_dir, f"rank{state.process_index}.json").write_text(json.dumps(note))


if __name__ == "__main__":
    main()
