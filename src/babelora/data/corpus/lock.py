"""The corpus folder's build lock, so two builds never write (and tidy) the same folder.

`fcntl.flock` on `<out>/.build.lock`: the kernel drops the lock when its holder dies, even by
SIGKILL, so a lock of a dead build never blocks the next run. The lock belongs to the open file,
which forked worker processes share; workers call `close_inherited_locks` first, so the lock is
free as soon as the parent is gone, even if a worker still were. `filelock` is the fallback where
there is no fcntl. The file itself stays (it names the last holder) and is never deleted: a file
deleted while another process waits on it would let two builds in.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from babelora.errors import ConfigError

LOCK_NAME = ".build.lock"
_HELD: set[int] = set()
"""File descriptors of the locks this process holds (closed in forked workers)."""


def _busy(out: Path, holder: str) -> ConfigError:
    return ConfigError(
        f"corpus folder {str(out)!r} is being built by another process "
        f"({holder or 'unknown process'}; lock file {out / LOCK_NAME}); wait for it to finish "
        "or choose another --out"
    )


@contextmanager
def build_lock(out: str | Path) -> Iterator[Path]:
    """Hold the exclusive lock of corpus folder `out` (created if needed) for the block;
    ConfigError naming the holder when another live build has it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        with _fallback_lock(out):
            yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
        os.close(fd)
        raise _busy(out, holder) from None
    os.ftruncate(fd, 0)
    info = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%F %T')}"
    os.write(fd, info.encode("utf-8"))
    _HELD.add(fd)
    try:
        yield path
    finally:
        _HELD.discard(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def _fallback_lock(out: Path) -> Iterator[None]:  # pragma: no cover - platforms without fcntl
    from filelock import FileLock, Timeout

    lock: Any = FileLock(str(out / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise _busy(out, "") from None
    try:
        yield
    finally:
        lock.release()


def close_inherited_locks() -> None:
    """In a forked worker: close the copies of the parent's lock files, so the lock's life is
    the parent's alone (closing a copy does not unlock it for the parent)."""
    for fd in list(_HELD):
        with suppress(OSError):
            os.close(fd)
        _HELD.discard(fd)
