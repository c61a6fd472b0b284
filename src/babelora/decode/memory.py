"""Devices and memory for decoding: refuse a device that is not there, survive one OOM.

`check_device("cuda")` on a machine without a GPU raises a one-line BabeloraError instead of
torch's assertion deep inside `model.to`. `split_on_oom(fn, items)` runs a batch; when the
accelerator runs out of memory it frees the cache, splits the batch in two and runs each half
once more; a half that still does not fit raises a clear error naming the batch size. Every
item is decoded or the whole call fails: none is silently lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from babelora.errors import BabeloraError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class DeviceError(BabeloraError, RuntimeError):
    """The requested device is missing, or a batch does not fit in its memory."""


def check_device(name: str | torch.device) -> torch.device:
    """`name` as a torch.device, or a one-line DeviceError when it does not exist here."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"--device {name}: not a device name ({err})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {name}: no CUDA GPU is available here (torch {torch.__version__}, "
                f"CUDA build: {torch.version.cuda or 'none'}); use --device cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"--device {name}: only {count} CUDA device(s) here")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {name}: MPS is not available here; use --device cpu")
    return device


def is_oom(err: BaseException) -> bool:
    """Whether `err` is an accelerator out-of-memory error."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _free() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def split_on_oom(fn: Callable[[Sequence[T]], list[R]], items: Sequence[T]) -> list[R]:
    """fn(items), or on out-of-memory fn on each half (once); results in item order."""
    try:
        return fn(items)
    except Exception as err:
        if not is_oom(err):
            raise
    _free()
    if len(items) < 2:
        raise DeviceError(
            "out of memory decoding a batch of 1 item: reduce --batch-seconds or "
            "--max-new-tokens, or use a smaller model or dtype"
        ) from None
    half = len(items) // 2
    log.warning(
        "out of memory on a batch of %d; retrying as %d + %d", len(items), half, len(items) - half
    )
    out: list[R] = []
    for part in (items[:half], items[half:]):
        try:
            out.extend(fn(part))
        except Exception as err:
            if not is_oom(err):
                raise
            _free()
            raise DeviceError(
                f"out of memory decoding a batch of {len(items)} items, and again on half of "
                f"it ({len(part)} items): lower --batch-seconds so batches fit in the "
                "device's memory"
            ) from None
    return out
