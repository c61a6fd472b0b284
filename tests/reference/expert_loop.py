"""Slow, obviously-correct references for the expert layer (oracles for tests/adapters).

- `loop_delta`: a Python loop over rows, positions and experts, one mat-vec at a time.
- `dense_moe_delta`: every expert's output computed, then the dense weighted sum.
- `reference_weights`: the full (R, T, E) expert weights a layer's router should produce,
  recomputed with loops (masked mean, softmax, top-k by sorting) from the router's parameters.
- `reference_load_balance`: Switch load balancing by counting.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from babelora.adapters.expert_linear import ExpertLoRALinear
from babelora.adapters.routing import HybridRouter, LanguageRouter, LearnedRouter, WeightsRouter


def loop_delta(x: Tensor, A: Tensor, B: Tensor, scaling: float, weights: Tensor) -> Tensor:
    """x (R, T, D), weights (R, T, E) over all experts -> (R, T, O), one expert at a time."""
    R, T, _ = x.shape
    E = A.shape[0]
    out = torch.zeros(R, T, B.shape[1], dtype=torch.float64)
    for r in range(R):
        for t in range(T):
            for e in range(E):
                w = float(weights[r, t, e])
                if w != 0.0:
                    xe = x[r, t].double()
                    out[r, t] += w * scaling * (B[e].double() @ (A[e].double() @ xe))
    return out


def dense_moe_delta(x: Tensor, A: Tensor, B: Tensor, scaling: float, weights: Tensor) -> Tensor:
    """Every expert on every token, then sum_e w_e y_e (the dense mixture)."""
    outs = torch.stack(
        [scaling * (x.double() @ A[e].double().T) @ B[e].double().T for e in range(A.shape[0])],
        dim=-2,
    )
    return (outs * weights.double()[..., None]).sum(-2)


def masked_mean_loop(x: Tensor, mask: Tensor | None) -> Tensor:
    R, T, D = x.shape
    out = torch.zeros(R, D, dtype=torch.float64)
    for r in range(R):
        rows = [x[r, t].double() for t in range(T) if mask is None or bool(mask[r, t])]
        if rows:
            out[r] = torch.stack(rows).mean(0)
    return out


def topk_loop(probs: list[float], k: int, normalize: bool) -> list[float]:
    order = sorted(range(len(probs)), key=lambda i: -probs[i])[:k]
    total = sum(probs[i] for i in order) if normalize else 1.0
    return [probs[i] / total if i in order else 0.0 for i in range(len(probs))]


def _softmax(v: list[float]) -> list[float]:
    m = max(v)
    ex = [math.exp(a - m) for a in v]
    s = sum(ex)
    return [a / s for a in ex]


def reference_weights(
    layer: ExpertLoRALinear,
    x: Tensor,
    lang_ids: Tensor | None = None,
    mask: Tensor | None = None,
    lang_probs: Tensor | None = None,
) -> Tensor:
    """Full weights (R, T, E) over shared + routed experts for x (R, T, D)."""
    R, T, _ = x.shape
    S, Er = layer.num_shared, layer.num_routed
    w = torch.zeros(R, T, S + Er, dtype=torch.float64)
    w[..., :S] = 1.0
    router = layer.router
    if router is None:
        return w
    if isinstance(router, WeightsRouter):
        w[..., S:] = router.weight.detach().double()
        return w
    if isinstance(router, LanguageRouter):
        epl = router.experts_per_lang
        for r in range(R):
            if lang_probs is not None:
                for lang in range(router.num_langs):
                    for j in range(epl):
                        w[r, :, S + lang * epl + j] = float(lang_probs[r, lang])
            elif int(lang_ids[r]) >= 0:
                for j in range(epl):
                    w[r, :, S + int(lang_ids[r]) * epl + j] = 1.0
        return w
    assert isinstance(router, LearnedRouter)
    W = router.weight.detach().double()
    prior = torch.zeros(R, Er, dtype=torch.float64)
    if isinstance(router, HybridRouter):
        table = router.lang_prior.detach().double()
        for r in range(R):
            if int(lang_ids[r]) >= 0:
                prior[r] = table[int(lang_ids[r])]
    if router.level == "utterance":
        pooled = masked_mean_loop(x, mask)
        for r in range(R):
            logits = (W @ pooled[r] + prior[r]).tolist()
            gates = topk_loop(_softmax(logits), router.top_k, router.normalize)
            w[r, :, S:] = torch.tensor(gates, dtype=torch.float64)
        return w
    for r in range(R):
        for t in range(T):
            logits = (W @ x[r, t].double() + prior[r]).tolist()
            gates = topk_loop(_softmax(logits), router.top_k, router.normalize)
            w[r, t, S:] = torch.tensor(gates, dtype=torch.float64)
    return w


def reference_layer(layer: ExpertLoRALinear, x: Tensor, **routing) -> Tensor:
    """The whole layer by loops: base(x) + loop_delta with reference_weights."""
    weights = reference_weights(layer, x, **routing)
    A, B = layer.lora_A.detach(), layer.lora_B.detach()
    delta = loop_delta(x, A, B, layer.scaling, weights)
    return layer.base_layer(x).detach().double() + delta


def reference_load_balance(probs: Tensor, ids: Tensor, mask: Tensor | None = None) -> float:
    N, E = probs.shape
    rows = [n for n in range(N) if mask is None or bool(mask[n])]
    k = ids.shape[1]
    counts = [0.0] * E
    mean_p = [0.0] * E
    for n in rows:
        for j in range(k):
            counts[int(ids[n, j])] += 1
        for e in range(E):
            mean_p[e] += float(probs[n, e])
    return E * sum(counts[e] / (len(rows) * k) * mean_p[e] / len(rows) for e in range(E))
