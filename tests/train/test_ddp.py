"""2-process DDP on CPU (gloo) through `accelerate launch` equals one process on the same batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference.corpus import config_yaml

from babelora.methods.registry import train
from babelora.train import checkpoint as ckpt
from babelora.train.config import load_train_config

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    # grad_accum 2: the token-mean normalisation must hold across micro-batches and ranks;
    # min_batch_items 2: one process plans exactly the global batches that two processes split
    extra = {
        "optim.grad_accum": 2,
        "data.min_batch_items": 2,
        "max_steps": 3,
        "checkpoint.save_every": 3,
        "optim.lr": 1e-3,
    }
    cfg_path = config_yaml(tmp_path, tmp_path / "ddp", **extra)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(WORKER),
        str(cfg_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(n["world"] == 2 and n["backend"] == "gloo" and n["step"] == 3 for n in notes)

    single = train(load_train_config(cfg_path, [f"output_dir={tmp_path / 'single'}"]))
    a = ckpt.load_checkpoint(single.last_checkpoint).trainable
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "ddp" / ckpt.CKPT_DIR)).trainable
    assert a.keys() == b.keys()
    for name in a:
        # fp32 all-reduce sums gradients in another order than one process: not bitwise, close
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    moved = max(a[n].abs().max().item() for n in a if "lora_B" in n)
    assert moved > 1e-3  # the runs did train (lora_B starts at zero)

    def rows(run: str) -> list[dict]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines]

    for r1, r2 in zip(rows("single"), rows("ddp")):
        assert r1["train/loss"] == pytest.approx(r2["train/loss"], rel=1e-5)
