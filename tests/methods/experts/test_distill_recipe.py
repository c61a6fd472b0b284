"""The `distill` recipe: teachers fixed, student learns, lambda = 0 is LoRA CE, PEFT export."""

from __future__ import annotations

import json

import pytest
import torch
from reference.corpus import base_config
from reference.expert_sets import make_expert_set, tiny_batch

from babelora.config import build_dataclass
from babelora.errors import ConfigError, ModelLoadError
from babelora.methods.registry import build_recipe, train
from babelora.train.config import TrainConfig
from babelora.train.recipe import seq2seq_loss


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_expert_set(tmp_path_factory.mktemp("teacher") / "set")


def make_cfg(corpus_dir, out, teacher, **params) -> TrainConfig:
    extra = {
        "recipe.name": "distill",
        "recipe.params": {"teacher": str(teacher), **params},
        "data.batch_seconds": 40.0,
        "optim.lr": 1e-2,
        "optim.warmup_steps": 0,
        "optim.schedule": "constant",
        "ddp_find_unused_parameters": True,
    }
    return build_dataclass(TrainConfig, base_config(corpus_dir, out, **extra))


def test_distill_trains_student_only_and_exports_peft(corpus_dir, teacher, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    from babelora.models.whisper import tiny_random_whisper
    from babelora.train import checkpoint as ckpt

    out = tmp_path / "run"
    result = train(make_cfg(corpus_dir, out, teacher, temperature=2.0, kd_weight=0.5))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    loss = [r["train/loss"] for r in rows if "train/loss" in r]
    assert loss[-1] < loss[0]
    assert all("train/aux/kl" in r for r in rows if "train/loss" in r)
    # the teacher slots are bitwise what the set holds; the student moved
    saved = load_file(str(teacher / "babelora_experts.safetensors"))
    trained = ckpt.load_checkpoint(result.last_checkpoint).trainable
    for key, value in trained.items():
        name, part = key.rsplit(".", 1)
        assert torch.equal(value[1:], saved[f"{name}.{part}"]), key
    assert any(float(v[0].abs().max()) > 0 for k, v in trained.items() if k.endswith("lora_B"))
    # the export is the student as one PEFT adapter, equal to the student pass
    final = result.final_dir
    info = json.loads((final / "distill.json").read_text())
    assert info["languages"] == ["de", "fr"] and info["student_rank"] == 4
    recipe = build_recipe(make_cfg(corpus_dir, tmp_path / "b", teacher))
    recipe.model.load_state_dict(trained, strict=False)
    batch = tiny_batch(["de", "fr"])
    with torch.no_grad(), recipe.adapter.routing(langs=[None, None]):
        ours = recipe.model(
            input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"]
        ).logits
    peft = PeftModel.from_pretrained(tiny_random_whisper(seed=0).model, str(final)).eval()
    with torch.no_grad():
        theirs = peft(
            input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"]
        ).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_teacher_pass_is_base_plus_own_expert(corpus_dir, teacher, tmp_path):
    from babelora.methods.experts.distill_recipe import teacher_mode
    from babelora.methods.loading import load_expert_set
    from babelora.models.whisper import tiny_random_whisper

    recipe = build_recipe(make_cfg(corpus_dir, tmp_path / "run", teacher))
    recipe.model.train()
    adapter = recipe.adapter
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.lora_B[0].normal_(std=0.1)  # a student that would change the outputs
    before = {n: layer.lora_B.detach().clone() for n, layer in adapter.layers.items()}
    batch = tiny_batch(["fr", "de", "fr"])
    inputs = {k: batch[k] for k in ("input_features", "decoder_input_ids")}
    with torch.no_grad(), teacher_mode(adapter, 1), adapter.routing(langs=batch["langs"]):
        ours = recipe.model(**inputs).logits
    assert recipe.model.training  # mode restored
    for name, layer in adapter.layers.items():
        assert torch.equal(layer.lora_B, before[name])  # student restored bitwise
    handle = tiny_random_whisper(seed=0)
    ref = load_expert_set(handle, teacher)
    with torch.no_grad(), ref.routing(langs=batch["langs"]):
        theirs = handle.model(**inputs).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_zero_kd_weight_is_plain_lora_cross_entropy(corpus_dir, teacher, tmp_path):
    from babelora.adapters import LoRAConfig, inject

    cfg = make_cfg(corpus_dir, tmp_path / "run", teacher, kd_weight=0.0)
    recipe = build_recipe(cfg)
    with torch.no_grad():
        for layer in recipe.adapter.layers.values():
            layer.lora_B[0].normal_(std=0.1)
    batch = tiny_batch(["de", "fr"])
    ours = recipe.loss_fn(recipe.model, batch).loss
    # the same student as a plain LoRA (one always-on expert) on a fresh base
    from babelora.models.whisper import tiny_random_whisper

    handle = tiny_random_whisper(seed=0)
    plain = inject(handle.model, LoRAConfig(rank=4, alpha=8.0))
    with torch.no_grad():
        for name, layer in plain.layers.items():
            layer.lora_A.copy_(recipe.adapter.layers[name].lora_A[:1])
            layer.lora_B.copy_(recipe.adapter.layers[name].lora_B[:1])
    handle.model.train()
    torch.testing.assert_close(ours, seq2seq_loss(handle.model, batch).loss, atol=1e-4, rtol=1e-5)


def test_average_init_equals_uniform_mixture_of_experts(corpus_dir, teacher, tmp_path):
    from babelora.methods.loading import load_expert_set
    from babelora.models.whisper import tiny_random_whisper

    cfg = make_cfg(corpus_dir, tmp_path / "run", teacher, student_experts=2, student_init="average")
    recipe = build_recipe(cfg)
    recipe.model.eval()
    batch = tiny_batch(["de", "fr"])
    inputs = {k: batch[k] for k in ("input_features", "decoder_input_ids")}
    with torch.no_grad(), recipe.adapter.routing(langs=[None, None]):
        student = recipe.model(**inputs).logits
    handle = tiny_random_whisper(seed=0)
    ref = load_expert_set(handle, teacher)
    with torch.no_grad(), ref.routing(lang_probs=torch.full((2, 2), 0.5)):
        mixture = handle.model(**inputs).logits  # base + (dW_de + dW_fr) / 2
    torch.testing.assert_close(student, mixture, atol=1e-4, rtol=1e-4)


def test_distill_errors(corpus_dir, teacher, tmp_path):
    with pytest.raises(ConfigError, match="recipe.params.teacher"):
        build_recipe(make_cfg(corpus_dir, tmp_path / "a", ""))
    with pytest.raises(ModelLoadError, match="not an expert set"):
        build_recipe(make_cfg(corpus_dir, tmp_path / "a", tmp_path))
    cfg = make_cfg(corpus_dir, tmp_path / "a", teacher)
    other = build_dataclass(
        TrainConfig,
        {
            **base_config(corpus_dir, tmp_path / "a"),
            "recipe": {"name": "distill", "params": {"teacher": str(teacher)}},
            "model": {"tiny_random": True, "tiny_random_seed": 3},
        },
    )
    with pytest.raises(ModelLoadError, match="trained on tiny-random-whisper"):
        build_recipe(other)
    es = make_expert_set(tmp_path / "de_only", langs=("de",))
    with pytest.raises(ConfigError, match=r"data.languages has \['fr'\]"):
        build_recipe(make_cfg(corpus_dir, tmp_path / "a", es))
    assert cfg.recipe.params["teacher"] == str(teacher)
