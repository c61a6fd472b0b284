"""Weight-space fusion (weighted dW sum, factored SVD, PEFT export) and gated fusion."""

from __future__ import annotations

import copy

import torch
from peft import PeftModel
from reference.tiny_models import make_whisper, randomize_experts, whisper_batch

from babelora.adapters.config import LoRAConfig, language_experts
from babelora.adapters.inject import inject
from babelora.methods.experts.fusion import (
    average_weights,
    copy_experts,
    fuse_weight_space,
    gated_fusion_config,
    learned_fusion_config,
    low_rank,
)

LANGS = ("de", "fr", "es")
LORA = LoRAConfig(rank=2, alpha=4.0, targets=("whisper-decoder",))


def logits(model, batch):
    feats, ids = batch
    with torch.no_grad():
        return model(input_features=feats, decoder_input_ids=ids).logits


def test_low_rank_is_the_truncated_svd_of_the_product():
    g = torch.Generator().manual_seed(0)
    bc, ac = torch.randn(9, 6, generator=g), torch.randn(6, 11, generator=g)
    dense = (bc @ ac).double()
    a, b, err = low_rank(bc, ac, 6)  # full rank: exact
    assert (b.double() @ a.double() - dense).abs().max() <= 1e-5 and err < 1e-6
    a, b, err = low_rank(bc, ac, 3)
    u, s, vh = torch.linalg.svd(dense)
    best = (u[:, :3] * s[:3]) @ vh[:3]
    assert (b.double() @ a.double() - best).abs().max() <= 1e-5
    expect = float((s[3:] ** 2).sum().sqrt() / (s**2).sum().sqrt())
    assert abs(err - expect) < 1e-6
    a, b, _ = low_rank(bc, ac, 8)  # more than the true rank: zero padding
    assert a.shape == (8, 11) and torch.count_nonzero(a[6:]) == 0


def test_fusion_equals_weighted_sum_of_updates_and_loads_in_peft(tmp_path):
    base = make_whisper()
    model = copy.deepcopy(base)
    handle = inject(model, language_experts(LORA, LANGS))
    randomize_experts(handle, scale=0.3)
    w = torch.tensor([0.5, 0.3, 0.2])
    fused = fuse_weight_space(handle, w, rank=6)  # sum of ranks: lossless
    assert fused.max_error < 1e-6
    for name, layer in handle.layers.items():
        expect = layer.delta_weight(weights=w)
        assert (fused.delta_weight(name) - expect).abs().max() <= 1e-5
    out = fused.save(tmp_path / "fused")
    peft = PeftModel.from_pretrained(copy.deepcopy(base), str(out))
    batch = whisper_batch()
    handle.merge(weights=w)
    assert (logits(peft, batch) - logits(model, batch)).abs().max() <= 1e-4
    handle.unmerge()
    lossy = fuse_weight_space(handle, w, rank=2)
    assert 0.0 < lossy.mean_error <= lossy.max_error < 1.0


def test_learned_fusion_trains_only_weights_then_fuses_to_what_it_computes(tmp_path):
    base = make_whisper()
    experts = inject(copy.deepcopy(base), language_experts(LORA, LANGS))
    randomize_experts(experts, scale=0.3)
    model = copy.deepcopy(base)
    fusion = inject(model, learned_fusion_config(LORA, LANGS))
    copy_experts(experts, fusion)
    fusion.freeze_experts()
    batch = whisper_batch()
    model.train()
    feats, ids = batch
    model(input_features=feats, decoder_input_ids=ids, labels=ids).loss.backward()
    trainable = {id(p) for p in fusion.trainable_parameters()}
    routers = [layer.router.weight for layer in fusion.layers.values()]
    assert trainable == {id(p) for p in routers}
    assert all(p.grad is not None and torch.count_nonzero(p.grad) for p in routers)
    with torch.no_grad():
        for i, p in enumerate(routers):
            p.copy_(torch.tensor([0.2, 0.5, 0.3]) + 0.05 * i)  # "learned" per-layer weights
    model.eval()
    want = logits(model, batch)
    fused = fuse_weight_space(fusion, rank=6)  # None: each layer's own learned weights
    peft = PeftModel.from_pretrained(copy.deepcopy(base), str(fused.save(tmp_path / "f")))
    assert (logits(peft, batch) - want).abs().max() <= 1e-4


def test_uniform_average_and_per_layer_weights():
    handle = inject(make_whisper(), language_experts(LORA, LANGS))
    randomize_experts(handle)
    avg = average_weights(handle)
    assert torch.allclose(avg, torch.full((3,), 1 / 3))
    per_layer = {name: torch.tensor([1.0, 0.0, 0.0]) for name in handle.layers}
    fused = fuse_weight_space(handle, per_layer, rank=2)
    for name, layer in handle.layers.items():
        assert (fused.delta_weight(name) - layer.delta_weight(expert=0)).abs().max() <= 1e-5
        assert fused.rel_error[name] < 1e-6


def test_gated_fusion_is_a_dense_utterance_gate():
    cfg = gated_fusion_config(LORA, LANGS)
    assert cfg.top_k == 3 and cfg.routing_level == "utterance" and cfg.num_shared == 0
    model = make_whisper()
    handle = inject(model, cfg)
    randomize_experts(handle)
    model.train()
    feats, ids = whisper_batch()
    model(input_features=feats, decoder_input_ids=ids, labels=ids).loss.backward()
    for layer in handle.layers.values():
        assert layer.router.weight.grad is not None
