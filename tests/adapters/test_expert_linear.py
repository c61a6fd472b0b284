"""ExpertLoRALinear: fast path vs the loop reference, init, merge invariants, gradients."""

from __future__ import annotations

import pytest
import torch
from reference.expert_loop import reference_layer
from torch import nn

from babelora.adapters.config import LoRAConfig, MoLoRAConfig
from babelora.adapters.context import RoutingContext
from babelora.adapters.expert_linear import ExpertLoRALinear
from babelora.errors import ConfigError, LanguageError, MergeError

TOL = 1e-5
D, Dout = 10, 9
LANGS = ("de", "fr", "es")


def make_layer(cfg: MoLoRAConfig, seed: int = 0, random_experts: bool = True) -> ExpertLoRALinear:
    torch.manual_seed(seed)
    layer = ExpertLoRALinear.from_config(
        nn.Linear(D, Dout), cfg, RoutingContext(cfg.languages), "lin"
    )
    if random_experts:
        with torch.no_grad():
            layer.lora_A.normal_(std=0.4)
            layer.lora_B.normal_(std=0.4)
            for p in layer.router.parameters() if layer.router is not None else []:
                p.normal_(std=0.7)  # decisive, tie-free routing
    return layer


def cfg_of(**kw) -> MoLoRAConfig:
    kw.setdefault("lora", LoRAConfig(rank=3, alpha=5.0))
    return MoLoRAConfig(**kw)


CASES = {
    "lora": cfg_of(num_shared=1, router="none"),
    "lora-rslora": cfg_of(lora=LoRAConfig(rank=4, alpha=3.0, use_rslora=True), router="none"),
    "two-shared": cfg_of(num_shared=2, router="none"),
    "lang": cfg_of(languages=LANGS, num_shared=0),
    "lang+shared": cfg_of(languages=LANGS, num_shared=1),
    "lang-2-per": cfg_of(languages=LANGS, num_shared=1, experts_per_lang=2),
    "learned-token-top1": cfg_of(num_experts=5, num_shared=0, router="learned", top_k=1),
    "learned-token-top2": cfg_of(num_experts=5, num_shared=1, router="learned", top_k=2),
    "learned-token-dense": cfg_of(num_experts=4, num_shared=1, router="learned", top_k=4),
    "learned-token-unnormalized": cfg_of(
        num_experts=5, router="learned", top_k=2, normalize_top_k=False
    ),
    "learned-utt-top2": cfg_of(
        num_experts=5, num_shared=1, router="learned", top_k=2, routing_level="utterance"
    ),
    "learned-utt-dense": cfg_of(
        num_experts=3, num_shared=0, router="learned", top_k=3, routing_level="utterance"
    ),
    "hybrid-token": cfg_of(languages=LANGS, num_shared=1, router="hybrid", top_k=2),
    "hybrid-utt": cfg_of(
        languages=LANGS, experts_per_lang=2, router="hybrid", top_k=2, routing_level="utterance"
    ),
    "weights": cfg_of(languages=LANGS, num_shared=1, router="weights"),
}


@pytest.mark.parametrize("kernel", ["auto", "dense", "gather", "grouped"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_matches_loop_reference(name, kernel):
    from dataclasses import replace

    cfg = replace(CASES[name], kernel=kernel)
    layer = make_layer(cfg)
    R, T = 4, 17  # T >= 16 lets "auto" take the gather path for utterance routing
    x = torch.randn(R, T, D)
    mask = torch.ones(R, T, dtype=torch.bool)
    mask[1, 11:] = False
    mask[3, 5:] = False
    lang_ids = torch.tensor([0, 2, -1, 1])
    layer.context.set(lang_ids=lang_ids, masks={"default": mask})
    with torch.no_grad():
        out = layer(x)
    ref = reference_layer(layer, x, lang_ids=lang_ids, mask=mask)
    assert (out.double() - ref).abs().max() <= TOL


def test_language_posterior_matches_reference():
    layer = make_layer(CASES["lang+shared"])
    x = torch.randn(3, 6, D)
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [0.3, 0.3, 0.4]])
    layer.context.set(lang_probs=probs)
    with torch.no_grad():
        out = layer(x)
    ref = reference_layer(layer, x, lang_probs=probs)
    assert (out.double() - ref).abs().max() <= TOL


@pytest.mark.parametrize("shape", [(5, D), (2, 3, 4, D), (D,)])
def test_any_input_rank(shape):
    layer = make_layer(CASES["learned-token-top2"])
    x = torch.randn(*shape)
    with torch.no_grad():
        out = layer(x)
    assert out.shape == (*shape[:-1], Dout)
    x3 = x.reshape(shape[0] if len(shape) > 1 else 1, -1, D)
    assert (out.reshape(-1).double() - reference_layer(layer, x3).reshape(-1)).abs().max() <= TOL


