"""The corpus build's worker processes die with a killed parent (Linux death signal, and the
getppid watchdog alone), and its lock never outlives the build."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from babelora.data.corpus import CorpusConfig, build_corpus, lifeline, render
from babelora.data.corpus.lock import LOCK_NAME, build_lock
from babelora.data.corpus.render import ClipJob
from babelora.errors import ConfigError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork, /proc")
psutil = pytest.importorskip("psutil")


def _hang(job: ClipJob, root: str, *rest: object) -> None:
    """A clip that takes forever: announces its worker's pid, then sleeps."""
    (Path(root) / f"{os.getpid()}.pid").touch()
    time.sleep(120)


def _build_with_hanging_workers(root: str, watchdog_only: bool, lock: bool) -> None:
    """The middle process: holds the lock (optionally) and renders with 2 hanging workers."""
    render.render = _hang  # inherited by the forked workers
    if watchdog_only:
        lifeline.set_parent_death_signal = lambda *a: False
    jobs = [ClipJob(f"a{i}.wav") for i in range(16)]  # two chunks of 8: one per worker
    if lock:
        with build_lock(root):
            render.render_all(jobs, root, workers=2)
    else:
        render.render_all(jobs, root, workers=2)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextmanager
def _middle(tmp_path: Path, watchdog_only: bool = False, lock: bool = False):
    """Start the middle process; yield it and its 2 workers' pids once both hang in a clip.
    Kills whatever is left of them afterwards."""
    middle = multiprocessing.get_context("fork").Process(
        target=_build_with_hanging_workers, args=(str(tmp_path), watchdog_only, lock)
    )
    middle.start()
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        workers = [c.pid for c in psutil.Process(middle.pid).children()]
        assert sorted(workers) == sorted(int(p.stem) for p in tmp_path.glob("*.pid"))
        yield middle, workers
    finally:
        if middle.is_alive():
            middle.kill()
        middle.join()
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _alive_after(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(map(_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _running(p)]


@pytest.mark.parametrize("watchdog_only", [False, True], ids=["death-signal", "watchdog"])
def test_render_workers_die_with_their_killed_parent(tmp_path, watchdog_only):
    with _middle(tmp_path, watchdog_only) as (middle, workers):
        os.kill(middle.pid, signal.SIGKILL)
        middle.join()
        assert _alive_after(workers, 5.0) == []


def test_lock_is_free_once_the_build_is_dead_even_if_a_worker_lives(tmp_path, monkeypatch):
    """Workers share the parent's lock file (fork); they close their copy, so a worker that
    somehow outlived the parent does not keep the next build out."""
    monkeypatch.setattr(lifeline, "die_with_parent", lambda parent: None)  # workers outlive it
    with _middle(tmp_path, lock=True) as (middle, workers):
        busy = pytest.raises(ConfigError, match=f"another process \\(pid {middle.pid} ")
        with busy, build_lock(tmp_path):
            pass
        os.kill(middle.pid, signal.SIGKILL)
        middle.join()
        assert all(map(_running, workers))  # the workers live on here (no lifeline)
        with build_lock(tmp_path) as path:  # and yet the lock is free
            assert path == tmp_path / LOCK_NAME
            assert f"pid {os.getpid()} " in path.read_text()


def test_worker_of_an_already_dead_parent_exits_at_once():
    """The parent died before the initializer ran: the worker is already re-parented."""
    proc = multiprocessing.get_context("fork").Process(
        target=lifeline.die_with_parent, args=(os.getpid() + 10**6,)
    )
    proc.start()
    proc.join(10)
    assert proc.exitcode == 1


def test_second_build_of_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "corpus"
    busy = pytest.raises(ConfigError, match="being built by another process.*--out")
    with build_lock(out), busy:
        build_corpus(CorpusConfig(langs=("de",)), out, jobs=1)
    assert not (out / "audio").exists()  # refused before anything was written
