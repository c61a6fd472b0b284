"""Worker processes that die with their parent.

A `ProcessPoolExecutor` worker whose parent is SIGKILLed does not notice: it finishes the clips
already queued to it and then waits on the queue forever, holding whatever the parent had open.
`worker_init` (the pool's initializer) ties the worker's life to the parent's: on Linux the
kernel sends it SIGKILL when the parent dies (`prctl(PR_SET_PDEATHSIG)`); elsewhere, and as a
second line on Linux, a daemon thread polls `os.getppid()` and exits once the worker has been
re-parented. It also closes the worker's copies of the parent's lock files.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

from babelora.data.corpus.lock import close_inherited_locks

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
POLL_SECONDS = 0.5


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send `sig` to this process when its parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process' own symbols: libc's prctl
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)  # re-parented: the parent is gone


def die_with_parent(parent: int | None, interval: float = POLL_SECONDS) -> None:
    """End this process when `parent` (the pid that started it; None: the current parent) dies.

    The death signal fires on the death of the parent *thread* that forked this process; pools
    fork from the main thread, so that is the parent process. A parent that died before this
    call is seen here (the worker has already been re-parented) and ends the worker at once.
    """
    if parent is None:
        parent = os.getppid()
    set_parent_death_signal()
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch, args=(parent, interval), daemon=True).start()


def worker_init(parent: int | None) -> None:
    """Initializer of the corpus' render workers (see the module docstring)."""
    close_inherited_locks()
    die_with_parent(parent)
