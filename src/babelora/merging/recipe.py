"""Merge recipes: YAML -> frozen dataclasses (in the spirit of mergekit's configs).

```yaml
base: openai-whisper-small/          # theta_0: safetensors file/folder or a load_whisper name
inputs:                              # fine-tuned checkpoints or PEFT LoRA adapters
  - {path: runs/de/final, name: de, weight: 1.0}
  - {path: runs/fr/lora}             # kind auto: adapter_config.json -> lora
method: lors                         # a key of ops.MERGE_METHODS
params: {density: 0.2, rank_ratio: 0.01}
include: []                          # tensor-name patterns to merge (empty = all)
exclude: ["*.embed_positions.weight"]  # copied from the base
overrides:                           # per-tensor changes, applied in order, later wins
  - {match: ["model.decoder.*"], method: task_arithmetic, params: {scale: 0.5}}
output: {path: runs/merged, kind: full}  # or kind: lora, rank: 32
seed: 0
```

Patterns are fnmatch globs on full tensor names (`*` also crosses dots), or regexes (full match)
when written with a `re:` prefix, e.g. `re:.*\\.fc[12]\\.weight`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from babelora.config import apply_overrides, build_dataclass, read_yaml
from babelora.errors import ConfigError
from babelora.merging.ops import MERGE_METHODS


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as err:
            raise ConfigError(f"bad regex pattern {pattern!r}: {err}") from None
    return re.compile(fnmatch.translate(pattern))


def match_any(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """True if `name` fully matches one of the glob (or `re:` regex) patterns."""
    return any(_compile(p).fullmatch(name) for p in patterns)


@dataclass(frozen=True)
class InputSpec:
    """One model to merge: a full fine-tuned checkpoint or a PEFT LoRA adapter."""

    path: str | None = None  # file or folder; null only when a Python source is passed to merge()
    name: str | None = None  # unique label (report, DARE seeds, weights); null = path's name
    weight: float = 1.0  # w_t in merged = base + lambda * combine(w_t, tau_t)
    kind: Literal["auto", "full", "lora"] = "auto"  # auto: adapter_config.json means lora
    check_base: bool = True  # lora: its base signature (babelora_base.json; else the name in
    # adapter_config's base_model_name_or_path) must match `base`; false merges it anyway
    partial: bool = False  # full: tensors the input lacks equal the base's (tau = 0), e.g. a
    # checkpoint of the trainable weights only; false: a missing tensor is an error

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.path:
            return Path(self.path.rstrip("/")).name
        raise ConfigError("inputs: every input needs a path or a name")


@dataclass(frozen=True)
class Override:
    """Per-tensor changes for tensors matching `match` (applied in order, later ones win)."""

    match: tuple[str, ...]  # tensor-name patterns
    method: str | None = None  # another method for these tensors (its params start from defaults)
    params: dict[str, Any] = field(default_factory=dict)  # updates the params of the method
    weights: dict[str, float] = field(default_factory=dict)  # input label -> weight
    skip: bool = False  # true: copy these tensors from the base (as `exclude`)

    def __post_init__(self) -> None:
        if not self.match:
            raise ValueError("override.match needs at least one pattern")
        if self.method is not None and self.method not in MERGE_METHODS:
            raise ValueError(f"unknown method {self.method!r}; known: {sorted(MERGE_METHODS)}")


@dataclass(frozen=True)
class OutputSpec:
    """Where and what to write."""

    path: str | None = None  # output folder (required unless dry-run)
    kind: Literal["full", "lora"] = "full"  # full checkpoint, or PEFT LoRA re-factorised by SVD
    rank: int | None = None  # lora: rank of the truncated SVD (required for kind lora)
    targets: tuple[str, ...] | None = None  # lora: tensors to factorise; null = every 2-D
    # `*.weight` except embeddings; merged changes elsewhere are dropped (and reported)
    dtype: Literal["float32", "float16", "bfloat16"] | None = None  # null = the base's dtype
    overwrite: bool = False  # replace an existing output folder

    def __post_init__(self) -> None:
        if self.kind == "lora" and (self.rank is None or self.rank < 1):
            raise ValueError("output.rank (>= 1) is required when output.kind is lora")


@dataclass(frozen=True)
class ExpandSpec:
    """Language expansion: add the inputs' task vectors to an already merged model.

    With N = num_merged languages already merged (merged = base + 1/N sum_t tau'_t, tau' being
    the method's per-input transform, e.g. L + S for LoRS) and k new inputs:
    - renormalize false: out = merged + lambda * sum_new w tau'_new, lambda default 1/N, i.e.
      each new language gets the weight each original one had (the total grows to (N+k)/N);
    - renormalize true: out = base + N/(N+k) (merged - base) + lambda * sum_new w tau'_new with
      lambda default 1/(N+k): exactly a fresh merge of all N+k at lambda = 1/(N+k) for the
      separable methods (task_arithmetic, dare, magnitude_prune, svd_lowrank, lors). TIES,
      dare_ties and average couple the inputs and are refused.
    Task vectors are relative to the original base, so `base` must be theta_0, not the merge.
    """

    merged: str | None = None  # the merged model (full checkpoint or LoRA adapter)
    num_merged: int | None = None  # N; null = read from merged/merge_report.json
    renormalize: bool = False

    def __post_init__(self) -> None:
        if self.num_merged is not None and self.num_merged < 1:
            raise ValueError(f"expand.num_merged must be >= 1, got {self.num_merged}")


@dataclass(frozen=True)
class Recipe:
    """A merge: base + inputs + method + output (see the module docstring)."""

    # theta_0: a safetensors file or folder (streamed), or anything load_whisper accepts (a
    # offline name such as tiny.en, a CTranslate2 or transformers folder, a hub id; null = the
    # offline default, base)
    base: str | None = None
    inputs: tuple[InputSpec, ...] = ()
    method: str = "task_arithmetic"  # a key of ops.MERGE_METHODS
    params: dict[str, Any] = field(default_factory=dict)  # the method's params dataclass
    include: tuple[str, ...] = ()  # tensor patterns to merge; empty = all
    exclude: tuple[str, ...] = ()  # tensor patterns copied from the base
    overrides: tuple[Override, ...] = ()
    output: OutputSpec = field(default_factory=OutputSpec)
    expand: ExpandSpec | None = None  # language-expansion mode
    seed: int = 0  # DARE: per-input, per-tensor generators derive from (seed, input, tensor)
    allow_pickle: bool = False  # accept .bin/.pt/.pth (loaded with torch.load(weights_only=True))
    compute_dtype: Literal["float64", "float32"] = "float64"  # float64: weight-1 merges are exact
    device: str = "cpu"  # where the maths runs (e.g. cuda); I/O stays on the CPU
    progress: bool = True  # tqdm progress bar over tensors

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("inputs: at least one input is required")
        if self.method not in MERGE_METHODS:
            raise ValueError(f"unknown method {self.method!r}; known: {sorted(MERGE_METHODS)}")
        labels = [spec.label for spec in self.inputs]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"input names must be unique, {dupes} repeats: set inputs[].name")
        for override in self.overrides:
            unknown = sorted(set(override.weights) - set(labels))
            if unknown:
                raise ValueError(f"override weights name unknown inputs {unknown}; known {labels}")

    @property
    def labels(self) -> list[str]:
        return [spec.label for spec in self.inputs]


def method_params(method: str, params: dict[str, Any], where: str = "params") -> Any:
    """Build (and validate) the params dataclass of `method`; errors are ConfigError."""
    if method not in MERGE_METHODS:
        raise ConfigError(f"unknown method {method!r}; known: {sorted(MERGE_METHODS)}")
    return build_dataclass(MERGE_METHODS[method].params, dict(params), where)


def load_recipe(
    path: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()
) -> Recipe:
    """Read a recipe YAML (or mapping), apply `a.b=value` overrides, validate it -> Recipe.

    Paths in the recipe are used as written (relative ones against the working directory).
    """
    data = dict(path) if isinstance(path, dict) else read_yaml(path)
    apply_overrides(data, list(overrides))
    recipe = build_dataclass(Recipe, data)
    method_params(recipe.method, recipe.params)
    for i, override in enumerate(recipe.overrides):
        method = override.method or recipe.method
        base = {} if override.method else recipe.params
        method_params(method, {**base, **override.params}, f"overrides[{i}].params")
    return recipe
