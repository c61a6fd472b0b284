"""Output plumbing: a streaming safetensors writer and an atomic output folder.

The writer knows every tensor's name, shape and dtype up front (they are the base's), so it
writes the header first and then each tensor's bytes as soon as it is merged: memory holds one
output tensor at a time, and the file is a standard safetensors file (8-byte little-endian header
size, JSON header with data_offsets, raw little-endian data) that `safe_open` and transformers'
`from_pretrained` read.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import shutil
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from babelora.errors import MergeError
from babelora.merging.sources import SAFETENSORS_DTYPES

log = logging.getLogger(__name__)
DTYPE_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}


class SafetensorsWriter:
    """Write tensors, in the declared order, into one .safetensors file without holding them."""

    def __init__(
        self,
        path: Path,
        entries: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        self._order: list[tuple[str, tuple[int, ...], torch.dtype]] = []
        for name, shape, dtype in entries:
            if dtype not in DTYPE_CODES:
                raise MergeError(f"{name}: dtype {dtype} cannot be written to safetensors")
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {
                "dtype": DTYPE_CODES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
            self._order.append((name, tuple(shape), dtype))
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)  # align the data section to 8 bytes
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._file.write(struct.pack("<Q", len(blob)))
        self._file.write(blob)
        self._next = 0

    def write(self, name: str, tensor: Tensor) -> None:
        expected, shape, dtype = self._order[self._next]
        if name != expected or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise MergeError(
                f"internal: writing {name} {tuple(tensor.shape)} {tensor.dtype}, header expects "
                f"{expected} {shape} {dtype}"
            )
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._file.write(data.numpy().data)
        self._next += 1

    def close(self) -> None:
        self._file.close()
        if self._next != len(self._order):
            missing = self._order[self._next][0]
            raise MergeError(f"internal: output closed before tensor {missing} was written")

    def abort(self) -> None:
        self._file.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def clean_stale(target: Path) -> None:
    """Tidy up after killed writers of `target` (their pid is in the sibling's name, and it is
    gone): delete their `.NAME.tmp-PID` folders (partial outputs) and `.NAME.old-PID` leftovers,
    or move an `.old` back into place when the kill came between the two renames below and
    `target` is missing."""
    for kind in ("old", "tmp"):
        for found in sorted(
            glob.glob(glob.escape(str(target.parent / f".{target.name}.{kind}-")) + "*")
        ):
            path, pid = Path(found), found.rsplit("-", 1)[-1]
            if not pid.isdigit() or _pid_alive(int(pid)):
                continue
            if kind == "old" and not target.exists():
                os.replace(path, target)
                log.warning(
                    "%s: restored the previous output a killed merge had moved aside", target
                )
            elif path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def check_output_clear(output: str | Path, reads: Mapping[str, str | None]) -> None:
    """MergeError when the output folder is, lies inside or contains a path the merge reads
    (`reads`: a description such as "input 'de'" -> its path; None or a name that is not a local
    path, e.g. a hub id, is skipped). Writing there, with output.overwrite, would replace or
    delete that input; without it, would write into it."""
    out = Path(os.path.realpath(Path(output).expanduser()))
    for what, path in reads.items():
        if not path or not Path(path).expanduser().exists():
            continue
        read = Path(os.path.realpath(Path(path).expanduser()))
        if read == out:
            where = f"is {what} ({path})"
        elif read in out.parents:
            where = f"lies inside {what} ({path})"
        elif out in read.parents:
            where = f"contains {what} ({path})"
        else:
            continue
        raise MergeError(
            f"output.path {str(output)!r} {where}: writing the output there would overwrite or "
            "delete what the merge reads; choose an output.path outside the base and every input"
        )


@contextmanager
def atomic_folder(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `target` via os.replace.

    On error the temporary folder is removed and `target` is untouched. A process killed while
    writing leaves its temporary folder behind; the next call removes it (`clean_stale`).
    """
    target = Path(target)
    if target.parent.is_dir():
        clean_stale(target)
    if target.exists() and not overwrite:
        raise MergeError(f"{target}: output exists; set output.overwrite: true to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None and old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        old.unlink()
