"""The `experts` recipe: one LoRA per language trained in one run; export, PEFT parity, errors."""

from __future__ import annotations

import json

import pytest
import torch
from reference.corpus import base_config, write_corpus

from babelora.config import build_dataclass
from babelora.errors import ConfigError, LanguageError, ModelLoadError
from babelora.methods.registry import build_recipe, train
from babelora.train.config import TrainConfig

FAST = {
    "recipe.name": "experts",
    "recipe.params": {"rank": 4, "alpha": 8.0},
    "data.batch_seconds": 40.0,  # every utterance in one batch: the loss must fall step by step
    "optim.lr": 1e-2,
    "optim.warmup_steps": 0,
    "optim.schedule": "constant",
    "ddp_find_unused_parameters": True,
}


def make_cfg(corpus_dir, out, **extra) -> TrainConfig:
    return build_dataclass(TrainConfig, base_config(corpus_dir, out, **{**FAST, **extra}))


def losses(out) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


@pytest.fixture(scope="module")
def trained(corpus_dir, tmp_path_factory):
    """An experts run of 3 steps on de/fr (shared by the tests below; do not modify)."""
    from accelerate.state import AcceleratorState, GradientState

    out = tmp_path_factory.mktemp("experts") / "run"
    dev = {"data.dev": [str(corpus_dir / "dev.jsonl")], "data.dev_max_items": 2}
    hook = {"eval.hook": "decode", "eval.max_new_tokens": 3}  # rows routed per language
    result = train(make_cfg(corpus_dir, out, max_steps=3, **dev, **hook))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return result


def test_loss_decreases_and_exports_set_and_peft(trained):
    first, second, third = losses(trained.output_dir)
    assert third < second < first
    assert {"wer/de", "wer/fr", "dev_loss"} <= set(trained.eval_metrics)
    final = trained.final_dir
    assert (final / "babelora_experts.safetensors").is_file()
    assert (final / "babelora_base.json").is_file()
    for lang in ("de", "fr"):
        assert (final / lang / "adapter_config.json").is_file()
        assert (final / lang / "adapter_model.safetensors").is_file()


def test_peft_export_equals_routed_experts(trained):
    from peft import PeftModel

    from babelora.methods.loading import load_expert_set
    from babelora.models.whisper import tiny_random_whisper

    handle = tiny_random_whisper(seed=0)
    adapter = load_expert_set(handle, trained.final_dir)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 80, 60, generator=g)
    ids = torch.tensor([[50257, 50260, 50358, 50362, 220, 1000]] * 2)
    for lang in ("de", "fr"):
        with torch.no_grad(), adapter.routing(langs=[lang, lang]):
            ours = handle.model(input_features=feats, decoder_input_ids=ids).logits
        base = tiny_random_whisper(seed=0).model
        peft = PeftModel.from_pretrained(base, str(trained.final_dir / lang)).eval()
        with torch.no_grad():
            theirs = peft(input_features=feats, decoder_input_ids=ids).logits
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    with torch.no_grad(), adapter.disabled():
        plain = handle.model(input_features=feats, decoder_input_ids=ids).logits
    assert not torch.allclose(plain, ours, atol=1e-3)  # training moved the experts


def test_language_aware_decoding_equals_per_language_peft(trained, corpus_dir):
    from babelora.data.manifest import read_manifest
    from babelora.decode.routing import adapter_batch_hook
    from babelora.decode.runner import Request, RunnerOptions, decode_requests
    from babelora.decode.search import DecodeOptions
    from babelora.methods.loading import apply_peft_adapter, load_expert_set
    from babelora.models.whisper import tiny_random_whisper

    utts = read_manifest(corpus_dir / "train.jsonl")
    reqs = [Request(u.id, u.audio_filepath, u.lang) for u in utts]
    opts = RunnerOptions(show_progress=False, min_input_seconds=0.0, max_batch_size=4)
    # batches hold one prompt (language) each, so both runs batch and pad alike
    dec = DecodeOptions(max_new_tokens=4)
    handle = tiny_random_whisper(seed=0)
    adapter = load_expert_set(handle, trained.final_dir)
    batched = decode_requests(handle, reqs, dec, opts, before_batch=adapter_batch_hook(adapter))
    got = {r.id: r.hypothesis for r in batched}
    for lang in ("de", "fr"):
        rows = [r for r in reqs if r.lang == lang]
        peft = apply_peft_adapter(tiny_random_whisper(seed=0), trained.final_dir / lang)
        alone = decode_requests(peft, rows, dec, opts)
        assert [got[r.id] for r in alone] == [r.hypothesis for r in alone]


