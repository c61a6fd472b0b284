"""merge_report.json: what was merged, how, and how well (per-tensor stats, LoRA errors, cost).

Per merged tensor: action, shape, method, lambda, whether the per-task transform applied and at
which rank, the norm of every input's task vector, the norm and non-zero fraction of the merged
update, and for LoRA outputs the relative Frobenius reconstruction error ||dW - BA|| / ||dW||.
Totals: counts per action, wall time, the process's peak RSS, LoRA error mean/max and the
updates a LoRA output had to drop. `num_languages` lets a later expansion find N.

Peak RSS is the process's own high-water mark (VmHWM in /proc/self/status on Linux): Linux's
getrusage ru_maxrss survives execve, so a `babelora merge` started by a large process (a
benchmark, a notebook) would otherwise report its parent's peak.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from babelora.config import to_dict
from babelora.merging.recipe import method_params

log = logging.getLogger(__name__)
REPORT_NAME = "merge_report.json"


def _vm_hwm_mb(status: str) -> float | None:
    """The VmHWM line of a /proc/<pid>/status text, in MiB (None when absent)."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                unit = fields[2].lower() if len(fields) > 2 else "kb"
                scale = {"kb": 1 / 1024, "mb": 1.0, "gb": 1024.0}.get(unit, 1 / 1024)
                return int(fields[1]) * scale
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: VmHWM where /proc exists (it starts afresh at
    execve, unlike ru_maxrss), else ru_maxrss (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            value = _vm_hwm_mb(f.read())
        if value is not None:
            return value
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024


def build_report(
    plan: Any,
    stats: dict[str, dict[str, Any]],
    side_files: list[str],
    seconds: float,
    target: Path,
    lora_dropped: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The report of an executed MergePlan (see the module docstring)."""
    r = plan.recipe
    report: dict[str, Any] = {
        "method": r.method,
        "params": to_dict(method_params(r.method, r.params)),
        "base": r.base if r.base is not None else plan.base.name,
        "inputs": [
            {"name": inp.label, "kind": inp.kind, "path": inp.source.name, "weight": spec.weight}
            for inp, spec in zip(plan.inputs, r.inputs)
        ],
        "num_languages": plan.num_languages,
        "expand": to_dict(r.expand) | {"existing_factor": plan.existing} if r.expand else None,
        "output": {"path": str(target), "kind": r.output.kind, "rank": r.output.rank},
        "side_files": side_files,
        "counts": dict(Counter(t.action for t in plan.tensors)),
        "seconds": round(seconds, 3),
        "max_rss_mb": round(peak_rss_mb(), 1),
        "tensors": stats,
    }
    if lora_dropped is not None:
        errors = [s["lora_error"] for s in stats.values() if "lora_error" in s]
        report["lora"] = {
            "rank": r.output.rank,
            "modules": len(errors),
            "mean_error": sum(errors) / len(errors) if errors else 0.0,
            "max_error": max(errors, default=0.0),
            "dropped_updates": lora_dropped,
        }
        if lora_dropped:
            log.warning(
                "lora output: %d merged updates are not LoRA targets and were dropped (%s, ...)",
                len(lora_dropped),
                next(iter(lora_dropped)),
            )
    return report


def set_config_dtype(config_path: Path, dtype: str | None) -> None:
    """Record a forced output dtype in the copied config.json (transformers reads `dtype`)."""
    if dtype is None or not config_path.is_file():
        return
    config = json.loads(config_path.read_text("utf-8"))
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = dtype
    config_path.write_text(json.dumps(config, indent=2) + "\n", "utf-8")
