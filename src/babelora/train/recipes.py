"""Recipes: what a training run trains. A registry of builders `TrainConfig -> Recipe`.

A recipe builds the model, marks which parameters train (`requires_grad`), and says how to
compute the loss of a batch and how to export the result. The training loop knows nothing else
about the method, so a new method is one builder function plus `@register_recipe("name")`
(docs/adding_a_recipe.md). Built in:

- `full`: full fine-tuning of Whisper (optionally with the encoder or decoder frozen);
- `lora`: one PEFT LoRA adapter (`peft.get_peft_model`), exported in PEFT's format.

Loss contract: `loss_fn(model, batch) -> LossOutput`, where `loss` is the **sum** over target
tokens (the loop divides by the number of target tokens in the whole global batch, across
micro-batches and ranks, so every token weighs the same whatever the batch split) and
`aux_losses` are scalars (e.g. MoE balance losses) that the loop adds with the weights from
`recipe.aux_loss_weights` and logs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from babelora.config import build_dataclass
from babelora.data.collate import IGNORE_INDEX
from babelora.errors import ConfigError
from babelora.train.config import ModelConfig, TrainConfig


@dataclass
class LossOutput:
    """What a recipe's loss function returns for one micro-batch."""

    loss: torch.Tensor  # sum of the per-token losses over the batch's target tokens
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)  # scalar auxiliary losses


LossFn = Callable[[nn.Module, dict[str, Any]], LossOutput]
ExportFn = Callable[[nn.Module, Path], None]


@dataclass
class Recipe:
    """A model ready to train and how to train and export it.

    `model` is what the loop prepares with Accelerate (parameters with requires_grad train and
    are checkpointed by name); `param_groups`, when given, replaces the default AdamW groups.
    """

    model: nn.Module
    tokenizer: Any
    prompt_style: str
    n_mels: int
    loss_fn: LossFn
    export: ExportFn
    aux_loss_weights: dict[str, float] = field(default_factory=dict)  # defaults; config overrides
    param_groups: list[dict[str, Any]] | None = None
    max_target_tokens: int = 448


RecipeBuilder = Callable[[TrainConfig], Recipe]
RECIPES: dict[str, RecipeBuilder] = {}
BUILTIN_RECIPE_MODULES: tuple[str, ...] = (
    # modules that register more recipes when imported; one line per module
    "babelora.train.speech_llm_recipe",  # speech_llm (encoder -> (MoE) projector -> causal LM)
    "babelora.train.molora_recipe",  # molora (shared + routed LoRA experts, MGRF; issue 5)
    "babelora.train.experts_recipe",  # experts (one LoRA expert per language, one run)
    "babelora.train.distill_recipe",  # distill (experts -> one student LoRA, CE + KL)
    "babelora.train.fusion_recipe",  # weight_fusion, gated_fusion (of an experts set)
)


def register_recipe(name: str) -> Callable[[RecipeBuilder], RecipeBuilder]:
    """Decorator: make a builder available as `recipe.name: <name>` in configs."""

    def add(builder: RecipeBuilder) -> RecipeBuilder:
        if name in RECIPES and RECIPES[name] is not builder:
            raise ValueError(f"recipe {name!r} is already registered")
        RECIPES[name] = builder
        return builder

    return add


def build_recipe(cfg: TrainConfig) -> Recipe:
    """Build the recipe named by `cfg.recipe.name` (ConfigError when unknown)."""
    for module in BUILTIN_RECIPE_MODULES:
        importlib.import_module(module)
    builder = RECIPES.get(cfg.recipe.name)
    if builder is None:
        raise ConfigError(
            f"recipe.name: unknown recipe {cfg.recipe.name!r}; known: {', '.join(sorted(RECIPES))}"
        )
    recipe = builder(cfg)
    if not any(p.requires_grad for p in recipe.model.parameters()):
        raise ConfigError(f"recipe {cfg.recipe.name!r} left no trainable parameters")
    return recipe


def recipe_params(cls: type, cfg: TrainConfig) -> Any:
    """Validate `recipe.params` against a recipe's own dataclass (errors name the dotted key)."""
    return build_dataclass(cls, dict(cfg.recipe.params), "recipe.params")


