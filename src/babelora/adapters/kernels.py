"""Batched low-rank expert products: sum_e w_e B_e A_e x without a Python loop over experts.

Shapes: R rows, T positions, N tokens (= R*T), D input dim, Dout output dim, E experts,
r rank, K experts per row or token. Experts are stacked: A (E, r, D), B (E, Dout, r). The LoRA
scale is folded into the weights by the caller. The slow per-expert loops these must equal live
in tests/reference/expert_loop.py.

Which kernel when (cost in multiply-adds per token):
- `static_delta`: weights shared by all tokens (plain LoRA, shared experts, fusion weights):
  one rank-E*r LoRA, E*r*(D+Dout).
- `dense_delta`: per-token or per-row weights over all experts: the same two matmuls plus a
  (N, E*r) scaling; the right choice for small E (it never builds per-token weight matrices).
- `gather_delta`: per-row expert sets (utterance routing): gathers the K chosen experts of each
  row, K*r*(D+Dout) per token, plus R*K*r*(D+Dout) gathered weights.
- `grouped_delta`: per-token top-k over a large pool: tokens are sorted by expert into a
  (E, capacity, D) buffer and multiplied with one batched matmul per factor,
  k*r*(D+Dout) per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def flat_b(B: Tensor) -> Tensor:
    """(E, Dout, r) -> (Dout, E*r), the column order matching A.reshape(E*r, D)."""
    E, Dout, r = B.shape
    return B.permute(1, 0, 2).reshape(Dout, E * r)


def static_delta(x: Tensor, A: Tensor, B: Tensor, weights: Tensor | None = None) -> Tensor:
    """sum_e w_e B_e A_e x with the same weights (E,) for every token (None = all 1).

    x (..., D) -> (..., Dout).
    """
    E, r, D = A.shape
    if E == 1:
        a, b = A[0], B[0]
        if weights is not None:
            b = b * weights[0]
    else:
        a = A.reshape(E * r, D)
        b = flat_b(B)
        if weights is not None:
            b = b * weights.repeat_interleave(r)
    return F.linear(F.linear(x, a), b)


def dense_delta(x: Tensor, A: Tensor, B: Tensor, weights: Tensor) -> Tensor:
    """sum_e w_e B_e A_e x with per-row or per-token weights over all experts.

    x (R, T, D), weights (R, 1, E) or (R, T, E) -> (R, T, Dout).
    """
    E, r, D = A.shape
    h = F.linear(x, A.reshape(E * r, D))  # (R, T, E*r)
    h = (h.unflatten(-1, (E, r)) * weights.unsqueeze(-1)).flatten(-2)  # gate each expert
    return F.linear(h, flat_b(B))  # (R, T, Dout)


def gather_delta(x: Tensor, A: Tensor, B: Tensor, ids: Tensor, weights: Tensor) -> Tensor:
    """sum_k w_rk B_{id_rk} A_{id_rk} x for each row's own K experts.

    x (R, T, D), ids (R, K) long, weights (R, K) -> (R, T, Dout).
    """
    R, K = ids.shape
    _, r, D = A.shape
    Dout = B.shape[1]
    a = A[ids].reshape(R, K * r, D)  # (R, K*r, D)
    b = (B[ids] * weights[:, :, None, None]).permute(0, 2, 1, 3).reshape(R, Dout, K * r)
    h = torch.bmm(x, a.transpose(1, 2))  # (R, T, K*r)
    return torch.bmm(h, b.transpose(1, 2))  # (R, T, Dout)


def grouped_delta(x: Tensor, A: Tensor, B: Tensor, ids: Tensor, weights: Tensor) -> Tensor:
    """sum_k w_nk B_{id_nk} A_{id_nk} x_n, tokens grouped by expert (MoE dispatch/combine).

    x (N, D), ids (N, k) long, weights (N, k) -> (N, Dout).
    """
    N, k = ids.shape
    E, _, D = A.shape
    Dout = B.shape[1]
    flat_ids = ids.reshape(-1)
    order = torch.argsort(flat_ids, stable=True)  # assignments sorted by expert
    sorted_ids = flat_ids[order]
    token = order // k  # the token of each sorted assignment
    counts = torch.bincount(flat_ids, minlength=E)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(N * k, device=x.device) - starts[sorted_ids]  # place in its group
    capacity = int(counts.max())  # one host sync; no token is ever dropped
    buf = x.new_zeros(E, capacity, D).index_put((sorted_ids, slot), x[token])  # dispatch
    out = torch.bmm(torch.bmm(buf, A.transpose(1, 2)), B.transpose(1, 2))  # (E, C, Dout)
    contrib = out[sorted_ids, slot] * weights.reshape(-1)[order, None].to(out.dtype)
    return out.new_zeros(N, Dout).index_add(0, token, contrib)  # combine
