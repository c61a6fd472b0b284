"""The `molora` recipe on a tiny random Whisper: it trains (aux losses logged, only experts,
routers and MGRF change), its folded per-language PEFT export equals the routed model, and its
config errors are clear."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from reference.corpus import base_config
from reference.tiny_models import randomize_experts

from babelora.adapters import LoRAConfig, export_peft, inject
from babelora.config import build_dataclass
from babelora.errors import ConfigError, LanguageError
from babelora.methods.loading import apply_peft_adapter
from babelora.methods.molora.model import load_molora, route_batch
from babelora.methods.molora.recipe import MoLoRAParams, molora_config
from babelora.methods.registry import build_recipe, train
from babelora.models.whisper import tiny_random_whisper
from babelora.train import checkpoint as ckpt
from babelora.train.config import TrainConfig, load_train_config
from babelora.train.data import build_run_data
from babelora.train.evaluation import build_eval_hook
from babelora.train.recipe import recipe_params

ADAPTER_PARAM = re.compile(r".*\.(lora_A|lora_B|router\.\w+|mgrf\.[\w.]+)$")


def make_cfg(corpus_dir: Path, out: Path, params: dict, **extra) -> TrainConfig:
    extra = {"recipe.name": "molora", "recipe.params": params, **extra}
    return build_dataclass(TrainConfig, base_config(corpus_dir, out, **extra))


def one_batch(cfg: TrainConfig, recipe) -> dict:
    data = build_run_data(cfg, recipe, 1, 0)
    return next(iter(data.train_loader))


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(
            input_features=batch["input_features"],
            decoder_input_ids=batch["decoder_input_ids"],
            use_cache=False,
        ).logits


def test_trains_logs_aux_losses_and_exports(corpus_dir, tmp_path):
    params = {
        "molora": {"router": "learned", "num_experts": 3, "top_k": 2, "lora": {"rank": 4}},
        "mgrf": {},
    }
    extra = {
        "max_steps": 4,
        "data.batch_seconds": 40.0,  # one batch holds the whole corpus: loss must go down
        "optim.lr": 1e-2,
        "optim.warmup_steps": 0,
        "optim.schedule": "constant",
    }
    result = train(make_cfg(corpus_dir, tmp_path / "run", params, **extra))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < losses[0]
    assert all("train/aux/load_balance" in r and "train/aux/z_loss" in r for r in rows)
    assert all(r["train/aux/load_balance"] >= 0.99 for r in rows)  # 1.0 at uniform routing
    trained = ckpt.load_checkpoint(result.last_checkpoint).trainable
    assert trained and all(ADAPTER_PARAM.fullmatch(name) for name in trained), list(trained)
    assert any(".mgrf." in name for name in trained) and any(".router." in name for name in trained)
    files = {p.name for p in result.final_dir.iterdir()}
    assert {"babelora_experts.json", "babelora_experts.safetensors", "mgrf.json"} <= files
    info = json.loads((result.final_dir / "export_info.json").read_text())
    assert (
        info["peft"] == {} and info["peft_exact"] is False and "router learned" in info["peft_note"]
    )


def test_only_experts_routers_and_mgrf_change(corpus_dir, tmp_path):
    params = {
        "molora": {
            "router": "hybrid",
            "routing_level": "utterance",
            "top_k": 1,
            "lora": {"rank": 4},
        },
        "mgrf": {"pooling": "mean"},
        "router_lr": 5e-2,
    }
    cfg = make_cfg(corpus_dir, tmp_path / "run", params, **{"optim.lr": 1e-2})
    recipe = build_recipe(cfg)
    model = recipe.model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert [g["lr"] for g in recipe.param_groups] == [1e-2, 5e-2, 1e-2]
    opt = torch.optim.AdamW(recipe.param_groups)
    batch = one_batch(cfg, recipe)
    for _ in range(2):
        out = recipe.loss_fn(model, batch)
        loss = out.loss + sum(out.aux_losses.values())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert set(out.aux_losses) == {"load_balance", "z_loss"}
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(ADAPTER_PARAM.fullmatch(k) for k in changed), sorted(changed)
    assert any(".router." in k for k in changed) and any(".mgrf." in k for k in changed)
    assert any(".lora_A" in k for k in changed) and any(".lora_B" in k for k in changed)


def test_folded_language_export_equals_routed_model(corpus_dir, tmp_path):
    params = {"molora": {"router": "language", "num_shared": 1, "lora": {"rank": 4}}}
    cfg = make_cfg(corpus_dir, tmp_path / "run", params, **{"data.batch_seconds": 40.0})
    recipe = build_recipe(cfg)
    adapter = recipe.adapter
    randomize_experts(adapter, seed=3, scale=0.3)
    recipe.export(recipe.model, tmp_path / "final")
    info = json.loads((tmp_path / "final" / "export_info.json").read_text())
    assert info["peft"] == {"de": "de", "fr": "fr", "shared": "shared"} and info["peft_exact"]
    batch = one_batch(cfg, recipe)
    assert {"de", "fr"} <= set(batch["langs"])
    recipe.model.eval()
    route_batch(adapter, batch)
    routed = logits(recipe.model, batch)
    with adapter.disabled():
        assert (logits(recipe.model, batch) - routed).abs().max() > 1e-2  # experts do act
    for lang in ("de", "fr"):
        rows = [i for i, x in enumerate(batch["langs"]) if x == lang]
        folded = apply_peft_adapter(tiny_random_whisper(seed=0), tmp_path / "final" / lang)
        got = logits(folded.model, batch)[rows]
        assert (got - routed[rows]).abs().max() < 5e-4, lang  # merged in fp32
    loaded = tiny_random_whisper(seed=0)  # the set itself, loaded as the decode CLI does
    again = load_molora(loaded, tmp_path / "final")
    route_batch(again, batch)
    assert (logits(loaded.model, batch) - routed).abs().max() < 1e-5


def test_languages_default_to_the_run_languages(corpus_dir, tmp_path):
    params = {"molora": {"router": "hybrid", "lora": {"rank": 2}}}
    cfg = make_cfg(corpus_dir, tmp_path / "run", params, **{"data.languages": []})
    recipe = build_recipe(cfg)  # de and fr from the training manifest, sorted
    assert recipe.adapter.config.languages == ("de", "fr")
    assert recipe.adapter.expert_names() == ["shared0", "de", "fr"]


def test_init_experts_from_peft_adapters(corpus_dir, tmp_path):
    donor = tiny_random_whisper(seed=0)
    donor_adapter = inject(donor.model, LoRAConfig(rank=4))
    randomize_experts(donor_adapter, seed=5)
    export_peft(donor_adapter, tmp_path / "de_lora")
    params = {
        "molora": {"router": "language", "lora": {"rank": 4}},
        "init_experts": {"de": str(tmp_path / "de_lora")},
    }
    recipe = build_recipe(make_cfg(corpus_dir, tmp_path / "run", params))
    slot = recipe.adapter.expert_names().index("de")
    for name, layer in recipe.adapter.layers.items():
        want = donor_adapter.layers[name]
        assert torch.equal(layer.lora_A[slot], want.lora_A[0])
        assert torch.allclose(layer.lora_B[slot], want.lora_B[0])
        assert not layer.lora_B[0].any()  # the shared expert starts fresh


def test_unknown_language_error_or_shared(corpus_dir, tmp_path):
    params = {"molora": {"router": "language", "languages": ["de"], "lora": {"rank": 4}}}
    cfg = make_cfg(corpus_dir, tmp_path / "run", params, **{"data.batch_seconds": 40.0})
    recipe = build_recipe(cfg)
    batch = one_batch(cfg, recipe)
    with pytest.raises(LanguageError, match="unknown_language: shared"):
        recipe.loss_fn(recipe.model, batch)
    shared = {**params, "unknown_language": "shared"}
    recipe = build_recipe(make_cfg(corpus_dir, tmp_path / "run2", shared))
    assert recipe.loss_fn(recipe.model, batch).loss.isfinite()


@pytest.mark.parametrize(
    ("params", "extra", "message"),
    [
        (
            {"molora": {"router": "language"}},
            {"data.languages": [], "data.tasks": ["st"]},  # the corpus has no ST line
            "needs languages",
        ),
        ({"molora": {"rnak": 4}}, {}, "recipe.params.molora.rnak"),
        ({"molora": {"router": "learned", "num_experts": 2, "top_k": 3}}, {}, "top_k=3"),
        ({"molora": {"router": "learned"}}, {"data.languages": []}, "needs routed experts"),
        ({"init_experts": {"xx": "/nowhere"}}, {}, "no expert named 'xx'"),
        ({"router_lr": 0}, {}, "router_lr must be > 0"),
        ({"mgrf": {"pooling": "max"}}, {}, "recipe.params.mgrf.pooling"),
        ({"molora": {"router": "learned", "num_experts": 2}, "init_from_set": "x"}, {}, "one"),
    ],
)
def test_config_errors(corpus_dir, tmp_path, params, extra, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_recipe(make_cfg(corpus_dir, tmp_path / "run", params, **extra))


def test_decode_hook_routes_each_row_with_the_recipes_adapter(corpus_dir, tmp_path):
    """The one `decode` hook takes the adapter from the recipe (no global table): every row is
    routed to its own language, and the routing state is cleared afterwards."""
    from babelora.data.manifest import read_manifest

    cfg = make_cfg(corpus_dir, tmp_path / "run", {}, **{"eval.hook": "decode"})
    recipe = build_recipe(cfg)
    seen = []
    set_routing = recipe.adapter.set_routing

    def spy(**kwargs):
        seen.extend(kwargs["langs"])
        return set_routing(**kwargs)

    recipe.adapter.set_routing = spy
    utts = read_manifest(corpus_dir / "dev.jsonl")
    metrics = build_eval_hook(cfg)(recipe.model.eval(), recipe, utts, step=0)
    assert sorted(seen) == sorted(u.lang for u in utts) and "error_rate" in metrics
    ctx = recipe.adapter.context
    assert not ctx.cache_decisions and ctx.lang_ids is None  # cleared for training


CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "molora"


def test_shipped_molora_configs_compare_at_equal_size():
    # the Whisper-side MoLoRA configs (molora_llm_* put MoLoRA inside the speech-LLM's LLM)
    paths = sorted(p for p in CONFIGS.glob("*.yaml") if not p.stem.startswith("molora_llm"))
    assert {p.stem for p in paths} >= {"molora_lang", "molora_learned", "molora_hybrid"}
    for path in paths:
        cfg = load_train_config(path)
        params = recipe_params(MoLoRAParams, cfg)
        mcfg = molora_config(params, cfg.data.languages)
        assert (mcfg.num_shared, mcfg.num_routed, mcfg.lora.rank) == (1, 6, 8), path.name
        assert cfg.ddp_find_unused_parameters and cfg.eval.hook == "decode"


@pytest.mark.slow
def test_shipped_mgrf_config_runs_with_routed_dev_decoding(corpus_dir, tmp_path):
    overrides = [
        f"output_dir={tmp_path / 'run'}",
        "model.tiny_random=true",
        f"data.train=[{corpus_dir / 'train.jsonl'}]",
        f"data.dev=[{corpus_dir / 'dev.jsonl'}]",
        "data.languages=[de,fr]",
        "data.batch_seconds=20",
        "recipe.params.molora.lora.rank=2",
        "eval.max_new_tokens=3",
        "max_steps=2",
        "optim.warmup_steps=1",
        "progress_bar=false",
    ]
    result = train(load_train_config(CONFIGS / "molora_mgrf.yaml", overrides))
    assert result.finished
    assert {"wer/de", "wer/fr", "dev_loss"} <= set(result.eval_metrics)
    assert result.eval_metrics["decode_errors"] == 0
    assert (result.final_dir / "mgrf.safetensors").is_file()
