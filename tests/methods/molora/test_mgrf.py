"""MGRF: identity at init, padding never leaks into the sentence vector, variants, encoder hook.

(Tests src/babelora/models/feature_fusion.py; kept with the adapter tests it was written with.)"""

from __future__ import annotations

import pytest
import torch
from reference.expert_loop import masked_mean_loop
from reference.tiny_models import make_whisper, whisper_batch

from babelora.adapters.mgrf import MGRF, MGRFConfig, attach_to_encoder
from babelora.errors import ConfigError

D = 16
VARIANTS = [
    MGRFConfig(),
    MGRFConfig(pooling="mean"),
    MGRFConfig(fusion="add"),
    MGRFConfig(fusion="concat", pooling="mean"),
    MGRFConfig(gate="scalar", attention_hidden=8),
]


def batch_with_padding(seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(3, 7, D, generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2, 2:] = False
    return h, mask


def randomize(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("cfg", VARIANTS, ids=lambda c: f"{c.pooling}-{c.fusion}-{c.gate}")
def test_zero_init_is_identity(cfg):
    h, mask = batch_with_padding()
    assert torch.equal(MGRF(D, cfg)(h, mask), h)


@pytest.mark.parametrize("cfg", VARIANTS, ids=lambda c: f"{c.pooling}-{c.fusion}-{c.gate}")
def test_padding_never_leaks(cfg):
    mgrf = MGRF(D, cfg)
    randomize(mgrf)
    h, mask = batch_with_padding()
    noisy = h.clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), D) * 1e3  # garbage in padding frames
    s1, s2 = mgrf.pool(h, mask), mgrf.pool(noisy, mask)
    assert torch.allclose(s1, s2, atol=1e-6)
    out1, out2 = mgrf(h, mask), mgrf(noisy, mask)
    assert torch.allclose(out1[mask], out2[mask], atol=1e-5)
    assert torch.equal(out2[~mask], noisy[~mask])  # padding frames pass through unchanged
    assert not torch.allclose(out1[mask], h[mask])  # and valid frames do change


def test_mean_pooling_equals_loop_and_attention_pooling_is_convex():
    h, mask = batch_with_padding()
    mean = MGRF(D, MGRFConfig(pooling="mean")).pool(h, mask)
    assert (mean.double() - masked_mean_loop(h, mask)).abs().max() <= 1e-6
    attn = MGRF(D, MGRFConfig())
    randomize(attn)
    s = attn.pool(h, mask)
    for r in range(3):  # a convex combination of the valid frames lies within their range
        valid = h[r][mask[r]]
        assert torch.all(s[r] <= valid.max(0).values + 1e-6)
        assert torch.all(s[r] >= valid.min(0).values - 1e-6)
    one = torch.zeros(3, 7, dtype=torch.bool)
    one[:, 0] = True
    assert torch.allclose(attn.pool(h, one), h[:, 0], atol=1e-6)


def test_gated_formula():
    mgrf = MGRF(D, MGRFConfig(pooling="mean"))
    randomize(mgrf)
    h, _ = batch_with_padding()
    s = h.mean(1)
    gate = torch.sigmoid(mgrf.gate(torch.cat([h, s[:, None].expand_as(h)], -1)))
    expect = h + gate * mgrf.proj(s)[:, None]
    assert torch.allclose(mgrf(h), expect, atol=1e-6)


def test_config_errors():
    with pytest.raises(ConfigError, match="mgrf.pooling"):
        MGRFConfig(pooling="max")
    with pytest.raises(ConfigError, match="mask"):
        MGRF(D).pool(torch.zeros(2, 3, D), torch.ones(2, 4, dtype=torch.bool))


def test_attach_to_whisper_encoder_trains_and_detaches():
    model = make_whisper()
    feats, ids = whisper_batch()
    with torch.no_grad():
        ref = model(input_features=feats, decoder_input_ids=ids).logits
    mgrf = MGRF(64)
    hook = attach_to_encoder(model.model.encoder, mgrf)
    with torch.no_grad():
        assert torch.equal(model(input_features=feats, decoder_input_ids=ids).logits, ref)
        randomize(mgrf)
        changed = model(input_features=feats, decoder_input_ids=ids).logits
    assert not torch.allclose(changed, ref)
    assert any(n.startswith("model.encoder.mgrf.") for n, _ in model.named_parameters())
    model(input_features=feats, decoder_input_ids=ids, labels=ids).loss.backward()
    assert mgrf.proj.weight.grad is not None
    hook.remove()
    with torch.no_grad():
        assert torch.equal(model(input_features=feats, decoder_input_ids=ids).logits, ref)