def test_mixed_batch_gradients_equal_each_language_alone(tiny_handle):
    """Disjoint experts: a mixed batch gives each expert the gradient of its own rows."""
    import copy

    from babelora.adapters import LoRAConfig, inject, language_experts
    from babelora.methods.experts.recipe import routed_loss

    model = copy.deepcopy(tiny_handle.model)
    adapter = inject(model, language_experts(LoRAConfig(rank=2, alpha=4.0), ("de", "fr")))
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.lora_B.normal_(std=0.1)
    g = torch.Generator().manual_seed(3)
    batch = {
        "input_features": torch.randn(3, 80, 40, generator=g),
        "decoder_input_ids": torch.randint(0, 50000, (3, 5), generator=g),
        "labels": torch.randint(0, 50000, (3, 5), generator=g),
        "langs": ["de", "fr", "de"],
    }
    batch["labels"][1, :2] = -100
    loss_fn = routed_loss(adapter)

    def grads(rows):
        sub = {
            k: (v[rows] if torch.is_tensor(v) else [v[i] for i in rows]) for k, v in batch.items()
        }
        model.zero_grad()
        loss_fn(model, sub).loss.backward()
        layer = adapter.layers["model.decoder.layers.0.fc1"]
        return layer.lora_A.grad.clone(), layer.lora_B.grad.clone()

    mixed_a, mixed_b = grads([0, 1, 2])
    de_a, de_b = grads([0, 2])
    fr_a, fr_b = grads([1])
    torch.testing.assert_close(mixed_a[0], de_a[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixed_b[0], de_b[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixed_a[1], fr_a[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixed_b[1], fr_b[1], atol=1e-5, rtol=1e-4)
    assert float(de_b[1].abs().max()) == 0.0  # the French expert gets nothing from German rows


def test_init_from_peft_adapters(trained, corpus_dir, tmp_path):
    final = trained.final_dir
    cfg = make_cfg(
        corpus_dir,
        tmp_path / "run",
        **{"recipe.params": {"rank": 4, "alpha": 8.0, "init_from": {"de": str(final / "de")}}},
    )
    recipe = build_recipe(cfg)
    from safetensors.torch import load_file

    saved = load_file(str(final / "babelora_experts.safetensors"))
    layer = recipe.adapter.layers["model.encoder.layers.0.fc1"]
    torch.testing.assert_close(layer.lora_B[0], saved["model.encoder.layers.0.fc1.lora_B"][0])
    assert float(layer.lora_B[1].detach().abs().max()) == 0.0  # French starts fresh

    cfg = make_cfg(
        corpus_dir,
        tmp_path / "run2",
        **{"recipe.params": {"rank": 4, "alpha": 8.0, "init_from_set": str(final)}},
    )
    layer = build_recipe(cfg).adapter.layers["model.encoder.layers.0.fc1"]
    torch.testing.assert_close(layer.lora_B, saved["model.encoder.layers.0.fc1.lora_B"])


def test_set_for_another_base_is_refused(trained, corpus_dir, tmp_path):
    params = {"rank": 4, "alpha": 8.0, "init_from_set": str(trained.final_dir)}
    cfg = make_cfg(
        corpus_dir, tmp_path / "run", **{"recipe.params": params, "model.tiny_random_seed": 1}
    )
    with pytest.raises(ModelLoadError, match=r"trained on tiny-random-whisper\(seed=0\)"):
        build_recipe(cfg)


def test_row_language_without_expert_is_a_clear_error(tmp_path):
    root = tmp_path / "corpus"
    write_corpus(root)  # de and fr rows
    cfg = make_cfg(
        root,
        tmp_path / "run",
        **{"recipe.params": {"rank": 4, "languages": ["de"]}, "data.languages": []},
    )
    with pytest.raises(
        LanguageError, match=r"utterance 'train-fr-0' has language 'fr'.*experts: de"
    ):
        build_recipe(cfg)
    cfg = make_cfg(root, tmp_path / "run", **{"recipe.params": {"rank": 4, "languages": ["de"]}})
    with pytest.raises(ConfigError, match=r"data.languages has \['fr'\]"):
        build_recipe(cfg)


def test_routing_an_unknown_language_names_the_experts(trained):
    from babelora.methods.loading import load_expert_set
    from babelora.models.whisper import tiny_random_whisper

    adapter = load_expert_set(tiny_random_whisper(seed=0), trained.final_dir)
    with pytest.raises(
        LanguageError, match="no experts for language 'es'; experts exist for: de, fr"
    ):
        adapter.set_routing(langs=["de", "es"])


def test_joint_lora_baseline_matches_the_experts_parameters():
    from pathlib import Path

    from babelora.methods.registry import load_config

    folder = Path(__file__).resolve().parents[3] / "configs" / "experts"
    joint = load_config(folder / "joint_lora.yaml")
    experts = load_config(folder / "experts_tiny.yaml")
    n_langs = len(experts.data.languages)
    assert joint.recipe.params["rank"] == experts.recipe.params["rank"] * n_langs  # matched
