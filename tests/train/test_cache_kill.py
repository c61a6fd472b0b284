"""SIGKILL during an encoder-cache write (issue 14 item 1): the re-run finds no partial entry,
rebuilds what is missing, and ends with the same cache and bitwise the same weights as an
uninterrupted run. The kill lands deterministically: the child kills itself right after the
N-th entry's temporary file is written and fsynced, before its rename."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference.corpus import config_yaml

from babelora.train import checkpoint as ckpt

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SCRIPT = """
import os, signal, sys
from babelora.train import cache_store

kill_at, count = int(sys.argv[2]), [0]

class KillingOs:
    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, src, dst):
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is written, not renamed
        os.replace(src, dst)

cache_store.os = KillingOs()
from babelora.cli.main import main
sys.exit(main(["train", sys.argv[1]]))
"""


def run(cfg: Path, kill_at: int = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", SCRIPT, str(cfg), str(kill_at)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def entries(root: Path) -> dict[str, tuple]:
    from safetensors import safe_open

    out = {}
    for path in sorted(root.rglob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            out[path.name] = (f.metadata(), {k: f.get_tensor(k).tolist() for k in f.keys()})  # noqa: SIM118
    return out


@pytest.mark.slow
def test_sigkill_during_cache_write_then_rerun(tmp_path):
    extra = {
        "recipe.params": {"rank": 4, "parts": ["decoder"]},
        "encoder_cache": "on",
        "max_steps": 3,
        "data.min_input_seconds": 2.5,
    }
    ref_cfg = config_yaml(tmp_path, tmp_path / "ref", cache_dir=str(tmp_path / "c-ref"), **extra)
    cfg = config_yaml(tmp_path, tmp_path / "killed", cache_dir=str(tmp_path / "c"), **extra)
    ref = run(ref_cfg)
    assert ref.returncode == 0, ref.stderr[-2000:]

    for kill_at in (4, 2):  # twice: the second run reuses what the first one sealed
        killed = run(cfg, kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        temporaries = list((tmp_path / "c").rglob(".*.tmp"))
        assert temporaries  # the kill left a written, unrenamed entry behind
        for name, (meta, _) in entries(tmp_path / "c").items():
            assert meta["audio"] in name  # only whole entries under real names
    done = run(cfg)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list((tmp_path / "c").rglob(".*.tmp"))  # the killed writers' files are gone
    assert entries(tmp_path / "c") == entries(tmp_path / "c-ref")

    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "ref" / ckpt.CKPT_DIR))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "killed" / ckpt.CKPT_DIR))
    assert a.trainable.keys() == b.trainable.keys()
    for name in a.trainable:
        assert torch.equal(a.trainable[name], b.trainable[name]), name
