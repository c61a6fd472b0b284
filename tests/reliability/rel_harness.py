"""Kill harness: run a babelora CLI command in a subprocess, SIGKILL it at seeded random points
(several times), re-run it, and let the caller check the state on disk after every kill.

    run = kill_and_rerun(babelora_cmd("corpus", "build", ...), triggers, kills=4, seed=0,
                         check=assert_consistent)
    assert run.kills == 4 and run.final.returncode == 0

A trigger is polled every few milliseconds while the command runs and returns a description
of where the kill lands once it is time to kill (None: not yet). `after_time`, `when` and
`after` build the usual ones: a random moment, a condition on the files the command writes
(e.g. "a temporary output file is half written"), or a condition plus a random delay. The
command runs in its own session and the whole process group is killed, as a crash or the OOM
killer would leave it (worker processes included); with `kill="parent"` only the command's own
process is killed (as `kill -9 PID` would), and the attempt records which of its descendants
(taken from psutil just before the kill) were still alive `grace` seconds later, then kills
those. Training is covered by tests/train/test_kill_resume.py; the corpus and merge scenarios
live in rel_scenarios.py.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
Trigger = Callable[[float], "str | None"]
"""Called with the seconds since the command started; returns where the kill lands, or None."""
TriggerFactory = Callable[[random.Random], Trigger]
"""Builds one attempt's trigger (its random choices drawn from the harness' seeded RNG)."""


def babelora_cmd(*args: object) -> list[str]:
    """`babelora ARGS...` as this interpreter runs it."""
    return [sys.executable, "-m", "babelora.cli.main", *(str(a) for a in args)]


@dataclass
class Attempt:
    """One run of the command: killed (where and when) or finished on its own."""

    trigger: str  # the trigger factory's name
    landed: str  # where the kill landed, or "finished (exit N)"
    seconds: float  # since the start, when it was killed or ended
    killed: bool
    returncode: int | None  # None when killed
    descendants: list[str] = field(default_factory=list)  # "PID NAME" of each, at the kill
    survivors: list[str] = field(default_factory=list)  # those alive `grace` s after a parent kill


@dataclass
class KillRun:
    """Every attempt and the final, uninterrupted run."""

    attempts: list[Attempt]
    final: subprocess.CompletedProcess

    @property
    def kills(self) -> int:
        return sum(a.killed for a in self.attempts)

    def describe(self) -> str:
        return "; ".join(f"{a.trigger}: {a.landed} at {a.seconds:.2f} s" for a in self.attempts)


def after_time(low: float, high: float) -> TriggerFactory:
    """Kill at a moment drawn uniformly from [low, high] seconds after the start."""

    def factory(rng: random.Random) -> Trigger:
        at = rng.uniform(low, high)
        return lambda t: f"at a random moment ({at:.2f} s)" if t >= at else None

    return factory


def when(condition: Callable[[], str | None], delay: tuple[float, float] = (0.0, 0.0)):
    """Kill once `condition()` returns a description, after a random delay in `delay` s."""

    def factory(rng: random.Random) -> Trigger:
        wait = rng.uniform(*delay)
        seen: list[tuple[float, str]] = []

        def trigger(t: float) -> str | None:
            if not seen:
                what = condition()
                if what is None:
                    return None
                seen.append((t, what))
            start, what = seen[0]
            if t - start < wait:
                return None
            return what if wait == 0 else f"{what}, +{wait:.2f} s"

        return trigger

    return factory


def after(make_condition: Callable[[random.Random], Callable[[], str | None]], delay=(0.0, 0.0)):
    """Like `when`, with a condition built per attempt (e.g. 'n more files exist', n random)."""

    def factory(rng: random.Random) -> Trigger:
        return when(make_condition(rng), delay)(rng)

    return factory


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # own session: pgid == pid; workers die too


def _running(p) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for its new parent to reap it)."""
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_parent(proc: subprocess.Popen, grace: float) -> tuple[list[str], list[str]]:
    """SIGKILL `proc` alone; its descendants at the kill, and those alive `grace` s later (then
    killed here, so a failing check leaves no stray processes)."""
    import psutil

    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    names = {}
    for kid in kids:
        try:
            names[kid.pid] = f"{kid.pid} {kid.name()}"
        except psutil.NoSuchProcess:
            names[kid.pid] = f"{kid.pid} (gone)"
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + grace
    alive = [k for k in kids if _running(k)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [k for k in alive if _running(k)]
    for kid in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            kid.kill()
    return [names[k.pid] for k in kids], [names[k.pid] for k in alive]


def run_once(
    cmd: Sequence[str],
    trigger: Trigger,
    name: str = "",
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 300.0,
    poll: float = 0.002,
    kill: Literal["group", "parent"] = "group",
    grace: float = 5.0,
) -> Attempt:
    """Run `cmd` until `trigger` fires (SIGKILL to its process group, or to its own process
    with `kill="parent"`) or it ends by itself."""
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd),
            env=env or ENV,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while True:
                elapsed = time.perf_counter() - start
                code = proc.poll()
                if code is not None:
                    if code != 0:
                        log.seek(0)
                        tail = log.read().decode("utf-8", "replace")[-3000:]
                        raise AssertionError(f"{' '.join(cmd)} failed with exit {code}:\n{tail}")
                    return Attempt(name, f"finished (exit {code})", elapsed, False, code)
                landed = trigger(elapsed)
                if landed is not None and kill == "parent":
                    kids, survivors = _kill_parent(proc, grace)
                    return Attempt(name, landed, elapsed, True, None, kids, survivors)
                if landed is not None:
                    _kill_group(proc)
                    proc.wait()
                    return Attempt(name, landed, elapsed, True, None)
                if elapsed > timeout:
                    raise AssertionError(f"{' '.join(cmd)}: no kill and no exit in {timeout} s")
                time.sleep(poll)
        finally:
            if proc.poll() is None:
                _kill_group(proc)
                proc.wait()


def kill_and_rerun(
    cmd: Sequence[str],
    triggers: Sequence[tuple[str, TriggerFactory]],
    kills: int,
    seed: int,
    check: Callable[[Attempt], None] | None = None,
    max_attempts: int | None = None,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 300.0,
    shuffle: bool = True,
    kill: Literal["group", "parent"] = "group",
) -> KillRun:
    """Run `cmd` repeatedly, each run killed by the next of `triggers` (rounds in a seeded
    shuffled order, or as given with `shuffle=False`) until `kills` runs were killed (at most
    `max_attempts` runs, default 3 x kills); `check` sees the state after each run. Then run it
    once more, uninterrupted, and return everything. `kill`: see `run_once`."""
    rng = random.Random(seed)
    attempts: list[Attempt] = []
    limit = max_attempts or 3 * kills
    order: list[tuple[str, TriggerFactory]] = []
    while sum(a.killed for a in attempts) < kills and len(attempts) < limit:
        if not order:  # every trigger once per round
            order = list(triggers)
            if shuffle:
                rng.shuffle(order)
        name, factory = order.pop(0)
        attempt = run_once(cmd, factory(rng), name, env, cwd, timeout, kill=kill)
        attempts.append(attempt)
        if check is not None:
            check(attempt)
    final = subprocess.run(
        list(cmd), env=env or ENV, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    return KillRun(attempts, final)
