"""Distillation and fusion of decoder-only experts train from cached encoder states exactly as
they train live (issue 14: teacher, student and the fused experts share the frozen encoder).

Tolerances as tests/train/test_encoder_cache.py: float32 entries, min_input_seconds above the
longest utterance (every live batch pads its rows alike, so the cached run must match it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference.corpus import base_config

from babelora.config import build_dataclass
from babelora.methods.registry import train
from babelora.train import checkpoint as ckpt
from babelora.train.config import TrainConfig

COMMON = {"data.min_input_seconds": 2.5, "encoder_cache_dtype": "float32", "max_steps": 3}


def make_cfg(corpus_dir: Path, out: Path, **extra) -> TrainConfig:
    return build_dataclass(TrainConfig, base_config(corpus_dir, out, **extra))


@pytest.fixture(scope="module")
def expert_set(corpus_dir, tmp_path_factory) -> Path:
    """A decoder-only expert set (de, fr) after two steps (so the experts differ from zero)."""
    out = tmp_path_factory.mktemp("experts")
    cfg = make_cfg(
        corpus_dir,
        out / "run",
        **{
            "recipe.name": "experts",
            "recipe.params": {"rank": 2, "targets": ["whisper-decoder"], "init": "gaussian"},
            "max_steps": 2,
            "optim.lr": 1e-2,
            "cache_dir": str(out / "cache"),
        },
    )
    return Path(train(cfg).final_dir)


def recipes(expert_set: Path) -> dict[str, dict]:
    return {
        "distill": {
            "recipe.name": "distill",
            "recipe.params": {"teacher": str(expert_set), "student_experts": 2},
        },
        "weight_fusion": {
            "recipe.name": "weight_fusion",
            "recipe.params": {"experts": str(expert_set)},
            "optim.lr": 1e-2,
        },
        "gated_fusion": {
            "recipe.name": "gated_fusion",
            "recipe.params": {"experts": str(expert_set)},
            "optim.lr": 1e-2,
        },
    }


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


@pytest.mark.parametrize("recipe", ["distill", "weight_fusion", "gated_fusion"])
def test_cached_training_equals_live(corpus_dir, expert_set, tmp_path, recipe):
    extra = {**recipes(expert_set)[recipe], **COMMON, "cache_dir": str(tmp_path / "cache")}
    live = train(make_cfg(corpus_dir, tmp_path / "live", encoder_cache="off", **extra))
    cached = train(make_cfg(corpus_dir, tmp_path / "cached", encoder_cache="on", **extra))
    assert cached.encoder_cache and not live.encoder_cache
    assert cached.trains == live.trains == "decoder"
    torch.testing.assert_close(
        torch.tensor(losses(tmp_path / "cached")), torch.tensor(losses(tmp_path / "live")),
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip
    a = ckpt.load_checkpoint(live.last_checkpoint).trainable
    b = ckpt.load_checkpoint(cached.last_checkpoint).trainable
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
    one = {**extra, "max_steps": 1}
    first = make_cfg(corpus_dir, tmp_path / "one", encoder_cache="off", **one)
    start = ckpt.load_checkpoint(train(first).last_checkpoint).trainable
    moved = any(not torch.equal(start[k], a[k]) for k in a)
    assert moved  # training did something for the two runs to agree on


def test_encoder_experts_are_not_cached(corpus_dir, tmp_path):
    """Fusing a set with encoder experts keeps the live encoder (the engine refuses the cache)."""
    out = tmp_path / "enc"
    cfg = make_cfg(
        corpus_dir,
        out / "run",
        **{
            "recipe.name": "experts",
            "recipe.params": {"rank": 2, "targets": ["whisper-all"]},
            "max_steps": 1,
            "cache_dir": str(tmp_path / "cache"),
        },
    )
    final = train(cfg).final_dir
    fused = make_cfg(
        corpus_dir,
        out / "fuse",
        **{
            "recipe.name": "weight_fusion",
            "recipe.params": {"experts": str(final)},
            "max_steps": 1,
            "cache_dir": str(tmp_path / "cache"),
        },
    )
    result = train(fused)
    assert not result.encoder_cache
    info = json.loads((out / "fuse" / "run_info.json").read_text())
    assert info["trains"] == "encoder+decoder" and not info["encoder_cache"]["used"]
