"""Metric sinks for training: JSONL + TensorBoard + a tqdm bar, all on the main process only.

`metrics.jsonl` gets one JSON object per logged step (`{"step": 10, "train/loss": ...}`). On
resume, rows after the resumed step (written by the interrupted run for steps that will be
redone) are dropped first, and TensorBoard purges them too, so the logs read as one clean run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def trim_jsonl(path: Path, max_step: int) -> None:
    """Keep the rows of `path` with step <= max_step (atomic rewrite)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if isinstance(row, dict) and int(row.get("step", 0)) <= max_step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


class MetricLogger:
    """Writes metrics to JSONL and TensorBoard and drives the progress bar (main process only).

    Args:
        run_dir: the run folder (metrics.jsonl and tb/ are created there).
        enabled: False on non-main ranks (every method is then a no-op).
        start_step: the step training starts from (resume): later rows are dropped.
        total_steps: the bar's length.
        progress_bar: show a tqdm bar.
        tensorboard: write TensorBoard event files.
    """

    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool = True,
        start_step: int = 0,
        total_steps: int | None = None,
        progress_bar: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        self._bar = None
        if not enabled:
            return
        trim_jsonl(self.path, start_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the run
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step + 1)
        if progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, desc="train", dynamic_ncols=True
            )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One row of metrics at `step` (non-finite values are written as null)."""
        if not self.enabled:
            return
        row: dict[str, Any] = {"step": step}
        for key, value in metrics.items():
            value = float(value)
            row[key] = value if math.isfinite(value) else None
            if self._tb is not None and math.isfinite(value):
                self._tb.add_scalar(key, value, step)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._bar is not None and "train/loss" in metrics:
            self._bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", refresh=False)

    def advance(self, steps: int = 1) -> None:
        """Move the progress bar."""
        if self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()