def load_backbone(model_cfg: ModelConfig) -> Any:
    """The pretrained Whisper (a WhisperHandle) named by the model config."""
    from babelora.models.whisper import load_whisper, tiny_random_whisper

    if model_cfg.tiny_random:
        with torch.random.fork_rng():  # its own seed must not move the run's RNG
            handle = tiny_random_whisper(model_cfg.tiny_random_seed)
    else:
        handle = load_whisper(model_cfg.name, allow_pickle=model_cfg.allow_pickle)
    if model_cfg.prompt_style is not None:
        handle.prompt_style = model_cfg.prompt_style
    return handle


def seq2seq_loss(model: nn.Module, batch: dict[str, Any]) -> LossOutput:
    """Summed token cross-entropy of a Whisper-style encoder-decoder (logits in fp32)."""
    out = model(
        input_features=batch["input_features"],
        decoder_input_ids=batch["decoder_input_ids"],
        use_cache=False,
    )
    logits = out.logits.float()
    loss = F.cross_entropy(
        logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return LossOutput(loss=loss)


# -- full fine-tuning -----------------------------------------------------------------------------
@dataclass(frozen=True)
class FullParams:
    """`recipe.params` of the `full` recipe."""

    train_encoder: bool = True  # False freezes the encoder
    train_decoder: bool = True  # False freezes the decoder (and the tied output projection)


def _export_full(tokenizer: Any) -> ExportFn:
    def export(model: nn.Module, out_dir: Path) -> None:
        model.save_pretrained(str(out_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(out_dir))

    return export


@register_recipe("full")
def build_full(cfg: TrainConfig) -> Recipe:
    params = recipe_params(FullParams, cfg)
    handle = load_backbone(cfg.model)
    model = handle.model
    model.requires_grad_(True)
    model.get_encoder().embed_positions.requires_grad_(False)  # fixed sinusoids in Whisper
    if not params.train_encoder:
        model.get_encoder().requires_grad_(False)
    if not params.train_decoder:
        model.get_decoder().requires_grad_(False)
    return Recipe(
        model=model,
        tokenizer=handle.tokenizer,
        prompt_style=handle.prompt_style,
        n_mels=handle.n_mels,
        loss_fn=seq2seq_loss,
        export=_export_full(handle.tokenizer),
        max_target_tokens=int(model.config.max_target_positions),
    )


# -- one LoRA adapter -----------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraParams:
    """`recipe.params` of the `lora` recipe (LoRA: Hu et al. 2021, arXiv:2106.09685)."""

    rank: int = 8
    alpha: float = 16.0  # scale = alpha / rank
    dropout: float = 0.0  # dropout on the LoRA input
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    )  # linear layers by name (self- and cross-attention share q/k/v/out names)
    parts: list[str] = field(default_factory=lambda: ["encoder", "decoder"])  # where to adapt

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"recipe.params.rank must be >= 1, got {self.rank}")
        bad = [p for p in self.parts if p not in ("encoder", "decoder")]
        if bad or not self.parts:
            raise ConfigError(
                f"recipe.params.parts must name encoder and/or decoder, got {self.parts}"
            )
        if not self.target_modules:
            raise ConfigError("recipe.params.target_modules is empty")


def lora_target_regex(target_modules: list[str], parts: list[str]) -> str:
    """PEFT `target_modules` regex (full match) for the named linears in the given Whisper parts."""
    names = "|".join(sorted(set(target_modules)))
    where = "|".join(sorted(set(parts)))
    return rf".*model\.({where})\.layers\.\d+\.(?:\w+\.)?({names})"


def _export_peft(model: nn.Module, out_dir: Path) -> None:
    model.save_pretrained(str(out_dir), safe_serialization=True)


@register_recipe("lora")
def build_lora(cfg: TrainConfig) -> Recipe:
    from peft import LoraConfig, get_peft_model

    params = recipe_params(LoraParams, cfg)
    handle = load_backbone(cfg.model)
    lora_cfg = LoraConfig(
        r=params.rank,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=lora_target_regex(params.target_modules, params.parts),
        bias="none",
    )
    try:
        model = get_peft_model(handle.model, lora_cfg)
    except ValueError as err:
        raise ConfigError(f"recipe.params.target_modules: {str(err).splitlines()[0]}") from None
    return Recipe(
        model=model,
        tokenizer=handle.tokenizer,
        prompt_style=handle.prompt_style,
        n_mels=handle.n_mels,
        loss_fn=seq2seq_loss,
        export=_export_peft,
        max_target_tokens=int(handle.model.config.max_target_positions),
    )
