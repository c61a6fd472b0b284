"""Routers, aux losses and the routing context (beams, decode cache, padding)."""

from __future__ import annotations

import pytest
import torch
from reference.expert_loop import loop_delta, reference_layer, reference_load_balance
from torch import nn

from babelora.adapters.config import LoRAConfig, MoLoRAConfig
from babelora.adapters.context import RoutingContext
from babelora.adapters.expert_linear import ExpertLoRALinear
from babelora.adapters.inject import inject
from babelora.adapters.losses import load_balance_loss, z_loss
from babelora.adapters.routing import (
    ROUTERS,
    HybridRouter,
    LanguageRouter,
    LearnedRouter,
    RouterInputs,
    build_router,
    masked_mean,
)
from babelora.errors import ConfigError

D = 8
LANGS = ("de", "fr", "es")


def layer_of(seed=0, **kw) -> ExpertLoRALinear:
    kw.setdefault("lora", LoRAConfig(rank=2))
    cfg = MoLoRAConfig(**kw)
    torch.manual_seed(seed)
    layer = ExpertLoRALinear.from_config(nn.Linear(D, 5), cfg, RoutingContext(cfg.languages), "l")
    with torch.no_grad():
        layer.lora_B.normal_(std=0.5)
        for p in layer.router.parameters():
            p.normal_(std=0.7)
    return layer


def test_load_balance_matches_counting_reference_and_is_one_when_uniform():
    g = torch.Generator().manual_seed(0)
    probs = torch.randn(20, 5, generator=g).softmax(-1)
    ids = probs.topk(2, dim=-1).indices
    mask = torch.rand(20, generator=g) > 0.3
    for m in (None, mask):
        ref = reference_load_balance(probs, ids, m)
        assert abs(float(load_balance_loss(probs, ids, m)) - ref) < 1e-6
    uniform = torch.full((8, 4), 0.25)
    ids = torch.arange(8).remainder(4)[:, None]
    assert abs(float(load_balance_loss(uniform, ids)) - 1.0) < 1e-6


def test_z_loss_formula_and_mask():
    logits = torch.tensor([[0.0, 0.0], [10.0, 0.0], [1.0, 2.0]])
    lse = torch.logsumexp(logits, -1)
    assert torch.allclose(z_loss(logits), (lse**2).mean())
    mask = torch.tensor([True, False, True])
    assert torch.allclose(z_loss(logits, mask), (lse[[0, 2]] ** 2).mean())


def test_aux_losses_only_in_training_and_ignore_padding():
    router = LearnedRouter(D, 4, top_k=2)
    x = torch.randn(2, 6, D)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 3:] = False
    router.eval()
    assert router(x, RouterInputs(mask=mask)).aux_losses == {}
    router.train()
    aux = router(x, RouterInputs(mask=mask)).aux_losses
    assert set(aux) == {"load_balance", "z_loss"}
    x2 = x.clone()
    x2[1, 3:] = 100.0  # padding content must not matter
    aux2 = router(x2, RouterInputs(mask=mask)).aux_losses
    for k in aux:
        assert torch.allclose(aux[k], aux2[k])
    dense = LearnedRouter(D, 4, top_k=4).train()
    assert set(dense(x, RouterInputs()).aux_losses) == {"z_loss"}  # balance is constant there


def test_utterance_pooling_never_sees_padding():
    layer = layer_of(num_experts=4, num_shared=1, router="learned", routing_level="utterance")
    x = torch.randn(2, 7, D)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 4:] = False
    x2 = x.clone()
    x2[0, 4:] = torch.randn(3, D) * 50
    r1 = layer.router(x, RouterInputs(mask=mask))
    r2 = layer.router(x2, RouterInputs(mask=mask))
    assert torch.equal(r1.expert_ids, r2.expert_ids) and torch.allclose(r1.weights, r2.weights)
    ref = torch.stack([x[0, :4].mean(0), x[1].mean(0)])
    assert torch.allclose(masked_mean(x, mask), ref, atol=1e-6)


def test_hybrid_prior_dominates_when_strong_and_not_for_unknown_rows():
    layer = layer_of(
        languages=LANGS, experts_per_lang=2, router="hybrid", top_k=2, prior_strength=100.0
    )
    r = layer.router(torch.randn(3, 4, D), RouterInputs(lang_ids=torch.tensor([2, 0, 1])))
    chosen = r.expert_ids.sort(-1).values
    assert torch.equal(chosen[0], torch.tensor([[4, 5]] * 4))
    assert torch.equal(chosen[1], torch.tensor([[0, 1]] * 4))
    assert isinstance(layer.router, HybridRouter)
    assert torch.equal(
        layer.router.prior(RouterInputs(lang_ids=torch.tensor([-1])), "cpu"), torch.zeros(1, 6)
    )


def test_language_router_posterior_top1_equals_hard_routing():
    router = LanguageRouter(3, 1, posterior_top_k=1)
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])
    soft = router(torch.zeros(2, 1, 1), RouterInputs(lang_probs=probs)).dense(3)
    hard = router(torch.zeros(2, 1, 1), RouterInputs(lang_ids=torch.tensor([1, 0]))).dense(3)
    assert torch.allclose(soft, hard)


def test_registry_and_build():
    assert set(ROUTERS) == {"language", "learned", "hybrid", "weights"}
    assert build_router(MoLoRAConfig(router="none"), D) is None
    for kind in ROUTERS:
        cfg = MoLoRAConfig(languages=LANGS, router=kind, top_k=2)
        assert isinstance(build_router(cfg, D), ROUTERS[kind])


