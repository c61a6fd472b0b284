"""The spoken-LID head: masked pooling, training on separable features, safe save/load."""

from __future__ import annotations

import pytest
import torch

from babelora.errors import ModelLoadError
from babelora.models.lid import LidConfig, LidHead, frame_mask, predict, train_lid_head


def test_pool_ignores_padding():
    states = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6], dtype=torch.bool)
    pooled = LidHead.pool(states, mask)
    torch.testing.assert_close(pooled[0], states[0, :3].mean(0))
    states2 = states.clone()
    states2[0, 3:] = 1e6  # padding values must not matter
    torch.testing.assert_close(LidHead.pool(states2, mask), pooled)


def test_frame_mask_halves_mel_frames():
    mask = frame_mask(torch.tensor([200, 101]), 100)
    assert mask.sum(1).tolist() == [100, 51]


def test_trains_on_separable_languages_and_round_trips(tmp_path):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 3
    labels = torch.arange(3).repeat(40)
    pooled = centers[labels] + torch.randn(120, 16, generator=g)
    head = train_lid_head(pooled, labels, ["de", "fr", "es"], LidConfig(epochs=30, hidden=32))
    langs, probs = predict(head, pooled)
    acc = sum(lang == ["de", "fr", "es"][y] for lang, y in zip(langs, labels.tolist())) / 120
    assert acc > 0.95 and torch.allclose(probs.sum(-1), torch.ones(120))
    head.save(tmp_path / "lid")
    again = LidHead.load(tmp_path / "lid")
    torch.testing.assert_close(predict(again, pooled)[1], probs)
    with pytest.raises(ModelLoadError, match="not a LID head"):
        LidHead.load(tmp_path)
