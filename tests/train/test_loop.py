"""The training loop end to end on a tiny random Whisper: learning, resume, eval, export, aux."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference.corpus import base_config

from babelora.config import build_dataclass
from babelora.errors import ConfigError
from babelora.methods.finetune.recipe import LoraParams, build_lora
from babelora.methods.registry import train
from babelora.train import checkpoint as ckpt
from babelora.train import loop
from babelora.train.config import TrainConfig
from babelora.train.recipe import LossOutput


def make_cfg(corpus_dir: Path, out: Path, **extra) -> TrainConfig:
    return build_dataclass(TrainConfig, base_config(corpus_dir, out, **extra))


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path) -> list[float]:
    return [r["train/loss"] for r in rows(out) if "train/loss" in r]


def test_few_steps_overfit_one_batch(corpus_dir, tmp_path):
    cfg = make_cfg(
        corpus_dir,
        tmp_path / "run",
        max_steps=3,
        **{
            "recipe.name": "full",
            "recipe.params": {},
            "data.batch_seconds": 40.0,
            "optim.warmup_steps": 0,
            "optim.schedule": "constant",
            "data.dev": [str(corpus_dir / "train.jsonl")],
        },
    )
    result = train(cfg)
    first, second, third = losses(tmp_path / "run")
    assert third < second < first
    assert result.finished and result.step == 3
    assert result.eval_metrics["dev_loss"] < first  # evaluated after the last update
    assert (result.final_dir / "model.safetensors").is_file()


def test_resume_is_bitwise(corpus_dir, tmp_path):
    extra = {
        "recipe.params": {"rank": 4, "dropout": 0.1},  # dropout: the RNG state must be restored
        "optim.grad_accum": 2,
        "data.lang_temperature": 2.0,
        "data.batch_seconds": 4.0,
        "max_steps": 4,
    }
    full = train(make_cfg(corpus_dir, tmp_path / "a", **extra))
    part = train(make_cfg(corpus_dir, tmp_path / "b", stop_after_steps=2, **extra))
    assert not part.finished and part.step == 2 and part.final_dir is None
    rest = train(make_cfg(corpus_dir, tmp_path / "b", resume=True, **extra))
    assert rest.finished and rest.step == 4
    a = ckpt.load_checkpoint(full.last_checkpoint)
    b = ckpt.load_checkpoint(rest.last_checkpoint)
    assert a.trainable.keys() == b.trainable.keys()
    for name in a.trainable:
        assert torch.equal(a.trainable[name], b.trainable[name]), name
    state_a, state_b = a.optimizer["state"], b.optimizer["state"]
    for idx in state_a:
        for key in state_a[idx]:
            assert torch.equal(state_a[idx][key], state_b[idx][key])
    assert a.scheduler == b.scheduler
    assert losses(tmp_path / "a") == losses(tmp_path / "b")  # metrics.jsonl reads as one run
    assert [r["step"] for r in rows(tmp_path / "b")] == [1, 2, 3, 4]


def test_refuses_existing_run_without_resume(corpus_dir, tmp_path):
    train(make_cfg(corpus_dir, tmp_path / "run", max_steps=1))
    with pytest.raises(ConfigError, match="--resume"):
        train(make_cfg(corpus_dir, tmp_path / "run", max_steps=2))


def test_second_run_on_same_folder_refused(corpus_dir, tmp_path):
    out = tmp_path / "run"
    with ckpt.RunLock(out), pytest.raises(ConfigError, match="in use by another training run"):
        train(make_cfg(corpus_dir, out, max_steps=1))
    assert not (out / ckpt.CKPT_DIR).exists()  # nothing written by the refused run
    train(make_cfg(corpus_dir, out, max_steps=1))  # the lock is free again


def build_aux(cfg):
    """A LoRA recipe with two auxiliary losses: the engine takes any builder."""
    recipe = build_lora(cfg, LoraParams())
    base = recipe.loss_fn

    def loss_fn(model, batch):
        out = base(model, batch)
        lora = [p for n, p in model.named_parameters() if "lora_B" in n]
        l2 = sum((p.float() ** 2).sum() for p in lora)
        return LossOutput(out.loss, {"l2": l2, "const": torch.ones(())})

    recipe.loss_fn = loss_fn
    recipe.aux_loss_weights = {"const": 0.0}
    return recipe


def test_aux_losses_weighted_and_logged(corpus_dir, tmp_path):
    extra = {"max_steps": 2}
    with pytest.raises(ConfigError, match="no weight for auxiliary loss 'l2'"):
        loop.train(make_cfg(corpus_dir, tmp_path / "a", **extra), build_aux)
    weights = {"recipe.aux_loss_weights": {"l2": 0.5}}
    loop.train(make_cfg(corpus_dir, tmp_path / "b", **extra, **weights), build_aux)
    logged = rows(tmp_path / "b")
    assert logged[0]["train/aux/l2"] == 0.0  # lora_B starts at zero
    assert logged[1]["train/aux/l2"] > 0.0
    assert logged[0]["train/aux/const"] == 1.0


def test_eval_hook_keep_best_and_export(corpus_dir, tmp_path, tiny_handle):
    score_hook = []

    def evaluate(model, recipe, utts, *, step):
        assert not model.training and utts
        score_hook.append(step)
        return {"score": float(abs(step - 2)), "score/de": 0.0}

    extra = {
        "data.dev": [str(corpus_dir / "dev.jsonl")],
        "eval.every": 1,
        "checkpoint": {"save_every": 1, "keep_last": 1, "keep_best": 1, "best_metric": "score"},
        "max_steps": 4,
    }
    result = train(make_cfg(corpus_dir, tmp_path / "run", **extra), evaluate)
    assert score_hook == [1, 2, 3, 4]
    kept = [p.name for _, p in ckpt.list_checkpoints(tmp_path / "run" / ckpt.CKPT_DIR)]
    assert kept == ["step-00000002", "step-00000004"]
    assert result.best_checkpoint.name == "step-00000002"
    assert result.eval_metrics["score"] == 2.0 and "dev_loss" in result.eval_metrics
    logged = [r for r in rows(tmp_path / "run") if "eval/dev_loss" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]

    # the exports are PEFT adapters that load in plain PEFT and hold the checkpoint's weights
    from peft import PeftModel

    from babelora.models.whisper import tiny_random_whisper

    for folder, step in (("final", 4), ("best", 2)):
        path = tmp_path / "run" / folder
        assert (path / "adapter_config.json").is_file()
        assert (path / "adapter_model.safetensors").is_file()
        model = PeftModel.from_pretrained(tiny_random_whisper(0).model, str(path))
        trained = ckpt.load_checkpoint(
            tmp_path / "run" / ckpt.CKPT_DIR / f"step-{step:08d}"
        ).trainable
        params = dict(model.named_parameters())
        for name, value in trained.items():
            assert torch.equal(params[name], value), name


def test_epochs_and_dev_loss(corpus_dir, tmp_path):
    cfg = make_cfg(
        corpus_dir,
        tmp_path / "run",
        max_steps=None,
        epochs=1.0,
        **{"data.dev": [str(corpus_dir / "dev.jsonl")]},
    )
    result = train(cfg)
    from babelora.data.manifest import read_manifest
    from babelora.data.sampling import DurationBatchSampler

    utts = read_manifest(corpus_dir / "train.jsonl")
    plan = DurationBatchSampler([u.duration for u in utts], [u.lang for u in utts], 6.0).plan(0)
    assert result.total_steps == result.step == len(plan)
    assert result.eval_metrics["dev_loss"] > 0
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "languages:\n  - de\n  - fr" in saved or "- de" in saved


def test_decode_eval_hook(corpus_dir, tmp_path):
    """The built-in `decode` hook decodes the dev set and scores it per language."""
    extra = {
        "data.dev": [str(corpus_dir / "dev.jsonl")],
        "eval.hook": "decode",
        "eval.max_new_tokens": 4,
        "max_steps": 1,
    }
    result = train(make_cfg(corpus_dir, tmp_path / "run", **extra))
    metrics = result.eval_metrics
    assert {"wer/de", "wer/fr", "error_rate", "decode_errors", "dev_loss"} <= set(metrics)
    assert metrics["decode_errors"] == 0.0
    assert metrics["error_rate"] == pytest.approx((metrics["wer/de"] + metrics["wer/fr"]) / 2)
