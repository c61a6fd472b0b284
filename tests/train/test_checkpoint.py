"""Checkpoints: exact state round trip without pickle, atomic writes, pruning, the run lock."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from babelora.errors import ConfigError, ModelLoadError
from babelora.train import checkpoint as ckpt


def optimizer_state() -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return opt.state_dict()


def save(root, step, value=1.0, metrics=None):
    return ckpt.save_checkpoint(
        root,
        step,
        trainable={"w": torch.full((2, 2), value)},
        optimizer=optimizer_state(),
        scheduler={"last_epoch": step, "_last_lr": [0.1]},
        trainer_state={
            "step": step,
            "epoch": 0,
            "position": step,
            "eval_metrics": metrics or {},
            "eval_step": step if metrics else -1,
        },
        config_yaml="seed: 0\n",
    )


def test_state_round_trip_exact(tmp_path):
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
        "param_groups": [
            {"lr": 0.1 + 1e-17, "betas": (0.9, 0.999), "params": [0], "foreach": None}
        ],
        "nested": [1, "a", 2.5, float("inf"), np.arange(3, dtype=np.uint32)],
    }
    ckpt.save_state(tmp_path / "s", state)
    back = ckpt.load_state(tmp_path / "s")
    assert back["state"][0]["step"].item() == 3.0 and torch.equal(
        back["state"][0]["exp_avg"], state["state"][0]["exp_avg"]
    )
    assert back["param_groups"] == state["param_groups"]
    assert isinstance(back["param_groups"][0]["betas"], tuple)
    assert back["nested"][:4] == state["nested"][:4]
    assert back["nested"][4].dtype == np.uint32
    # only safetensors and JSON on disk: nothing that unpickles
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.safetensors"]


def test_rng_round_trip(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    ckpt.save_state(tmp_path / "rng", ckpt.capture_rng())
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    ckpt.restore_rng(ckpt.load_state(tmp_path / "rng"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_save_load(tmp_path):
    path = save(tmp_path, 5, value=2.0)
    assert path.name == "step-00000005"
    loaded = ckpt.load_checkpoint(path)
    assert loaded.step == 5 and torch.equal(loaded.trainable["w"], torch.full((2, 2), 2.0))
    assert loaded.rng is not None and loaded.scheduler["last_epoch"] == 5
    assert (path / "config.yaml").read_text() == "seed: 0\n"


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    save(tmp_path, 1, value=1.0)

    real = ckpt.save_state

    def crash_after_weights(stem, state):  # the weights are on disk, then the "power fails"
        if stem.name == "optimizer":
            raise OSError("simulated crash")
        real(stem, state)

    monkeypatch.setattr(ckpt, "save_state", crash_after_weights)
    with pytest.raises(OSError, match="simulated crash"):
        save(tmp_path, 2, value=2.0)
    monkeypatch.undo()
    assert (tmp_path / ".tmp-step-00000002" / "trainable.safetensors").is_file()
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step-00000001"
    assert torch.equal(ckpt.load_checkpoint(latest).trainable["w"], torch.ones(2, 2))
    ckpt.clean_temporary(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]


def test_damaged_checkpoint_is_skipped_and_refused(tmp_path):
    save(tmp_path, 1)
    bad = save(tmp_path, 2)
    with open(bad / "trainable.safetensors", "r+b") as f:
        f.truncate(10)
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000001"
    with pytest.raises(ModelLoadError, match="not a complete babelora checkpoint"):
        ckpt.load_checkpoint(bad)


def test_prune_keep_last_and_best(tmp_path):
    for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 5.0), (5, 4.0)]:
        save(tmp_path, step, metrics={"dev_loss": loss})
    kept = ckpt.prune_checkpoints(tmp_path, keep_last=2, keep_best=1, metric="dev_loss", mode="min")
    assert [p.name for p in kept] == ["step-00000002", "step-00000004", "step-00000005"]
    assert ckpt.best_checkpoint(tmp_path, "dev_loss", "min").name == "step-00000002"
    kept = ckpt.prune_checkpoints(tmp_path, keep_last=1, keep_best=0, metric="dev_loss", mode="min")
    assert [p.name for p in kept] == ["step-00000005"]
    assert not any(p.name.startswith(".trash") for p in tmp_path.iterdir())


def test_run_lock(tmp_path):
    with ckpt.RunLock(tmp_path), pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
        ckpt.RunLock(tmp_path).acquire()
    ckpt.RunLock(tmp_path).acquire().release()


def test_lock_freed_when_holder_is_killed(tmp_path):
    code = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'holder'); print('locked', flush=True); "
        "time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "train.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match="in use"):
            ckpt.RunLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 5
    while True:  # the kernel drops the lock with the process
        try:
            ckpt.RunLock(tmp_path).acquire().release()
            break
        except ConfigError:
            assert time.time() < deadline
            time.sleep(0.05)
