"""Checkpoints that never load wrong, full resume state, and the run folder's lock.

A checkpoint is a folder `checkpoints/step-00000120/` holding

    trainable.safetensors    the trainable weights, by parameter name
    optimizer.safetensors    optimizer tensors;  optimizer.json: the rest of its state
    scheduler.json           learning-rate scheduler state
    trainer_state.json       step, sampler position (epoch, batch), eval metrics
    rng-rank{r}.safetensors  torch (CPU, CUDA) RNG states of rank r; rng-rank{r}.json: python, numpy
    config.yaml              the resolved run config
    meta.json                written last: every file and its size

Atomicity: all files are written to `checkpoints/.tmp-step-.../`, fsynced, then the folder is
renamed to its final name in one `os.rename`; `meta.json` is checked on load. A crash at any
moment leaves either the complete new checkpoint or none (plus a temporary folder that is ignored
and removed on the next start). Deleted checkpoints are renamed away before removal for the same
reason. Nothing is unpickled: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from babelora.errors import ConfigError, ModelLoadError

CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8,})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


# -- JSON + safetensors encoding of nested state (optimizer, scheduler, RNG) ---------------------
def encode_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """Replace tensors in a nested structure by references into `tensors`; tag tuples and dicts
    so `decode_state` rebuilds the exact types (int dict keys, tuples) without pickle."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {
            "__dict__": [
                [encode_state(k, tensors), encode_state(v, tensors)] for k, v in obj.items()
            ]
        }
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [encode_state(v, tensors) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot save state of type {type(obj).__name__}")


def decode_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `encode_state`."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {decode_state(k, tensors): decode_state(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        raise ValueError(f"unknown state tag in {list(obj)[:3]}")
    return obj


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors file, fsynced."""
    from safetensors.torch import save

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _write_bytes(path, save(clean))


def save_json(path: Path, obj: Any) -> None:
    _write_bytes(path, json.dumps(obj, indent=1, allow_nan=True).encode("utf-8"))


def save_state(path_stem: Path, state: Any) -> None:
    """Nested state -> `<stem>.json` + `<stem>.safetensors`."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = encode_state(state, tensors)
    save_tensors(path_stem.with_suffix(".safetensors"), tensors)
    save_json(path_stem.with_suffix(".json"), skeleton)


def load_state(path_stem: Path) -> Any:
    from safetensors.torch import load_file

    tensors = load_file(str(path_stem.with_suffix(".safetensors")))
    skeleton = json.loads(path_stem.with_suffix(".json").read_text(encoding="utf-8"))
    return decode_state(skeleton, tensors)


# -- RNG ------------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """All RNG states that training consumes: python, numpy (legacy global), torch CPU and CUDA."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- writing, listing, loading --------------------------------------------------------------------
@dataclass
class Checkpoint:
    """What `load_checkpoint` returns."""

    path: Path
    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    trainer_state: dict[str, Any]
    rng: dict[str, Any] | None  # this rank's RNG states (None when that rank saved none)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_dir(root: Path, step: int) -> Path:
    return root / f".tmp-{checkpoint_name(step)}"


def begin_checkpoint(root: Path, step: int) -> Path:
    """(main rank) A fresh, empty temporary folder for the checkpoint of `step`."""
    tmp = tmp_dir(root, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_rank_state(tmp: Path, rank: int, rng: dict[str, Any]) -> None:
    """(every rank) This rank's RNG states."""
    save_state(tmp / f"rng-rank{rank}", rng)


def write_main_state(
    tmp: Path,
    trainable: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    trainer_state: dict[str, Any],
    config_yaml: str,
) -> None:
    """(main rank) Weights, optimizer, scheduler, trainer state and config."""
    save_tensors(tmp / "trainable.safetensors", trainable)
    save_state(tmp / "optimizer", optimizer)
    save_state(tmp / "scheduler", scheduler)
    save_json(tmp / "trainer_state.json", trainer_state)
    _write_bytes(tmp / "config.yaml", config_yaml.encode("utf-8"))


def commit_checkpoint(tmp: Path, step: int) -> Path:
    """(main rank) Seal `tmp` with meta.json and rename it to its final name, atomically."""
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    save_json(tmp / "meta.json", {"step": step, "files": files, "time": time.time()})
    _fsync_dir(tmp)
    final = tmp.parent / checkpoint_name(step)
    if final.exists():  # re-saving a step (e.g. the final save after a resume at that step)
        remove_checkpoint(final)
    os.rename(tmp, final)
    _fsync_dir(tmp.parent)
    return final


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    trainable: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    trainer_state: dict[str, Any],
    config_yaml: str,
    rank: int = 0,
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Write a checkpoint atomically; with several ranks every rank calls this (collective).

    Non-main ranks only write their RNG states; `barrier` synchronises the ranks (a shared file
    system is assumed, as for Accelerate's own checkpoints).
    """
    root = Path(root)
    tmp = tmp_dir(root, step)
    if is_main:
        begin_checkpoint(root, step)
    barrier()
    write_rank_state(tmp, rank, capture_rng())
    if is_main:
        write_main_state(tmp, trainable, optimizer, scheduler, trainer_state, config_yaml)
    barrier()
    final = root / checkpoint_name(step)
    if is_main:
        final = commit_checkpoint(tmp, step)
    barrier()
    return final


def verify_checkpoint(path: Path) -> bool:
    """True when `path` is a sealed checkpoint whose files all have their recorded sizes."""
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        return all((path / name).stat().st_size == size for name, size in meta["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Sealed checkpoints under `root`, oldest first (temporary and damaged folders skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and verify_checkpoint(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def load_checkpoint(path: str | Path, rank: int = 0) -> Checkpoint:
    """Load a sealed checkpoint (ModelLoadError when it is not one)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not verify_checkpoint(path):
        raise ModelLoadError(f"{path}: not a complete babelora checkpoint (meta.json check failed)")
    try:
        trainable = load_file(str(path / "trainable.safetensors"))
        optimizer = load_state(path / "optimizer")
        scheduler = load_state(path / "scheduler")
        trainer_state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        rng_stem = path / f"rng-rank{rank}"
        rng = load_state(rng_stem) if rng_stem.with_suffix(".json").is_file() else None
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise ModelLoadError(f"{path}: cannot read checkpoint ({err})") from None
    return Checkpoint(
        path, int(trainer_state["step"]), trainable, optimizer, scheduler, trainer_state, rng
    )


def remove_checkpoint(path: Path) -> None:
    """Rename away first, so a crash mid-removal never leaves a damaged checkpoint in place."""
    trash = path.parent / f".trash-{path.name}-{os.getpid()}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def clean_temporary(root: str | Path) -> None:
    """Remove leftovers of interrupted writes and removals."""
    root = Path(root)
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(path, ignore_errors=True)


def prune_checkpoints(
    root: str | Path, keep_last: int, keep_best: int, metric: str, mode: str
) -> list[Path]:
    """Delete all but the newest `keep_last` and the best `keep_best` checkpoints; returns kept."""
    found = list_checkpoints(root)
    keep = {p for _, p in found[-keep_last:]}
    if keep_best > 0:
        scored = []
        for step, p in found:
            state = json.loads((p / "trainer_state.json").read_text(encoding="utf-8"))
            value = state.get("eval_metrics", {}).get(metric)
            if value is not None and state.get("eval_step") == step:
                scored.append((value if mode == "min" else -value, step, p))
        keep |= {p for _, _, p in sorted(scored)[:keep_best]}
    for _, p in found:
        if p not in keep:
            remove_checkpoint(p)
    return sorted(keep)


def best_checkpoint(root: str | Path, metric: str, mode: str) -> Path | None:
    """The kept checkpoint with the best evaluated `metric` (None when none was evaluated)."""
    best = None
    for step, p in list_checkpoints(root):
        state = json.loads((p / "trainer_state.json").read_text(encoding="utf-8"))
        value = state.get("eval_metrics", {}).get(metric)
        if value is None or state.get("eval_step") != step:
            continue
        score = value if mode == "min" else -value
        if best is None or score < best[0]:
            best = (score, p)
    return best[1] if best else None


# -- the run folder's lock ------------------------------------------------------------------------
class RunLock:
    """An exclusive lock on a run folder (`train.lock`), so two runs never write the same folder.

    Uses `fcntl.flock`, which the kernel releases when the process dies (even by SIGKILL), so a
    crashed run never leaves a stale lock behind; `filelock` is the fallback where there is no
    fcntl. Network file systems may not honour flock.
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / "train.lock"
        self._fd: int | None = None
        self._fallback: Any = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on Linux/macOS
            return self._acquire_fallback()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
            os.close(fd)
            raise ConfigError(
                f"output_dir {str(self.path.parent)!r} is in use by another training run "
                f"({holder or 'unknown process'}; lock file {self.path}); wait for it to finish "
                "or choose another output_dir"
            ) from None
        os.ftruncate(fd, 0)
        info = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%F %T')}"
        os.write(fd, info.encode("utf-8"))
        self._fd = fd
        return self

    def _acquire_fallback(self) -> RunLock:  # pragma: no cover
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise ConfigError(
                f"output_dir {str(self.path.parent)!r} is in use by another training run "
                f"(lock file {self.path})"
            ) from None
        self._fallback = lock
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._fallback is not None:  # pragma: no cover
            self._fallback.release()
            self._fallback = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
