"""The streaming merge driver: recipe -> plan -> one tensor at a time -> output folder + report.

For every tensor name k of the base theta_0 (in file order):

    out[k] = theta_0[k] + a * (merged[k] - theta_0[k]) + lambda * combine_t(w_t, tau_t[k])

where tau_t = theta_t - theta_0 is input t's task vector (a LoRA's is scale * B @ A), `combine`
is the recipe's method (ops.MERGE_METHODS, per-tensor overrides allowed) and lambda its `scale`.
The `a * (merged - theta_0)` term exists only in language-expansion mode (recipe.expand; see
recipe.ExpandSpec for a and the default lambda). Tensors that are excluded, non-float or not
changed by any input are copied from the base.

Memory: each step reads the base tensor and one tensor per input (a LoRA: its A and B), computes,
writes the result straight into the output file (io.SafetensorsWriter) and drops everything. Peak
memory is therefore set by the largest tensor, not by the model: about N + 3 copies of it in
`compute_dtype` (base, N task vectors, the merged update; TIES also keeps its N trimmed copies,
top-k needs about 3 more while it runs and SVD adds its factors), plus the base itself when it is
loaded through load_whisper rather than streamed. Maths runs in `compute_dtype`, float64 by
default, so that a weight-1 merge of one input reproduces it bit-exactly; float32 halves the
memory.

The output folder is written under a temporary name and moved into place (io.atomic_folder):
model.safetensors (+ the base's config.json and friends) or a PEFT adapter (adapter_config.json +
adapter_model.safetensors), merge_report.json (per-tensor stats, LoRA reconstruction errors,
time, peak RSS) and merge_recipe.yaml (the resolved recipe).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm import tqdm

from babelora.config import dump_config
from babelora.errors import ConfigError, MergeError
from babelora.merging.inputs import MergeInput, generators_for, open_input
from babelora.merging.io import SafetensorsWriter, atomic_folder, check_output_clear
from babelora.merging.lora_io import (
    factorise,
    relative_error,
    write_lora_adapter,
    write_signature,
)
from babelora.merging.ops import MERGE_METHODS, RankParams, TensorContext
from babelora.merging.recipe import Recipe, load_recipe, match_any, method_params
from babelora.merging.report import REPORT_NAME, build_report, set_config_dtype
from babelora.merging.sources import (
    StateDictSource,
    TensorSource,
    config_d_model,
    open_base,
)

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SourceLike = TensorSource | Mapping[str, Tensor]


@dataclass(frozen=True)
class TensorPlan:
    """What happens to one tensor."""

    key: str
    shape: tuple[int, ...]
    action: Literal["base", "keep", "merge"]  # copy theta_0 / keep the merged model's / merge
    method: str | None = None
    params: Any = None
    weights: tuple[float, ...] = ()
    scale: float = 1.0  # lambda
    rank: int | None = None  # SVD rank for targeted matrices of rank methods
    targeted: bool = False  # per-task transform applies (lors, svd_lowrank, magnitude_prune)
    lora_target: bool = False  # output kind lora: factorised into the adapter


@dataclass
class MergePlan:
    """Opened sources and the per-tensor plan; `execute` runs it."""

    recipe: Recipe
    base: TensorSource
    inputs: list[MergeInput]
    tensors: list[TensorPlan]
    merged: MergeInput | None = None  # expand mode: the already merged model
    existing: float = 1.0  # a, the factor on (merged - theta_0)
    num_languages: int = 0  # languages in the output (recorded for later expansions)
    d_model: int | None = None

    def summary(self) -> str:
        r = self.recipe
        actions = Counter(t.action for t in self.tensors)
        methods = Counter(t.method for t in self.tensors if t.action == "merge")
        lines = [f"base: {self.base.name} ({len(self.tensors)} tensors, d_model {self.d_model})"]
        for inp in self.inputs:
            lines.append(f"input {inp.label}: {inp.kind} {inp.source.name}")
        if self.merged is not None:
            lines.append(
                f"expand: {self.merged.source.name} x {self.existing:g} "
                f"(languages after: {self.num_languages})"
            )
        for name, count in sorted(methods.items()):
            plans = [t for t in self.tensors if t.action == "merge" and t.method == name]
            ranks = sorted({t.rank for t in plans if t.targeted and t.rank})
            lines.append(
                f"method {name}: {count} tensors, lambda {sorted({t.scale for t in plans})}, "
                f"{sum(t.targeted for t in plans)} targeted" + (f", rank {ranks}" if ranks else "")
            )
        lines.append(
            f"copied from base: {actions['base']}, kept from merged: {actions['keep']}, "
            f"merged: {actions['merge']}"
        )
        out = r.output
        lines.append(
            f"output: {out.path} ({out.kind}"
            + (
                f", rank {out.rank}, {sum(t.lora_target for t in self.tensors)} targets"
                if out.kind == "lora"
                else ""
            )
            + ")"
        )
        return "\n".join(lines)


@dataclass
class MergeResult:
    output: Path | None  # None for a dry run
    report: dict[str, Any]
    plan: MergePlan


# ----------------------------------------------------------------------------- planning
def _open_all(recipe: Recipe, sources: Mapping[str, SourceLike]):
    given = sources.get("base")
    if given is None:
        base = open_base(recipe.base, recipe.allow_pickle)
    else:
        base = given if not isinstance(given, Mapping) else StateDictSource(given, name="base")
    inputs = [
        open_input(
            s.path,
            s.label,
            s.kind,
            recipe.allow_pickle,
            s.check_base,
            sources.get(s.label),
            s.partial,
        )
        for s in recipe.inputs
    ]
    merged = None
    if recipe.expand is not None:
        merged = open_input(
            recipe.expand.merged, "merged", "auto", recipe.allow_pickle, True, sources.get("merged")
        )
    return base, inputs, merged


def _check_output(recipe: Recipe, sources: Mapping[str, SourceLike]) -> None:
    """Refuse an output.path that is, lies inside or contains the base or an input."""
    if not recipe.output.path:
        return
    reads = {"the base": recipe.base if "base" not in sources else None}
    for spec in recipe.inputs:
        reads[f"input {spec.label!r}"] = spec.path if spec.label not in sources else None
    if recipe.expand is not None and "merged" not in sources:
        reads["expand.merged"] = recipe.expand.merged
    check_output_clear(recipe.output.path, reads)


def _num_merged(recipe: Recipe) -> int:
    expand = recipe.expand
    assert expand is not None
    if expand.num_merged is not None:
        return expand.num_merged
    report = Path(expand.merged or "") / REPORT_NAME
    if report.is_file():
        value = json.loads(report.read_text("utf-8")).get("num_languages")
        if isinstance(value, int) and value >= 1:
            return value
    raise MergeError(
        f"expand.num_merged is not set and {report} does not record num_languages: "
        "set expand.num_merged to the number of languages already merged"
    )


class _ParamsCache:
    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], Any] = {}

    def get(self, method: str, params: dict[str, Any]) -> Any:
        key = (method, json.dumps(params, sort_keys=True, default=str))
        if key not in self._cache:
            self._cache[key] = method_params(method, params)
        return self._cache[key]


def plan(recipe: Recipe, sources: Mapping[str, SourceLike] | None = None) -> MergePlan:
    """Open every source, check compatibility and decide each tensor's fate (no tensor data read).

    `sources` maps 'base', input names or 'merged' to Python sources (a TensorSource or a state
    dict) that replace the recipe's paths.
    """
    _check_output(recipe, dict(sources or {}))
    base, inputs, merged = _open_all(recipe, dict(sources or {}))
    labels = [inp.label for inp in inputs]
    existing, n_default, n_languages = 1.0, len(inputs), len(inputs)
    if merged is not None:
        n_old = _num_merged(recipe)
        assert recipe.expand is not None
        n_languages = n_old + len(inputs)
        if recipe.expand.renormalize:
            existing, n_default = n_old / n_languages, n_languages
        else:
            n_default = n_old
    d_model = config_d_model(base.config)
    cache = _ParamsCache()
    out = recipe.output
    tensors: list[TensorPlan] = []
    for key in base.names():
        meta = base.meta(key)
        kept = merged is not None and merged.changes(key)
        if not meta.dtype.is_floating_point:
            tensors.append(TensorPlan(key, meta.shape, "base"))
            continue
        skip = bool(recipe.include) and not match_any(key, recipe.include)
        skip = skip or match_any(key, recipe.exclude)
        method, params, weights = (
            recipe.method,
            dict(recipe.params),
            dict(zip(labels, [s.weight for s in recipe.inputs])),
        )
        for override in recipe.overrides:
            if match_any(key, override.match):
                if override.method is not None:
                    method, params = override.method, dict(override.params)
                else:
                    params.update(override.params)
                weights.update(override.weights)
                skip = skip or override.skip
        changed = any(inp.changes(key) for inp in inputs)
        lora_target = (
            out.kind == "lora"
            and len(meta.shape) == 2
            and (
                match_any(key, out.targets)
                if out.targets is not None
                else key.endswith(".weight") and "embed" not in key
            )
        )
        if skip or not (changed or kept):
            action = "keep" if kept else "base"
            tensors.append(TensorPlan(key, meta.shape, action, lora_target=lora_target))
            continue
        spec = MERGE_METHODS[method]
        p = cache.get(method, params)
        if merged is not None and not spec.separable:
            raise MergeError(
                f"method {method!r} (tensor {key!r}) is not separable per input, so it cannot "
                "expand a merged model; re-merge all languages, or use task_arithmetic, dare, "
                "magnitude_prune, svd_lowrank or lors"
            )
        targeted = hasattr(p, "targets") and len(meta.shape) >= 2 and match_any(key, p.targets)
        rank = None
        if targeted and isinstance(p, RankParams):
            try:
                rank = p.resolve_rank(d_model)
            except ValueError as err:
                raise ConfigError(f"params: {err} (tensor {key!r})") from None
        tensors.append(
            TensorPlan(
                key,
                meta.shape,
                "merge",
                method,
                p,
                tuple(weights[label] for label in labels),
                spec.scale(p, n_default),
                rank,
                targeted,
                lora_target,
            )
        )
    merge_keys = [t.key for t in tensors if t.action == "merge"]
    for inp in inputs:
        inp.validate(base, merge_keys, recipe.base)
    if merged is not None:
        merged.validate(base, [t.key for t in tensors if t.action != "base"], recipe.base)
    return MergePlan(recipe, base, inputs, tensors, merged, existing, n_languages, d_model)


# ----------------------------------------------------------------------------- execution
class _FullSink:
    """Streams every tensor (merged or copied) into model.safetensors."""

    wants_copies = True

    def __init__(self, writer: SafetensorsWriter, dtypes: dict[str, torch.dtype]) -> None:
        self.writer, self.dtypes = writer, dtypes

    def copy(self, key: str, tensor: Tensor) -> None:
        self.writer.write(key, tensor.to(self.dtypes[key]))

    def write(
        self, tp: TensorPlan, base: Tensor, bc: Tensor, delta: Tensor | None, stats: dict
    ) -> None:
        out = base if delta is None else delta.add_(bc)  # delta is not used after this
        self.writer.write(tp.key, out.to(self.dtypes[tp.key]))


class _LoraSink:
    """Factorises merged updates of the LoRA targets; records updates it must drop."""

    wants_copies = False

    def __init__(self, rank: int, dtypes: dict[str, torch.dtype]) -> None:
        self.rank, self.dtypes = rank, dtypes
        self.factors: dict[str, tuple[Tensor, Tensor]] = {}
        self.dropped: dict[str, float] = {}

    def copy(self, key: str, tensor: Tensor) -> None:
        return None

    def write(
        self, tp: TensorPlan, base: Tensor, bc: Tensor, delta: Tensor | None, stats: dict
    ) -> None:
        if delta is None or not bool(torch.any(delta)):
            return
        if not tp.lora_target:
            self.dropped[tp.key] = float(torch.linalg.vector_norm(delta))
            return
        b, a = factorise(delta, self.rank)
        b, a = b.to("cpu", self.dtypes[tp.key]), a.to("cpu", self.dtypes[tp.key])
        stats["lora_error"] = relative_error(delta, b.to(delta.device), a.to(delta.device))
        self.factors[tp.key] = (b, a)


def _process(plan: MergePlan, tp: TensorPlan, sink: Any) -> dict[str, Any] | None:
    """Merge one tensor (a function, so every tensor it read is released when it returns)."""
    r = plan.recipe
    if tp.action == "base":
        if sink.wants_copies:
            sink.copy(tp.key, plan.base.get(tp.key))
        return None
    base = plan.base.get(tp.key)
    bc = base.to(r.device, getattr(torch, r.compute_dtype))
    delta = None
    stats: dict[str, Any] = {"action": tp.action, "shape": list(tp.shape)}
    if plan.merged is not None and plan.merged.changes(tp.key):
        delta = plan.merged.task_vector(tp.key, bc)
        if tp.action == "merge" and delta is not None and plan.existing != 1.0:
            delta.mul_(plan.existing)  # a fresh tensor
    if tp.action == "merge":
        taus = [inp.task_vector(tp.key, bc) for inp in plan.inputs]
        if all(t is None or not bool(torch.any(t)) for t in taus):
            # every method maps zero task tensors to 0 (e.g. a part frozen in every fine-tune):
            # skip the maths (LoRS/SVD would decompose zero matrices); the result is identical
            stats["zero_task_vectors"] = any(t is not None for t in taus)
            taus = []
        if any(t is not None for t in taus):
            taus = [torch.zeros_like(bc) if t is None else t for t in taus]
            spec = MERGE_METHODS[tp.method]
            gens = None
            if spec.random:
                gens = generators_for(r.seed, [i.label for i in plan.inputs], tp.key, r.device)
            ctx = TensorContext(tp.key, tp.targeted, tp.rank, gens)
            weights = torch.tensor(tp.weights, dtype=bc.dtype, device=bc.device)
            try:
                combined = spec.combine(taus, weights, tp.params, ctx)  # a new tensor
                if tp.scale != 1.0:
                    combined.mul_(tp.scale)
            except ValueError as err:  # e.g. average with weights summing to 0
                raise MergeError(f"tensor {tp.key!r} ({tp.method}): {err}") from None
            stats.update(method=tp.method, scale=tp.scale, targeted=tp.targeted, rank=tp.rank)
            stats["input_norms"] = {
                inp.label: float(torch.linalg.vector_norm(t)) for inp, t in zip(plan.inputs, taus)
            }
            delta = combined if delta is None else delta.add_(combined)
        del taus
    if delta is not None:
        stats["delta_norm"] = float(torch.linalg.vector_norm(delta))
        stats["nonzero_fraction"] = float(torch.count_nonzero(delta)) / max(1, delta.numel())
    sink.write(tp, base, bc, delta, stats)
    return stats


def _out_dtypes(plan: MergePlan) -> dict[str, torch.dtype]:
    forced = DTYPES.get(plan.recipe.output.dtype or "")
    dtypes = {}
    for key in plan.base.names():
        dtype = plan.base.meta(key).dtype
        dtypes[key] = forced if forced is not None and dtype.is_floating_point else dtype
    return dtypes


def execute(plan: MergePlan) -> MergeResult:
    """Run a plan: stream every tensor, write the output folder atomically, return the report."""
    r = plan.recipe
    if not r.output.path:
        raise ConfigError("output.path is required (or use a dry run)")
    target = Path(r.output.path).expanduser()
    dtypes = _out_dtypes(plan)
    start = time.perf_counter()
    stats: dict[str, Any] = {}
    with atomic_folder(target, r.output.overwrite) as tmp:
        if r.output.kind == "full":
            entries = [(t.key, t.shape, dtypes[t.key]) for t in plan.tensors]
            writer = SafetensorsWriter(tmp / "model.safetensors", entries)
            sink: Any = _FullSink(writer, dtypes)
        else:
            writer, sink = None, _LoraSink(r.output.rank or 1, dtypes)
        try:
            bar = tqdm(
                plan.tensors, desc=f"merge ({r.method})", unit="tensor", disable=not r.progress
            )
            for tp in bar:
                result = _process(plan, tp, sink)
                if result is not None:
                    stats[tp.key] = result
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            writer.close()
            side = plan.base.write_side_files(tmp)
            set_config_dtype(tmp / "config.json", r.output.dtype)
        else:
            if not sink.factors:
                raise MergeError(
                    "output kind lora: no targeted tensor has a non-zero merged update"
                )
            write_lora_adapter(tmp, sink.factors, r.output.rank or 1, r.base or plan.base.name)
            write_signature(tmp, plan.base, r.base)  # decoding checks the LoRA's base
            side = []
        dropped = sink.dropped if isinstance(sink, _LoraSink) else None
        report = build_report(plan, stats, side, time.perf_counter() - start, target, dropped)
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=1) + "\n", "utf-8")
        dump_config(r, tmp / "merge_recipe.yaml")
    log.info("merged %d tensors into %s", len(stats), target)
    return MergeResult(target, report, plan)


def merge(
    recipe: Recipe | str | Path | dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    *,
    sources: Mapping[str, SourceLike] | None = None,
    dry_run: bool = False,
    **changes: Any,
) -> MergeResult:
    """Merge per a recipe (object, YAML path or mapping); `changes` replace top-level fields.

    Example: `merge("configs/merge/lors.yaml", ["output.path=runs/m"], progress=False)`.
    A dry run opens and checks everything and returns the plan without writing.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        raise ConfigError("overrides apply to recipe files; use dataclasses.replace on a Recipe")
    if changes:
        recipe = dataclasses.replace(recipe, **changes)
    merge_plan = plan(recipe, sources)
    if dry_run:
        return MergeResult(None, {"summary": merge_plan.summary()}, merge_plan)
    return execute(merge_plan)


__all__ = ["MergePlan", "MergeResult", "TensorPlan", "execute", "merge", "plan"]
