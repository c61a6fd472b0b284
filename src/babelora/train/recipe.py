"""What the engine needs to know of a method: a `Recipe` (model, loss, export), nothing more.

A recipe builds the model, marks which parameters train (`requires_grad`), and says how to
compute the loss of a batch and how to export the result. The training loop knows nothing else
about the method. Methods define their builders `(TrainConfig, params) -> Recipe` under
`babelora/methods/`, and `babelora/methods/registry.py` names them all in one dict
(docs/adding_a_recipe.md).

Loss contract: `loss_fn(model, batch) -> LossOutput`, where `loss` is the **sum** over target
tokens (the loop divides by the number of target tokens in the whole global batch, across
micro-batches and ranks, so every token weighs the same whatever the batch split) and
`aux_losses` are scalars (e.g. MoE balance losses) that the loop adds with the weights from
`recipe.aux_loss_weights` and logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from babelora.adapters import AdapterHandle
from babelora.config import build_dataclass
from babelora.data.collate import IGNORE_INDEX
from babelora.train.config import ModelConfig, TrainConfig
from babelora.train.encoder_cache import masked_cross_attention


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
    adapter: AdapterHandle | None = None  # expert layers whose routing decoding sets per batch
    accepts_encoder_states: bool = False  # loss_fn takes cached encoder states (seq2seq_loss
    # does): the engine may then train a frozen encoder's decoder from train/encoder_cache.py


RecipeBuilder = Callable[[TrainConfig], Recipe]  # what the loop calls to build a run's recipe


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


def seq2seq_forward(model: nn.Module, batch: dict[str, Any]) -> Any:
    """The model's output on a batch of log-mel features or of cached encoder states
    (`encoder_states`, `encoder_lens`: train/encoder_cache.py; rows' cross-attention masked to
    their own positions)."""
    if "encoder_states" not in batch:
        return model(
            input_features=batch["input_features"],
            decoder_input_ids=batch["decoder_input_ids"],
            use_cache=False,
        )
    dtype = next(p for p in model.parameters()).dtype
    states = batch["encoder_states"].to(dtype)
    with masked_cross_attention(model, batch["encoder_lens"], states.shape[1]):
        return model(
            encoder_outputs=(states,),
            decoder_input_ids=batch["decoder_input_ids"],
            use_cache=False,
        )


def seq2seq_loss(model: nn.Module, batch: dict[str, Any]) -> LossOutput:
    """Summed token cross-entropy of a Whisper-style encoder-decoder (logits in fp32)."""
    logits = seq2seq_forward(model, batch).logits.float()
    loss = F.cross_entropy(
        logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return LossOutput(loss=loss)
