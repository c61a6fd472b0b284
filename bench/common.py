"""Helpers shared by the benchmark scripts: progress lines, JSON in and out, timing, requests.

The scripts import this module as `common` after putting their own folder first on `sys.path`,
so it is found both by `python bench/X.py` and by tests that load a script from its path.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO


def log(msg: str, file: TextIO | None = None) -> None:
    """One progress line stamped with the clock time, on stderr unless `file` is given."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=file or sys.stderr, flush=True)


def write_json(path: Path, data: Any, indent: int = 1) -> Path:
    """Write `data` as UTF-8 JSON with a final newline, creating the folder; returns `path`.

    Values JSON cannot hold (paths, dataclasses) are written as their `str`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=indent, ensure_ascii=False, default=str)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file (a training run's metrics.jsonl, hypotheses.jsonl)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


class Stopwatch:
    """Wall and CPU seconds (this process, all threads) spent inside a `with` block."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._start[0]
        self.cpu = time.process_time() - self._start[1]


def requests_of(utts: Iterable[Any]) -> list:
    """Decode requests for manifest utterances: id, audio, language, task, target language."""
    from babelora.decode.runner import Request

    return [Request(u.id, u.audio_filepath, u.lang, u.task, u.target_lang) for u in utts]


def reset_accelerate() -> None:
    """Forget Accelerate's process-wide state, so the next training run in this process builds
    its own Accelerator from scratch."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def first_per_group(items: Iterable[Any], n: int | None, key: Any = None) -> list:
    """The first `n` items of each (language, task) group, in input order (docs/benchmarks.md:
    the `--budget cpu` test sample; the corpus build already shuffled with its seed). `key`
    maps an item to its group (default: `.lang` and `.task` of an Utterance, or the dict
    keys); `n=None` keeps everything."""
    items = list(items)
    if n is None:
        return items

    def default(item: Any) -> tuple:
        if isinstance(item, dict):
            return item.get("lang"), item.get("task", "asr")
        return item.lang, item.task

    key = key or default
    seen: dict[Any, int] = {}
    out = []
    for item in items:
        group = key(item)
        if seen.get(group, 0) < n:
            seen[group] = seen.get(group, 0) + 1
            out.append(item)
    return out


def write_hypotheses(path: Path, rows: Iterable[dict]) -> Path:
    """Per-utterance hypotheses as gzip-compressed JSON lines (bench/results/<table>/...), which
    `babelora score --hyps ... --baseline ...` reads back to re-derive a table's cells."""
    import gzip

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=9) as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path
