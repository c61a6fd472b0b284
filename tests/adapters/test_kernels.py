"""Batched expert kernels against the per-expert loop and the dense weighted sum (float32, 1e-5)."""

from __future__ import annotations

import pytest
import torch
from reference.expert_loop import dense_moe_delta, loop_delta

from babelora.adapters.kernels import dense_delta, gather_delta, grouped_delta, static_delta

TOL = 1e-5
R, T, D, Dout, E, RANK = 3, 5, 8, 7, 6, 3


def _factors(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(R, T, D, generator=g)
    A = torch.randn(E, RANK, D, generator=g) * 0.3
    B = torch.randn(E, Dout, RANK, generator=g) * 0.3
    return x, A, B


def _topk_weights(k, seed=1, shape=(R, T)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, E, generator=g)
    top, ids = logits.softmax(-1).topk(k, dim=-1)
    return ids, top


def _dense(ids, gates):
    return torch.zeros(*ids.shape[:-1], E).scatter_add(-1, ids, gates)


def test_static_equals_loop_with_all_ones_and_given_weights():
    x, A, B = _factors()
    ones = torch.ones(R, T, E)
    assert (static_delta(x, A, B).double() - loop_delta(x, A, B, 1.0, ones)).abs().max() <= TOL
    w = torch.tensor([0.5, 0.0, 2.0, 1.0, -1.0, 0.25])
    ref = loop_delta(x, A, B, 1.0, w.expand(R, T, E))
    assert (static_delta(x, A, B, w).double() - ref).abs().max() <= TOL


def test_static_single_expert_is_plain_lora():
    x, A, B = _factors()
    ref = (x @ A[0].T) @ B[0].T
    assert torch.equal(static_delta(x, A[:1], B[:1]), ref)


@pytest.mark.parametrize("per_token", [True, False])
def test_dense_equals_loop_and_dense_moe(per_token):
    x, A, B = _factors()
    ids, gates = _topk_weights(2, shape=(R, T) if per_token else (R,))
    w = _dense(ids, gates)
    w3 = w if per_token else w[:, None, :]
    out = dense_delta(x, A, B, w3).double()
    full = w3.expand(R, T, E)
    assert (out - loop_delta(x, A, B, 1.0, full)).abs().max() <= TOL
    assert (out - dense_moe_delta(x, A, B, 1.0, full)).abs().max() <= TOL


@pytest.mark.parametrize("k", [1, 2, 6])
def test_gather_per_row_equals_loop(k):
    x, A, B = _factors()
    ids, gates = _topk_weights(k, shape=(R,))
    out = gather_delta(x, A, B, ids, gates).double()
    ref = loop_delta(x, A, B, 1.0, _dense(ids, gates)[:, None, :].expand(R, T, E))
    assert (out - ref).abs().max() <= TOL


@pytest.mark.parametrize("k", [1, 2, 3])
def test_grouped_token_dispatch_equals_loop(k):
    x, A, B = _factors()
    ids, gates = _topk_weights(k)
    out = grouped_delta(x.reshape(-1, D), A, B, ids.reshape(-1, k), gates.reshape(-1, k))
    ref = loop_delta(x, A, B, 1.0, _dense(ids, gates))
    assert (out.reshape(R, T, Dout).double() - ref).abs().max() <= TOL


def test_grouped_handles_unused_experts_and_skew():
    x, A, B = _factors()
    ids = torch.zeros(R, T, 2, dtype=torch.long)
    ids[..., 1] = 3  # experts 1, 2, 4, 5 get nothing; 0 and 3 get every token
    gates = torch.full((R, T, 2), 0.5)
    out = grouped_delta(x.reshape(-1, D), A, B, ids.reshape(-1, 2), gates.reshape(-1, 2))
    ref = loop_delta(x, A, B, 1.0, _dense(ids, gates))
    assert (out.reshape(R, T, Dout).double() - ref).abs().max() <= TOL


def test_kernel_gradients_agree():
    """dense, gather and grouped give the same gradients for x, A, B and the gates."""
    x0, A0, B0 = _factors()
    ids, gates0 = _topk_weights(2, shape=(R,))
    grads = []
    for kind in ("dense", "gather", "grouped"):
        x, A, B = (t.clone().requires_grad_() for t in (x0, A0, B0))
        gates = gates0.clone().requires_grad_()
        if kind == "dense":
            y = dense_delta(x, A, B, _dense(ids, gates)[:, None, :])
        elif kind == "gather":
            y = gather_delta(x, A, B, ids, gates)
        else:
            tok_ids = ids[:, None, :].expand(R, T, 2).reshape(-1, 2)
            tok_g = gates[:, None, :].expand(R, T, 2).reshape(-1, 2)
            y = grouped_delta(x.reshape(-1, D), A, B, tok_ids, tok_g).reshape(R, T, Dout)
        (y * torch.linspace(-1, 1, Dout)).sum().backward()
        grads.append([t.grad for t in (x, A, B, gates)])
    for other in grads[1:]:
        for g0, g1 in zip(grads[0], other):
            assert (g0 - g1).abs().max() <= TOL
