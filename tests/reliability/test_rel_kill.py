"""Issue 8, point 1: `corpus build` and `merge` SIGKILLed at seeded random points, several times
per run, then re-run: nothing truncated or duplicated, outputs written atomically, and the end
state byte-identical to an uninterrupted run. Training (kill during a checkpoint write, bitwise
resume, every checkpoint loadable) is covered by tests/train/test_kill_resume.py."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rel_harness import after_time, kill_and_rerun, when
from rel_scenarios import corpus_parent_kill_scenario, corpus_scenario, merge_scenario

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")


SEED = int(os.environ.get("BABELORA_KILL_SEED", "0"))  # trigger choices; timing adds noise

SCRIPT = """
import pathlib, subprocess, sys, time
root = pathlib.Path(sys.argv[1])
runs = len(list(root.glob("run-*")))
(root / f"run-{runs}").touch()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
(root / f"child-{runs}").write_text(str(child.pid))
(root / "started").touch()
if runs < 2:
    time.sleep(60)  # only a kill ends the first two runs
child.kill()
"""


def test_harness_kills_the_process_group_and_records_attempts(tmp_path):
    """The harness itself: kills when the trigger fires (the whole process group, so worker
    processes die too), then re-runs to completion; the same seed draws the same kill points."""
    started = tmp_path / "started"

    def fired() -> str | None:
        if started.exists():
            started.unlink()
            return "after start"
        return None

    cmd = [sys.executable, "-c", SCRIPT, str(tmp_path)]
    run = kill_and_rerun(cmd, [("started", when(fired))], kills=2, seed=1)
    assert run.kills == 2 and [a.landed for a in run.attempts] == ["after start"] * 2
    assert run.final.returncode == 0 and len(list(tmp_path.glob("run-*"))) == 3
    time.sleep(0.2)
    for i in range(2):  # each killed run's child was killed with its group
        stat = Path(f"/proc/{(tmp_path / f'child-{i}').read_text()}/stat")
        assert not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z"  # zombie
    draws = [after_time(0, 1)(random.Random(3)) for _ in range(2)]
    assert [t(0.5) is None for t in draws] == [draws[0](0.5) is None] * 2  # same seed, same point


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_corpus_build_survives_kills(tmp_path):
    summary = corpus_scenario(tmp_path, kills=4, seed=SEED)
    print(summary["attempts"])
    assert summary["kills"] == 4


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_corpus_build_workers_die_with_a_killed_parent(tmp_path):
    """`kill -9` of the build's own process (not its group): its render workers die with it
    instead of rendering on, the next build is not locked out, and it counts right (the fast
    unit tests of the same are tests/data/test_corpus_lifeline.py)."""
    summary = corpus_parent_kill_scenario(tmp_path, kills=2, seed=SEED)
    print(summary["attempts"])
    assert summary["kills"] == 2


def test_parent_only_kill_reports_surviving_descendants(tmp_path):
    """The harness' parent-only kill: a child that ignores its parent's death is reported as a
    survivor (and then killed by the harness)."""
    from rel_harness import run_once

    started = tmp_path / "started"
    script = SCRIPT.replace("runs < 2", "True")
    attempt = run_once(
        [sys.executable, "-c", script, str(tmp_path)],
        when(lambda: "after start" if started.exists() else None)(random.Random(0)),
        kill="parent",
        grace=0.5,
    )
    child = (tmp_path / "child-0").read_text()
    assert attempt.killed and [s.split()[0] for s in attempt.survivors] == [child]
    time.sleep(0.2)
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z"


@pytest.mark.slow
def test_merge_output_is_atomic_under_kills(tmp_path):
    summary = merge_scenario(tmp_path, kills=3, seed=SEED)
    print(summary["attempts"])
    assert summary["kills"] == 6


def test_next_merge_tidies_what_a_killed_merge_left(tmp_path):
    """A killed writer's temporary folder (partial output) is removed by the next merge into the
    same target, and an output moved aside by a writer killed between its two renames is put
    back; folders of a live writer are left alone."""
    from babelora.merging.io import atomic_folder, clean_stale

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    (tmp_path / f".out.tmp-{dead.pid}").mkdir()
    (tmp_path / f".out.tmp-{dead.pid}" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / f".out.old-{dead.pid}").mkdir()
    (tmp_path / f".out.old-{dead.pid}" / "model.safetensors").write_bytes(b"previous")
    live = tmp_path / f".out.tmp-{os.getppid()}"
    live.mkdir()
    clean_stale(out)
    assert (out / "model.safetensors").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name])
    live.rmdir()
    (tmp_path / f".out.tmp-{dead.pid}").mkdir()
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "model.safetensors").write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