def test_configs_load_from_yaml_dicts_and_round_trip():
    from babelora.config import build_dataclass, to_dict

    data = {
        "languages": ["de", "fr"],
        "num_shared": 2,
        "router": "hybrid",
        "routing_level": "utterance",
        "lora": {"rank": 4, "alpha": 8, "targets": ["whisper-decoder"], "use_rslora": True},
    }
    cfg = build_dataclass(MoLoRAConfig, data)
    assert cfg.lora.targets == ("whisper-decoder",) and cfg.languages == ("de", "fr")
    assert cfg.num_total == 4 and cfg.lora.scaling == 8 / 2
    assert build_dataclass(MoLoRAConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown config key 'lora.rnak'"):
        build_dataclass(MoLoRAConfig, {"lora": {"rnak": 4}})


def test_aux_losses_survive_the_routing_block():
    from reference.tiny_models import MLP

    model = MLP()
    cfg = MoLoRAConfig(lora=LoRAConfig(rank=2, targets=("lin0",)), num_experts=3, router="learned")
    handle = inject(model, cfg)
    model.train()
    with handle.routing():
        model(torch.randn(4, 12))
    assert handle.context.lang_ids is None
    assert set(handle.aux_losses()) == {"load_balance", "z_loss"}


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="top_k=5 exceeds"):
        MoLoRAConfig(languages=LANGS, router="learned", top_k=5)
    with pytest.raises(ConfigError, match="needs molora.languages"):
        MoLoRAConfig(router="hybrid")
    with pytest.raises(ConfigError, match="lora.rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ConfigError, match="duplicates"):
        MoLoRAConfig(languages=("de", "de"))


def test_context_reorder_follows_beams():
    ctx = RoutingContext(LANGS)
    ctx.set(langs=["de", "es"], masks={"encoder": torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()})
    ctx.reorder(torch.tensor([0, 0, 1, 1]))  # expand to 2 beams per utterance
    assert ctx.lang_ids.tolist() == [0, 0, 2, 2]
    assert ctx.masks["encoder"].sum(1).tolist() == [2, 2, 1, 1]
    ctx.reorder(torch.tensor([3, 2, 1, 0]))
    assert ctx.lang_ids.tolist() == [2, 2, 0, 0]
    # a layer seeing k times the rows (generate's beams) gets each row repeated k times
    inputs = ctx.inputs(8, 3, "encoder", torch.device("cpu"))
    assert inputs.lang_ids.tolist() == [2, 2, 2, 2, 0, 0, 0, 0]


def _routed_reference(layer: ExpertLoRALinear, x: torch.Tensor, decision) -> torch.Tensor:
    """Loop reference of `layer` on x with a given per-row decision (shared expert first)."""
    R, T, _ = x.shape
    full = torch.zeros(R, T, layer.num_experts, dtype=torch.float64)
    full[..., : layer.num_shared] = 1.0
    full[..., layer.num_shared :] = decision.dense(layer.num_routed).detach().double()[:, None, :]
    A, B = layer.lora_A.detach(), layer.lora_B.detach()
    return layer.base_layer(x).detach().double() + loop_delta(x, A, B, layer.scaling, full)


def test_decode_cache_reuses_first_decision_and_follows_reorder():
    layer = layer_of(
        num_experts=4, num_shared=1, router="learned", routing_level="utterance", top_k=1
    )
    ctx = layer.context
    prompt, step = torch.randn(2, 3, D), torch.randn(2, 1, D)
    ctx.set(decoding=True)
    with torch.no_grad():
        layer(prompt)  # decides from the prompt and caches it
        cached = layer(step)  # reuses the prompt's decision
        decision = layer.router(prompt, RouterInputs())
    assert (cached.double() - _routed_reference(layer, step, decision)).abs().max() <= 1e-5
    ctx.reorder(torch.tensor([1, 0]))  # beams swap: the cached decisions swap with them
    with torch.no_grad():
        swapped = layer(step.flip(0))
    assert (swapped - cached.flip(0)).abs().max() <= 1e-5
    ctx.clear()
    with torch.no_grad():
        fresh = layer(step)  # no cache: routes by the step itself
    assert (fresh.double() - reference_layer(layer, step)).abs().max() <= 1e-5


def test_handle_collects_aux_losses_from_all_layers():
    from reference.tiny_models import MLP

    model = MLP()
    cfg = MoLoRAConfig(
        lora=LoRAConfig(rank=2, targets=("lin0", "lin1")),
        num_experts=4,
        router="learned",
        top_k=2,
        load_balance_weight=0.5,
        z_loss_weight=0.1,
    )
    handle = inject(model, cfg)
    model.train()
    model(torch.randn(6, 12))
    per_layer = list(handle.context._aux)
    assert len(per_layer) == 2
    aux = handle.aux_losses()
    for k in ("load_balance", "z_loss"):
        assert torch.allclose(aux[k], (per_layer[0][k] + per_layer[1][k]) / 2)
    total = handle.aux_loss(aux)
    assert torch.allclose(total, 0.5 * aux["load_balance"] + 0.1 * aux["z_loss"])
    assert handle.aux_losses() == {}  # popped
    total.backward()
    assert all(layer.router.weight.grad is not None for layer in handle.layers.values())


def test_usage_tracking_per_row():
    layer = layer_of(languages=LANGS, num_shared=1)
    layer.context.track_usage = True
    layer.context.set(langs=["fr", "de"])
    layer(torch.randn(2, 3, D))
    (usage,) = layer.context.usage["l"]
    assert usage.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
