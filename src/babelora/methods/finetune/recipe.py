"""Plain fine-tuning baselines: `full` (every weight of Whisper, optionally with the encoder or
decoder frozen) and `lora` (one PEFT LoRA adapter, exported in PEFT's format).

They are the joint baselines the language experts are compared with, and the per-language
fine-tunes that LoRS-Merging merges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from babelora.errors import ConfigError
from babelora.train.config import TrainConfig
from babelora.train.recipe import ExportFn, Recipe, load_backbone, seq2seq_loss


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


def build_full(cfg: TrainConfig, params: FullParams) -> Recipe:
    """Full fine-tuning of Whisper."""
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
        accepts_encoder_states=True,  # seq2seq_loss: train_encoder false trains on cached states
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


def _export_peft(signature: dict[str, Any]) -> ExportFn:
    """PEFT's save_pretrained, plus the base signature (taken before training) beside it, so
    that decoding and merging can check the base (models.base_check)."""
    from babelora.models.base_check import save_signature

    def export(model: nn.Module, out_dir: Path) -> None:
        model.save_pretrained(str(out_dir), safe_serialization=True)
        save_signature(out_dir, signature)

    return export


def build_lora(cfg: TrainConfig, params: LoraParams) -> Recipe:
    """One PEFT LoRA adapter on Whisper."""
    from peft import LoraConfig, get_peft_model

    from babelora.models.base_check import base_signature

    handle = load_backbone(cfg.model)
    signature = base_signature(handle.model, handle.name)
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
        export=_export_peft(signature),
        max_target_tokens=int(handle.model.config.max_target_positions),
        accepts_encoder_states=True,  # seq2seq_loss: parts [decoder] trains on cached states
    )