@pytest.mark.parametrize(
    "name", ["lora", "lang+shared", "learned-token-top2", "hybrid-utt", "weights"]
)
def test_default_init_is_exactly_the_base(name):
    layer = make_layer(CASES[name], random_experts=False)
    x = torch.randn(3, 5, D)
    layer.context.set(lang_ids=[0, 1, 2])
    with torch.no_grad():
        assert torch.equal(layer(x), layer.base_layer(x))
    assert torch.count_nonzero(layer.lora_A) > 0  # A is random, B zero (PEFT's init)


def test_gaussian_init():
    cfg = cfg_of(lora=LoRAConfig(rank=4, init="gaussian"), router="none")
    layer = make_layer(cfg, random_experts=False)
    assert torch.count_nonzero(layer.lora_B) == 0
    assert 0.1 < float(layer.lora_A.detach().std()) < 0.5  # N(0, 1/r) with r = 4


@pytest.mark.parametrize("name", ["lora", "two-shared", "weights"])
def test_merge_equals_unmerged_and_is_idempotent(name):
    layer = make_layer(CASES[name])
    x = torch.randn(3, 5, D)
    w0 = layer.base_layer.weight.clone()
    with torch.no_grad():
        before = layer(x)
        layer.merge()
        merged = layer(x)
        layer.merge()  # twice: no-op
        twice = layer(x)
        layer.unmerge()
        after = layer(x)
    assert (merged - before).abs().max() <= TOL
    assert torch.equal(twice, merged)
    assert (after - before).abs().max() <= TOL
    assert (layer.base_layer.weight - w0).abs().max() <= 1e-6
    assert not torch.equal(before, layer.base_layer(x))  # not identity


def test_merge_language_fold_equals_routed_rows():
    layer = make_layer(CASES["lang-2-per"])
    x = torch.randn(2, 4, D)
    layer.context.set(lang_ids=[1, 1])
    with torch.no_grad():
        routed = layer(x)
        w = torch.tensor([1.0, 0, 0, 1, 1, 0, 0])  # shared + both experts of language 1
        layer.merge(w)
        assert (layer(x) - routed).abs().max() <= TOL
        with pytest.raises(MergeError, match="unmerge"):
            layer.merge(torch.ones(7))


def test_merge_refuses_input_dependent_routing():
    layer = make_layer(CASES["learned-token-top2"])
    with pytest.raises(MergeError, match="depends on the input"):
        layer.merge()
    with pytest.raises(MergeError, match="expert weights"):
        layer.merge(torch.ones(3))


def test_delta_weight_matches_forward():
    layer = make_layer(CASES["two-shared"])
    x = torch.randn(4, D)
    with torch.no_grad():
        ref = layer.base_layer(x) + x @ layer.delta_weight().T
        assert (layer(x) - ref).abs().max() <= TOL
        one = layer.delta_weight(expert=1)
        expect = layer.scaling * layer.lora_B[1] @ layer.lora_A[1]
        assert (one - expect).abs().max() <= 1e-6


@pytest.mark.parametrize("name", ["lora", "learned-token-top2", "hybrid-utt", "weights"])
def test_gradients_reach_only_experts_and_router(name):
    cfg = CASES[name]
    if name == "hybrid-utt":
        from dataclasses import replace

        cfg = replace(cfg, learn_prior=True)
    layer = make_layer(cfg)
    layer.train()
    layer.context.set(lang_ids=[0, 1, 2])
    layer(torch.randn(3, 5, D)).square().sum().backward()
    assert layer.base_layer.weight.grad is None and layer.base_layer.bias.grad is None
    assert not layer.base_layer.weight.requires_grad
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    for n, p in layer.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, n
    assert {"lora_A", "lora_B"} <= trainable
    assert all(n.startswith(("lora_", "router.")) for n in trainable)


def test_dropout_is_train_only():
    cfg = cfg_of(lora=LoRAConfig(rank=3, dropout=0.5), router="none")
    layer = make_layer(cfg)
    x = torch.randn(4, 6, D)
    layer.eval()
    with torch.no_grad():
        ref = layer.base_layer(x) + x @ layer.delta_weight().T
        assert (layer(x) - ref).abs().max() <= TOL
        layer.train()
        assert (layer(x) - ref).abs().max() > 1e-3


def test_errors_are_clear():
    with pytest.raises(ConfigError, match="nn.Linear"):
        ExpertLoRALinear(nn.Conv1d(2, 2, 1))
    layer = make_layer(CASES["lang"])
    with pytest.raises(ConfigError, match="set_routing"):
        layer(torch.randn(2, 3, D))
    with pytest.raises(LanguageError, match="'xx'"):
        layer.context.set(langs=["de", "xx"])
    layer.context.set(langs=["de", "fr"])
    with pytest.raises(ConfigError, match="2 rows of languages but the layer sees 3"):
        layer(torch.randn(3, 3, D))
