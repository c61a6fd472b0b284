"""Dense, obviously-correct reference for babelora.methods.speech_llm.moe_projector (slow;
tests only).

Routing is recomputed frame by frame in Python from the router's logits, and every expert is
run on every frame with plain matmuls; the output is the dense weighted sum over all experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def expert_forward(experts, e: int, x: Tensor) -> Tensor:
    """Expert e of a StackedExperts on x (..., D), written out with plain matmuls."""
    h = x @ experts.w1[e] + experts.b1[e]
    if experts.w2 is not None:
        h = F.gelu(h) @ experts.w2[e] + experts.b2[e]
    return h


def dense_weights(logits: Tensor, cfg) -> Tensor:
    """(B,T,E) mixing weight of every routed expert (0 for experts not chosen), frame by frame."""
    B, T, E = logits.shape
    M = cfg.experts_per_group
    out = torch.zeros(B, T, E, dtype=torch.float32)
    for b in range(B):
        for t in range(T):
            p = torch.softmax(logits[b, t].float(), dim=-1)
            if cfg.routing == "hierarchical":
                g = int(p.view(cfg.num_groups, M).sum(-1).argmax())
                cand = list(range(g * M, (g + 1) * M))
            else:
                cand = list(range(E))
            chosen = sorted(cand, key=lambda e: -float(p[e].detach()))[: cfg.top_k]
            w = p[chosen]
            if cfg.normalize_weights:
                w = w / w.sum()
            out[b, t, chosen] = w
    return out


def dense_moe(projector, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """y = sum_e w_e(x) E_e(x) + mean_s S_s(x) over all experts; zeros on padding frames."""
    logits = projector.router(x)
    w = dense_weights(logits, projector.cfg)
    y = sum(
        w[..., e : e + 1] * expert_forward(projector.experts, e, x)
        for e in range(projector.cfg.num_experts)
    )
    if projector.shared is not None:
        n = projector.shared.n
        y = y + sum(expert_forward(projector.shared, s, x) for s in range(n)) / n
    if mask is not None:
        y = y * mask.unsqueeze(-1)
    return y
