"""babelora.merging: merge per-language fine-tuned models or LoRA adapters (LoRS-Merging & co).

- `ops`: pure tensor maths and the MERGE_METHODS registry (average, task_arithmetic, ties, dare,
  dare_ties, magnitude_prune, svd_lowrank, lors);
- `recipe`: the YAML recipe dataclasses; `merge`: the streaming driver (`merge(recipe)`);
- `sources`, `lora_io`, `inputs`, `io`, `report`: reading checkpoints and adapters, writing
  the output and merge_report.json.
"""

from babelora.merging.merge import MergePlan, MergeResult, execute, merge, plan
from babelora.merging.ops import MERGE_METHODS
from babelora.merging.recipe import Recipe, load_recipe

__all__ = [
    "MERGE_METHODS",
    "MergePlan",
    "MergeResult",
    "Recipe",
    "execute",
    "load_recipe",
    "merge",
    "plan",
]
