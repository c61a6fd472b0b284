"""Crash-safe cache entries: tensors in one safetensors file, written atomically, verified on read.

An entry is written to a temporary name in its folder, fsynced, renamed into place and the
folder fsynced, so a crash (SIGKILL, power loss) leaves either the old state or the whole new
entry, never a half-written one under the real name. Its safetensors metadata records what the
entry is (`meta`, compared on read) and, per tensor, the byte count and CRC-32 of its data, so a
truncated or bit-flipped entry is detected: `read_entry` then deletes it and returns None, and
the caller recomputes it. A damaged entry is never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import zlib
from pathlib import Path

import torch

log = logging.getLogger("babelora.train")

FORMAT = "babelora-cache-1"


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()


def _checksums(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    out = {}
    for name, t in tensors.items():
        data = _tensor_bytes(t)
        out[f"crc32:{name}"] = f"{zlib.crc32(data):08x}"
        out[f"bytes:{name}"] = str(len(data))
    return out


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_entry(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Write `tensors` with `meta` to `path` atomically (temp name, fsync, rename, fsync dir)."""
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, **meta, **_checksums(tensors)}
    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _header(blob: bytes) -> dict:
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise ValueError("header longer than the file")
    return json.loads(blob[8 : 8 + n])


def _problem(blob: bytes, meta: dict[str, str]) -> tuple[str | None, dict[str, torch.Tensor]]:
    """(what is wrong with the entry or None, its tensors)."""
    from safetensors.torch import load

    if len(blob) < 8:
        return "shorter than a header", {}
    try:
        header = _header(blob)
        stored = header.get("__metadata__") or {}
        data_end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
        )
        (n,) = struct.unpack("<Q", blob[:8])
        if len(blob) != 8 + n + data_end:
            return f"size {len(blob)} bytes, expected {8 + n + data_end} (truncated?)", {}
        tensors = load(blob)
    except (ValueError, KeyError, TypeError, struct.error, RuntimeError) as err:
        return f"unreadable ({str(err).splitlines()[0][:120]})", {}
    if stored.get("format") != FORMAT:
        return f"format {stored.get('format')!r}", {}
    for key, want in meta.items():
        if stored.get(key) != want:
            return f"{key} is {stored.get(key)!r}, expected {want!r}", {}
    sums = _checksums(tensors)
    expected = {k: v for k, v in stored.items() if k.startswith(("crc32:", "bytes:"))}
    if sums != expected:
        return "checksum mismatch (damaged data)", {}
    return None, tensors


def read_entry(path: Path, meta: dict[str, str]) -> dict[str, torch.Tensor] | None:
    """The tensors of the entry at `path`, or None when it is missing; a damaged entry or one
    whose metadata differs from `meta` is logged, deleted and reported as missing."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    problem, tensors = _problem(blob, meta)
    if problem is None:
        return tensors
    log.warning("cache entry %s is damaged or stale (%s): rebuilding it", path, problem)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return None


def file_digest(path: str | os.PathLike) -> str:
    """BLAKE2b-128 of a file's bytes (hex): the content key of an audio file."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temporaries(root: Path) -> int:
    """Remove temporary files that killed writers left under `root` (those of live processes,
    e.g. another run sharing the cache, are kept); returns how many were removed."""
    n = 0
    if not root.is_dir():
        return 0
    for tmp in root.rglob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and _alive(int(pid)):
            continue
        try:
            tmp.unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n
