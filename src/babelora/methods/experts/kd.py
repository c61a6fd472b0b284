"""Knowledge-distillation losses on token posteriors (pure functions on tensors).

Distilling LoRA language experts into one student (Interspeech 2025, methods.md section 2.5):
per target token t with teacher logits z_T and student logits z_S,

    L = CE(y_t, softmax(z_S)) + lambda * T^2 * KL(p_T || p_S),  p = softmax(z / T)

(Hinton et al. 2015, arXiv:1503.02531: the T^2 keeps the soft-target gradients on the scale of
the hard-target ones as T changes). `direction="reverse"` uses KL(p_S || p_T) instead (mode
seeking). The paper gives neither lambda nor T (methods.md 2.5): both are parameters. Losses are
SUMS over the target tokens (labels != ignore_index), as the training loop expects.

Shapes: N tokens, V vocabulary; logits may be (..., V) with labels (...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from babelora.data.collate import IGNORE_INDEX

Direction = Literal["forward", "reverse"]


def token_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    direction: Direction = "forward",
) -> Tensor:
    """KL divergence per token (N,) between temperature-softened posteriors.

    forward: KL(p_T || p_S) = sum_v p_T (log p_T - log p_S); reverse: KL(p_S || p_T).
    Computed in float32 from log-softmax (no log of a rounded-to-zero probability).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be forward or reverse, got {direction!r}")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if direction == "forward":
        p, log_p, log_q = log_t.exp(), log_t, log_s
    else:
        p, log_p, log_q = log_s.exp(), log_s, log_t
    return (p * (log_p - log_q)).sum(dim=-1)


@dataclass
class KDLoss:
    """Summed losses over the target tokens of a batch."""

    loss: Tensor  # ce + weight * T^2 * kl, summed over tokens (the training objective)
    ce: Tensor  # summed cross-entropy of the student on the labels
    kl: Tensor  # summed KL (before the T^2 and lambda factors)
    tokens: int  # target tokens counted


def distill_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    kd_weight: float = 1.0,
    temperature: float = 1.0,
    direction: Direction = "forward",
    ignore_index: int = IGNORE_INDEX,
) -> KDLoss:
    """CE(labels, student) + kd_weight * T^2 * KL, summed over tokens with labels != ignore_index.

    With kd_weight = 0 this is exactly the summed cross-entropy (the KL is still reported).
    """
    flat_s = student_logits.reshape(-1, student_logits.shape[-1])
    flat_t = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    flat_y = labels.reshape(-1)
    valid = flat_y != ignore_index
    ce = F.cross_entropy(flat_s.float(), flat_y, ignore_index=ignore_index, reduction="sum")
    kl = token_kl(flat_s[valid], flat_t[valid].detach(), temperature, direction).sum()
    loss = ce + (kd_weight * temperature**2) * kl if kd_weight else ce
    return KDLoss(loss=loss, ce=ce, kl=kl, tokens=int(valid.sum()))
