"""Fusion recipes: learned weight-space fusion (one PEFT adapter) and output-space gated fusion."""

from __future__ import annotations

import json

import pytest
import torch
from reference.corpus import base_config
from reference.expert_sets import make_expert_set, tiny_batch

from babelora.config import build_dataclass
from babelora.errors import ConfigError
from babelora.methods.experts.fusion_recipe import prompt_mask
from babelora.methods.registry import build_recipe, train
from babelora.train import checkpoint as ckpt
from babelora.train.config import TrainConfig


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    return make_expert_set(tmp_path_factory.mktemp("experts") / "set", scale=0.2)


def make_cfg(corpus_dir, out, name, **params) -> TrainConfig:
    extra = {
        "recipe.name": name,
        "recipe.params": params,
        "data.batch_seconds": 40.0,
        "optim.lr": 5e-2,
        "optim.warmup_steps": 0,
        "optim.schedule": "constant",
    }
    return build_dataclass(TrainConfig, base_config(corpus_dir, out, **extra))


def losses(out) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def _logits(model, batch):
    with torch.no_grad():
        return model(
            input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"]
        ).logits


def test_weight_fusion_learns_weights_and_exports_one_peft_adapter(corpus_dir, experts, tmp_path):
    from peft import PeftModel

    from babelora.models.whisper import tiny_random_whisper

    out = tmp_path / "run"
    result = train(make_cfg(corpus_dir, out, "weight_fusion", experts=str(experts), rank=8))
    loss = losses(out)
    assert loss[-1] < loss[0]
    trained = ckpt.load_checkpoint(result.last_checkpoint).trainable
    assert all(k.endswith("router.weight") for k in trained)  # the experts stayed frozen
    assert any(not torch.allclose(v, torch.full_like(v, 0.5)) for v in trained.values())
    summary = json.loads((result.final_dir / "fusion.json").read_text())
    assert summary["rank"] == 8 and summary["max_rel_error"] < 1e-5  # rank 8 = 2 experts x 4
    assert set(summary["weights"]) == {k.rsplit(".router", 1)[0] for k in trained}
    # the PEFT adapter computes what the fusion model computes with the learned weights
    recipe = build_recipe(
        make_cfg(corpus_dir, tmp_path / "b", "weight_fusion", experts=str(experts))
    )
    recipe.model.load_state_dict(trained, strict=False)
    recipe.model.eval()
    batch = tiny_batch(["de", "fr"])
    peft = PeftModel.from_pretrained(tiny_random_whisper(seed=0).model, str(result.final_dir))
    torch.testing.assert_close(
        _logits(recipe.model, batch), _logits(peft.eval(), batch), atol=1e-4, rtol=1e-4
    )


def test_truncated_fusion_reports_its_error(corpus_dir, experts, tmp_path):
    from babelora.methods.experts.fusion_recipe import save_fused

    recipe = build_recipe(
        make_cfg(corpus_dir, tmp_path / "a", "weight_fusion", experts=str(experts))
    )
    summary = save_fused(recipe.adapter, tmp_path / "fused", None, 2, "base")
    assert summary["rank"] == 2 and 0.1 < summary["max_rel_error"] < 1.0
    cfg = json.loads((tmp_path / "fused" / "adapter_config.json").read_text())
    assert cfg["r"] == 2


def test_global_weights_are_shared_by_all_layers(corpus_dir, experts, tmp_path):
    cfg = make_cfg(
        corpus_dir, tmp_path / "run", "weight_fusion", experts=str(experts), granularity="global"
    )
    result = train(cfg)
    trained = ckpt.load_checkpoint(result.last_checkpoint).trainable
    assert len(trained) == 1  # one tied (L,) parameter
    summary = json.loads((result.final_dir / "fusion.json").read_text())
    weights = summary["weights"]
    assert isinstance(weights, list) and len(weights) == 2 and weights != [0.5, 0.5]


def test_prompt_mask_marks_the_decoder_prompt():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, 8, 9, 2]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(prompt_mask(labels), expected)


def test_gated_fusion_trains_gates_and_matches_decoding(corpus_dir, experts, tmp_path):
    from babelora.methods.experts.fusion_recipe import encoder_mask
    from babelora.methods.loading import load_expert_set
    from babelora.models.whisper import tiny_random_whisper

    out = tmp_path / "run"
    result = train(make_cfg(corpus_dir, out, "gated_fusion", experts=str(experts)))
    loss = losses(out)
    assert loss[-1] < loss[0]
    trained = ckpt.load_checkpoint(result.last_checkpoint).trainable
    assert trained and all(".router." in k for k in trained)
    handle = tiny_random_whisper(seed=0)
    adapter = load_expert_set(handle, result.final_dir)  # decodes with --experts
    assert adapter.config.router == "learned"
    # training pools decoder gates over the prompt only, as decoding's first step does
    batch = tiny_batch(["de", "fr"])
    feats, ids = batch["input_features"], batch["decoder_input_ids"]
    enc = encoder_mask(batch["feature_lens"], feats.shape[-1])
    n_prompt = 3
    with adapter.routing(masks={"encoder": enc, "decoder": prompt_mask(batch["labels"])}):
        full = _logits(handle.model, batch)[:, :n_prompt]
    prompt = {"input_features": feats, "decoder_input_ids": ids[:, :n_prompt]}
    with adapter.routing(masks={"encoder": enc}):
        first = _logits(handle.model, prompt)
    torch.testing.assert_close(full, first, atol=1e-4, rtol=1e-4)


def test_fusion_needs_an_expert_set(corpus_dir, tmp_path):
    with pytest.raises(ConfigError, match="recipe.params.experts"):
        build_recipe(make_cfg(corpus_dir, tmp_path / "a", "gated_fusion"))
    with pytest.raises(ConfigError, match="recipe.params.experts"):
        build_recipe(make_cfg(corpus_dir, tmp_path / "a", "weight_fusion"))
