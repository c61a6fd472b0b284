"""Every training recipe babelora ships, in one literal table, and the entry points that use it.

`recipe.name` in a config picks a row of RECIPES; `recipe.params` is checked against that row's
dataclass when the YAML is loaded (`load_config`), so a typo fails before any model is built.
The engine (`babelora.train`) knows no method: `train(cfg)` hands it the row's builder.
Adding a recipe is one line here (docs/adding_a_recipe.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babelora.errors import ConfigError
from babelora.methods.experts.distill_recipe import DistillParams, build_distill
from babelora.methods.experts.fusion_recipe import (
    GatedFusionParams,
    WeightFusionParams,
    build_gated_fusion,
    build_weight_fusion,
)
from babelora.methods.experts.recipe import ExpertsParams, build_experts
from babelora.methods.finetune.recipe import FullParams, LoraParams, build_full, build_lora
from babelora.methods.molora.recipe import MoLoRAParams, build_molora
from babelora.methods.speech_llm.recipe import SpeechLLMParams, build_speech_llm_recipe
from babelora.train.config import TrainConfig, load_train_config
from babelora.train.recipe import Recipe, recipe_params


@dataclass(frozen=True)
class RecipeSpec:
    """A recipe: its typed `recipe.params` and the builder that takes them."""

    params: type
    build: Callable[[TrainConfig, Any], Recipe]
    summary: str


RECIPES: dict[str, RecipeSpec] = {
    "full": RecipeSpec(FullParams, build_full, "full fine-tuning of Whisper"),
    "lora": RecipeSpec(LoraParams, build_lora, "one PEFT LoRA adapter"),
    "experts": RecipeSpec(ExpertsParams, build_experts, "one LoRA expert per language"),
    "distill": RecipeSpec(DistillParams, build_distill, "experts -> one student LoRA"),
    "weight_fusion": RecipeSpec(
        WeightFusionParams, build_weight_fusion, "learned weight-space fusion of experts"
    ),
    "gated_fusion": RecipeSpec(
        GatedFusionParams, build_gated_fusion, "learned per-input gate over experts"
    ),
    "molora": RecipeSpec(MoLoRAParams, build_molora, "MoLoRA: routed + shared LoRA experts"),
    "speech_llm": RecipeSpec(
        SpeechLLMParams, build_speech_llm_recipe, "speech encoder -> projector -> causal LM"
    ),
}


def recipe_spec(name: str) -> RecipeSpec:
    """The row of RECIPES named `name` (ConfigError naming the known ones)."""
    spec = RECIPES.get(name)
    if spec is None:
        raise ConfigError(f"recipe.name: unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return spec


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check `recipe.name` and `recipe.params` (errors name the dotted key); returns `cfg`."""
    recipe_params(recipe_spec(cfg.recipe.name).params, cfg)
    return cfg


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """YAML + dotted overrides -> a TrainConfig whose recipe and its params are validated."""
    return validate(load_train_config(path, list(overrides)))


def build_recipe(cfg: TrainConfig) -> Recipe:
    """Build the recipe named by `cfg.recipe.name` with its validated params."""
    spec = recipe_spec(cfg.recipe.name)
    recipe = spec.build(cfg, recipe_params(spec.params, cfg))
    if not any(p.requires_grad for p in recipe.model.parameters()):
        raise ConfigError(f"recipe {cfg.recipe.name!r} left no trainable parameters")
    return recipe


def train(cfg: TrainConfig, evaluate_fn: Any = None) -> Any:
    """Run (or resume) `cfg` with its registered recipe (babelora.train.loop.train)."""
    from babelora.train.loop import train as run

    return run(validate(cfg), build_recipe, evaluate_fn)
