"""AdamW over the trainable parameters and the warm-up + decay learning-rate schedule."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from babelora.train.config import OptimConfig


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based).

    Linear warm-up: (step + 1) / warmup for the first `warmup` steps (no wasted step at lr 0);
    then `linear` or `cosine` decay from 1 to `min_ratio` at step `total`, or `constant`.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * (1.0 - progress)


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed matrices and undecayed biases/norm weights."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, param_groups: list[dict] | None = None
) -> torch.optim.Optimizer:
    groups = (
        param_groups if param_groups is not None else default_param_groups(model, cfg.weight_decay)
    )
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    fn = functools.partial(
        lr_factor,
        warmup=cfg.warmup_steps,
        total=total_steps,
        schedule=cfg.schedule,
        min_ratio=cfg.min_lr_ratio,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
