"""MoE projector: sparse batched dispatch vs the dense reference, routing modes, masks."""

from __future__ import annotations

import pytest
import torch
from reference.moe_projector_dense import dense_moe, expert_forward

from babelora.methods.speech_llm.moe_projector import MoEProjector, MoEProjectorConfig, route

TOL = 1e-5  # float32, a few matmuls of width <= 48


def make(seed: int = 0, d_in: int = 12, d_out: int = 10, hidden: int = 0, **kw) -> MoEProjector:
    torch.manual_seed(seed)
    cfg = MoEProjectorConfig(**kw)
    proj = MoEProjector(cfg, d_in, d_out, hidden)
    with torch.no_grad():  # larger router weights so routing is far from ties
        proj.router.weight.mul_(5)
    return proj


def batch(seed: int = 1, B: int = 3, T: int = 7, D: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g)
    lengths = torch.tensor([T, T - 3, 1][:B])
    mask = torch.arange(T)[None] < lengths[:, None]
    return x, mask


@pytest.mark.parametrize(
    "kw",
    [
        dict(num_groups=2, experts_per_group=2, top_k=1, routing="hierarchical"),
        dict(num_groups=3, experts_per_group=3, top_k=2, routing="hierarchical"),
        dict(num_groups=2, experts_per_group=3, top_k=2, routing="flat"),
        dict(num_groups=2, experts_per_group=2, top_k=3, routing="flat", normalize_weights=False),
        dict(num_groups=2, experts_per_group=2, top_k=1, shared_experts=2),
        dict(num_groups=1, experts_per_group=4, top_k=2, routing="hierarchical"),
    ],
)
@pytest.mark.parametrize("hidden", [0, 16])
def test_sparse_dispatch_equals_dense_reference(kw, hidden):
    proj = make(hidden=hidden, **kw)
    x, mask = batch()
    y, routing = proj(x, mask)
    ref = dense_moe(proj, x, mask)
    assert y.shape == (3, 7, 10)
    torch.testing.assert_close(y, ref, atol=TOL, rtol=0)
    assert routing.expert_ids.shape == (3, 7, kw["top_k"])


def test_gradients_equal_dense_reference():
    proj = make(
        hidden=8, num_groups=2, experts_per_group=3, top_k=2, routing="flat", shared_experts=1
    )
    x, mask = batch()
    y, _ = proj(x, mask)
    y.square().sum().backward()
    sparse = {n: p.grad.clone() for n, p in proj.named_parameters()}
    proj.zero_grad()
    dense_moe(proj, x, mask).square().sum().backward()
    for name, p in proj.named_parameters():
        torch.testing.assert_close(sparse[name], p.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_flat_top_k_all_experts_is_the_softmax_weighted_sum():
    proj = make(num_groups=2, experts_per_group=2, top_k=4, routing="flat")
    x, _ = batch(B=2)
    y, _ = proj(x)
    p = torch.softmax(proj.router(x), -1)  # (B,T,E)
    dense = sum(p[..., e : e + 1] * expert_forward(proj.experts, e, x) for e in range(4))
    torch.testing.assert_close(y, dense, atol=TOL, rtol=0)


def test_hierarchical_top_m_is_the_within_group_weighted_sum():
    proj = make(num_groups=3, experts_per_group=2, top_k=2, routing="hierarchical")
    x, _ = batch(B=2)
    y, routing = proj(x)
    logits = proj.router(x).view(2, 7, 3, 2)
    g = torch.logsumexp(torch.log_softmax(logits.flatten(2), -1).view(2, 7, 3, 2), -1).argmax(-1)
    torch.testing.assert_close(routing.group_ids, g)
    q = torch.softmax(logits, -1)  # q(e|g)
    outs = torch.stack([expert_forward(proj.experts, e, x) for e in range(6)], 2).view(
        2, 7, 3, 2, -1
    )
    sel = outs.gather(2, g[..., None, None, None].expand(2, 7, 1, 2, 10)).squeeze(2)
    qg = q.gather(2, g[..., None, None].expand(2, 7, 1, 2)).squeeze(2)
    torch.testing.assert_close(y, (qg.unsqueeze(-1) * sel).sum(2), atol=TOL, rtol=0)


def test_route_group_probabilities_sum_to_one_and_weights_normalised():
    cfg = MoEProjectorConfig(num_groups=3, experts_per_group=2, top_k=2)
    proj = make(num_groups=3, experts_per_group=2, top_k=2)
    _, routing = proj(batch()[0])
    torch.testing.assert_close(routing.group_probs.sum(-1), torch.ones(3, 7))
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(3, 7))
    ids, _, groups = route(routing.logits, cfg)
    assert bool(((ids // 2) == groups.unsqueeze(-1)).all())  # hierarchical: all in one group


def test_padding_frames_output_zero_and_do_not_leak():
    proj = make(num_groups=2, experts_per_group=2, top_k=2, routing="flat", shared_experts=1)
    x, mask = batch()
    y, _ = proj(x, mask)
    assert bool((y[~mask] == 0).all())
    x2 = x.clone()
    x2[~mask] = torch.randn(int((~mask).sum()), 12) * 100
    y2, _ = proj(x2, mask)
    torch.testing.assert_close(y2, y)


def test_all_frames_on_one_expert():
    proj = make(num_groups=2, experts_per_group=2, top_k=1)
    with torch.no_grad():
        proj.router.weight.zero_()
        proj.router.bias.copy_(torch.tensor([0.0, 0.0, 9.0, 0.0]))
    x, mask = batch()
    y, routing = proj(x, mask)
    assert bool((routing.expert_ids == 2).all())
    torch.testing.assert_close(y, dense_moe(proj, x, mask), atol=TOL, rtol=0)


def test_reference_router_is_a_frozen_copy():
    proj = make()
    proj.enable_reference_router()
    x, mask = batch()
    _, routing = proj(x, mask)
    torch.testing.assert_close(routing.reference_logits, routing.logits)
    assert not routing.reference_logits.requires_grad
    assert not any(p.requires_grad for p in proj.reference_router.parameters())
    with torch.no_grad():
        proj.router.weight.add_(1.0)
    _, moved = proj(x, mask)
    assert not torch.allclose(moved.reference_logits, moved.logits)
    proj.reset_reference_router()
    _, reset = proj(x, mask)
    torch.testing.assert_close(reset.reference_logits, reset.logits)
    assert "reference_router.weight" in proj.state_dict()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(num_groups=2, experts_per_group=2, top_k=3), "top_k"),
        (dict(num_groups=2, experts_per_group=2, top_k=5, routing="flat"), "top_k"),
        (dict(num_groups=2, group_langs=("de",)), "group_langs"),
        (dict(num_groups=2, group_langs=("de", "de")), "repeats"),
        (dict(num_groups=0), "num_groups"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        MoEProjectorConfig(**kw)
