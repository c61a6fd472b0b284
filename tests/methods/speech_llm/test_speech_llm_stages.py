"""The `speech_llm` recipe and `babelora train-stages`: ASR -> ST -> code-switched ST on a tiny
random Whisper, replay mixing, stage chaining, skip-on-rerun, and every shipped stage config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from reference.corpus import write_corpus

from babelora.cli.main import main
from babelora.config import build_dataclass
from babelora.data.manifest import read_manifest, write_manifest
from babelora.errors import ConfigError
from babelora.methods.registry import build_recipe
from babelora.methods.speech_llm.recipe import SpeechLLMParams, load_speech_llm
from babelora.methods.speech_llm.stages import load_stages, replay_mix
from babelora.train.config import TrainConfig
from babelora.train.recipe import recipe_params

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "speech_llm"

PARAMS = {
    "model": {
        "whisper_prefix": "english",
        "freeze_lm": False,
        "projector": {
            "kind": "moe",
            "downsample": 4,
            "moe": {"num_groups": 3, "experts_per_group": 2, "group_langs": ["de", "fr", "en"]},
        },
        "losses": {"lang_weight": 0.1, "balance_weight": 0.01, "transition_weight": 0.5},
    }
}


@pytest.fixture(scope="module")
def stage_data(tmp_path_factory) -> Path:
    """ASR, ST and code-switched ST manifests over the same tiny audio (different ids)."""
    root = tmp_path_factory.mktemp("speech_llm_corpus")
    asr = read_manifest(write_corpus(root, {"de": 4, "fr": 4}, name="asr"))
    st = [
        u.__class__(
            **{
                **u.__dict__,
                "id": u.id.replace("asr", "st"),
                "task": "st",
                "translation": "hello there",
                "target_lang": "en",
            }
        )
        for u in asr
    ]
    cs = []
    for u in st:
        half = u.duration / 2
        segs = [
            {"start": 0.0, "end": half, "lang": u.lang},
            {"start": half, "end": u.duration, "lang": "en"},
        ]
        row = {**u.to_json(), "id": u.id.replace("st", "cs"), "segments": segs}
        cs.append(row)
    write_manifest(st, root / "st.jsonl")
    (root / "cs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cs), encoding="utf-8")
    return root


def stage_config(root: Path, name: str, task: str) -> dict:
    return {
        "output_dir": "unused",
        "model": {"tiny_random": True},
        "data": {
            "train": [str(root / f"{name}.jsonl")],
            "languages": ["de", "fr"],
            "tasks": [task],
            "batch_seconds": 8.0,
        },
        "optim": {"lr": 3e-3, "warmup_steps": 0, "schedule": "constant"},
        "recipe": {"name": "speech_llm", "params": PARAMS},
        "checkpoint": {"save_every": 2, "keep_last": 1, "keep_best": 0},
        "max_steps": 2,
        "log_every": 1,
        "progress_bar": False,
        "mixed_precision": "no",
    }


def write_stages(root: Path, out: Path) -> Path:
    for name, task in (("asr", "asr"), ("st", "st"), ("cs", "st")):
        (root / f"{name}.yaml").write_text(yaml.safe_dump(stage_config(root, name, task)))
    stages = {
        "output_dir": str(out),
        "stages": [
            {"name": "asr", "config": "asr.yaml"},
            {"name": "st", "config": "st.yaml", "replay_ratio": 0.5},
            {"name": "cs_st", "config": "cs.yaml", "replay_ratio": 0.2},
        ],
    }
    path = root / "stages.yaml"
    path.write_text(yaml.safe_dump(stages))
    return path


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_three_stages_end_to_end(stage_data, tmp_path, capsys):
    stages = write_stages(stage_data, tmp_path / "run")
    assert main(["train-stages", str(stages)]) == 0
    run = tmp_path / "run"
    for name in ("asr", "st", "cs_st"):
        assert (run / name / "final" / "speech_llm.safetensors").is_file(), name
    mix = read_manifest(run / "st" / "train_mix.jsonl")
    replayed = [u for u in mix if u.extra.get("replay")]
    assert len(replayed) == 8 and all(u.task == "asr" for u in replayed)  # 0.5 of 16
    assert len(read_manifest(run / "cs_st" / "train_mix.jsonl")) == 10  # 8 own + 2 replayed
    rows = [r for r in metrics(run / "st") if "train/loss" in r]
    assert rows and {"train/aux/lang", "train/aux/balance", "train/aux/transition"} <= set(rows[0])
    assert "train/aux/transition" not in metrics(run / "asr")[0]  # stage 1: no reference router

    # a re-run finds every stage finished
    assert main(["train-stages", str(stages)]) == 0
    assert capsys.readouterr().out.count("already finished") == 3

    model = load_speech_llm(run / "cs_st" / "final")
    feats = [torch.randn(80, 100)]
    batch = model.make_batch(feats, ["st"], ["de"], ["en"])
    assert isinstance(model.transcribe(batch, max_new_tokens=3)[0], str)


def test_stage_chaining_loads_previous_weights(stage_data, tmp_path):
    cfg = build_dataclass(TrainConfig, stage_config(stage_data, "asr", "asr"))
    first = build_recipe(cfg)
    export = tmp_path / "stage1"
    export.mkdir()
    with torch.no_grad():
        first.model.projector.moe.router.weight.add_(1.0)
    first.export(first.model, export)
    params = {**PARAMS, "init_from": str(export)}
    second = build_recipe(
        build_dataclass(
            TrainConfig,
            {
                **stage_config(stage_data, "st", "st"),
                "recipe": {"name": "speech_llm", "params": params},
            },
        )
    )
    moe = second.model.projector.moe
    torch.testing.assert_close(moe.router.weight, first.model.projector.moe.router.weight)
    torch.testing.assert_close(moe.reference_router.weight, moe.router.weight)  # transition ref
    assert set(second.aux_loss_weights) == {"lang", "balance", "transition"}


def test_replay_mix_share_and_seed(stage_data):
    own = read_manifest(stage_data / "st.jsonl")
    pool = read_manifest(stage_data / "asr.jsonl")
    mix = replay_mix(own, pool, 0.2, seed=3)
    assert len(mix) == 10 and sum(bool(u.extra.get("replay")) for u in mix) == 2
    assert [u.id for u in mix] == [u.id for u in replay_mix(own, pool, 0.2, seed=3)]
    assert replay_mix(own, pool, 0.0, seed=3) == own


def test_recipe_config_errors(stage_data):
    bad = {**PARAMS, "model": {**PARAMS["model"], "encoder": "openai/whisper-small"}}
    cfg = build_dataclass(
        TrainConfig,
        {**stage_config(stage_data, "asr", "asr"), "recipe": {"name": "speech_llm", "params": bad}},
    )
    with pytest.raises(ConfigError, match="model.encoder"):
        recipe_params(SpeechLLMParams, cfg)
    with pytest.raises(ConfigError, match="replay_ratio"):
        build_dataclass(
            type(load_stages(CONFIGS / "stages.yaml")),
            {"stages": [{"name": "a", "config": "x", "replay_ratio": 1.0}]},
        )
    with pytest.raises(ConfigError, match="not an earlier stage"):
        build_dataclass(
            type(load_stages(CONFIGS / "stages.yaml")),
            {"stages": [{"name": "a", "config": "x", "replay_from": ["b"]}]},
        )


def test_every_speech_llm_stage_config_is_used_by_a_stages_file():
    from babelora.methods.speech_llm.stages import _stage_train_config

    files = sorted(CONFIGS.glob("*.yaml"))
    stage_files = [f for f in files if f.name.startswith("stages")]
    assert len(stage_files) >= 2 and len(files) > len(stage_files)
    used = set()
    for path in stage_files:
        stages = load_stages(path)
        for stage in stages.stages:
            cfg = _stage_train_config(stages, stage, path.parent, [])
            assert cfg.recipe.name == "speech_llm"
            recipe_params(SpeechLLMParams, cfg)
            used.add(stage.config)
    assert used == {f.name for f in files if f not in stage_files}
