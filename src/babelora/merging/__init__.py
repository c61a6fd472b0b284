"""babelora.merging: merge per-language fine-tuned models or LoRA adapters (LoRS-Merging & co).

- `ops`: pure tensor maths and the MERGE_METHODS registry (average, task_arithmetic, ties, dare,
  dare_ties, magnitude_prune, svd_lowrank, lors);
- `recipe`: the YAML recipe dataclasses; `driver`: the streaming driver (`merge(recipe)`);
- `sources`, `lora_io`, `inputs`, `io`, `report`: reading checkpoints and adapters, writing
  the output and merge_report.json.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {  # exported name -> the submodule it lives in, imported on first use (torch is slow
    # to import, and `babelora score` or `babelora --help` should not pay for it)
    "MERGE_METHODS": "ops",
    "MergePlan": "driver",
    "MergeResult": "driver",
    "Recipe": "recipe",
    "execute": "driver",
    "load_recipe": "recipe",
    "merge": "driver",
    "plan": "driver",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
