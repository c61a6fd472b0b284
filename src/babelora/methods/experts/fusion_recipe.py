"""Fusion of LoRA language experts, trained on dev data with the experts frozen (Interspeech 2025).

Two recipes over an `experts` run's set (methods.md section 2.5; the paper's fusion formula is
not known, so both readings are here):

- `weight_fusion`: dW = sum_l w_l * dW_l with learnable weights, one per language and layer
  (`per_layer`) or one per language for the whole model (`global`), initialised to 1/L and
  fitted by gradient descent on the token CE of the given data. Exported as ONE PEFT adapter:
  the weighted sum re-factorised to rank `rank` by truncated SVD (adapters.fuse_weight_space),
  its relative reconstruction error written to fusion.json. Language-agnostic: no routing.
- `gated_fusion`: output-space mixture y = W0 x + sum_l g_l(x) dW_l x, g = softmax of a learned
  linear gate on the masked mean of each layer's input (adapters.gated_fusion_config; one
  decision per utterance). Decoder layers pool over the prompt only, exactly what decoding
  sees on its first step (the decision is then cached). Exported as an expert set with its
  gates (input-dependent, so not expressible as one PEFT adapter); decode with `--experts`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from babelora.adapters import AdapterHandle, inject
from babelora.data.collate import IGNORE_INDEX
from babelora.decode.routing import encoder_mask
from babelora.errors import ConfigError
from babelora.methods.experts.expert_sets import (
    base_name,
    export_expert_set,
    language_expert_config,
    load_set_experts,
    resolve_expert_languages,
)
from babelora.methods.experts.fusion import (
    fuse_weight_space,
    gated_fusion_config,
    learned_fusion_config,
)
from babelora.models.base_check import write_base_signature
from babelora.train.config import TrainConfig
from babelora.train.encoder_cache import encoder_frames
from babelora.train.recipe import LossOutput, Recipe, load_backbone

log = logging.getLogger("babelora.train")


@dataclass(frozen=True)
class WeightFusionParams:
    """`recipe.params` of `weight_fusion`."""

    experts: str = ""  # the experts set folder (an `experts` run's final/); required
    granularity: Literal["per_layer", "global"] = "per_layer"  # one weight per language and
    # layer, or per language for the whole model
    rank: int | None = None  # rank of the exported fused LoRA; None = the experts' rank
    # (the sum of all experts has rank L*r: a smaller rank truncates, error reported)

    def __post_init__(self) -> None:
        if not self.experts:
            raise ConfigError("recipe.params.experts: name the experts set folder to fuse")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"recipe.params.rank must be >= 1, got {self.rank}")


@dataclass(frozen=True)
class GatedFusionParams:
    """`recipe.params` of `gated_fusion`."""

    experts: str = ""  # the experts set folder; required
    train_experts: bool = False  # also fine-tune the experts (default: only the gates train)
    router_init_std: float = 0.02  # gates start near uniform (small random logits)

    def __post_init__(self) -> None:
        if not self.experts:
            raise ConfigError("recipe.params.experts: name the experts set folder to fuse")


def _languages(cfg: TrainConfig, experts: str) -> tuple[Any, list[str]]:
    set_cfg = language_expert_config(experts)
    langs = list(set_cfg.languages)
    extra = [x for x in cfg.data.languages if x not in langs]
    if extra:
        raise ConfigError(f"data.languages has {extra}, which {experts} has no expert for")
    if not cfg.data.languages:
        resolve_expert_languages(cfg, langs)
    return set_cfg, langs


def tie_global_weights(adapter: AdapterHandle) -> nn.Parameter:
    """Make every layer's fusion-weight router share one (L,) parameter."""
    layers = list(adapter.layers.values())
    shared = layers[0].router.weight
    for layer in layers[1:]:
        layer.router.weight = shared
    return shared


def _unique(params: list[nn.Parameter]) -> list[nn.Parameter]:
    """Parameters once each (global fusion weights are one tensor shared by all layers)."""
    return list({id(p): p for p in params}.values())


def fusion_weights(adapter: AdapterHandle) -> dict[str, list[float]]:
    """Learned weights per layer (language order of the set)."""
    return {
        name: [float(w) for w in layer.router.weight.detach().cpu()]
        for name, layer in adapter.layers.items()
    }


def save_fused(
    adapter: AdapterHandle,
    out_dir: str | Path,
    weights: torch.Tensor | None,
    rank: int | None,
    base: str | None,
    peft_base: str | None = None,
    info: dict | None = None,
) -> dict:
    """Fuse (given weights, or each layer's learned ones when None) and save ONE PEFT adapter.

    Returns the fusion summary (also written as fusion.json): rank, errors, weights.
    """
    fused = fuse_weight_space(adapter, weights, rank or adapter.config.lora.rank)
    fused.save(out_dir, base_model_name_or_path=peft_base)
    write_base_signature(out_dir, adapter.model, base)
    summary = {
        "languages": list(adapter.config.languages),
        "rank": fused.rank,
        "max_rel_error": fused.max_error,
        "mean_rel_error": fused.mean_error,
        **(info or {}),
    }
    (Path(out_dir) / "fusion.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def build_weight_fusion(cfg: TrainConfig, params: WeightFusionParams) -> Recipe:
    set_cfg, langs = _languages(cfg, params.experts)
    handle = load_backbone(cfg.model)
    adapter = inject(handle.model, learned_fusion_config(set_cfg.lora, langs))
    load_set_experts(adapter, params.experts, 0, base_name(cfg.model))
    adapter.freeze_experts()
    if params.granularity == "global":
        tie_global_weights(adapter)

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> LossOutput:
        from babelora.train.recipe import seq2seq_loss

        return seq2seq_loss(model, batch)  # static weights: no routing input needed

    def export(model: nn.Module, out_dir: Path) -> None:
        weights = fusion_weights(adapter)
        info = {
            "experts": str(params.experts),
            "granularity": params.granularity,
            "weights": next(iter(weights.values())) if params.granularity == "global" else weights,
        }
        summary = save_fused(
            adapter, out_dir, None, params.rank, base_name(cfg.model), cfg.model.name, info
        )
        log.info(
            "weight_fusion: rank %d, max relative reconstruction error %.4f",
            summary["rank"],
            summary["max_rel_error"],
        )

    return Recipe(
        model=handle.model,
        tokenizer=handle.tokenizer,
        prompt_style=handle.prompt_style,
        n_mels=handle.n_mels,
        loss_fn=loss_fn,
        export=export,
        param_groups=[{"params": _unique(adapter.trainable_parameters()), "weight_decay": 0.0}],
        max_target_tokens=int(handle.model.config.max_target_positions),
        adapter=adapter,
        accepts_encoder_states=True,  # seq2seq_loss: decoder-only experts fuse on cached states
    )


def prompt_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) True on each row's decoder prompt: positions up to its first target label.

    labels[b, i] is the token after position i, so the first label sits at the prompt's last
    position: the prompt is positions 0 .. first_label.
    """
    valid = labels != IGNORE_INDEX
    first = torch.where(valid.any(1), valid.float().argmax(1), torch.zeros_like(valid[:, 0]).long())
    return torch.arange(labels.shape[1], device=labels.device)[None, :] <= first[:, None]


def build_gated_fusion(cfg: TrainConfig, params: GatedFusionParams) -> Recipe:
    set_cfg, langs = _languages(cfg, params.experts)
    handle = load_backbone(cfg.model)
    config = replace(
        gated_fusion_config(set_cfg.lora, langs), router_init_std=params.router_init_std
    )
    adapter = inject(handle.model, config)
    load_set_experts(adapter, params.experts, 0, base_name(cfg.model))
    adapter.freeze_experts(not params.train_experts)

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> LossOutput:
        from babelora.train.recipe import seq2seq_loss

        masks = {  # features or cached encoder states (decoder-only experts: frozen encoder)
            "encoder": encoder_mask(batch["feature_lens"], encoder_frames(batch)),
            "decoder": prompt_mask(batch["labels"]),
        }
        with adapter.routing(masks=masks):
            out = seq2seq_loss(model, batch)
        aux = adapter.aux_losses()
        return LossOutput(loss=out.loss, aux_losses=aux)

    def export(model: nn.Module, out_dir: Path) -> None:
        export_expert_set(adapter, out_dir, base_name(cfg.model), cfg.model.name)

    return Recipe(
        model=handle.model,
        tokenizer=handle.tokenizer,
        prompt_style=handle.prompt_style,
        n_mels=handle.n_mels,
        loss_fn=loss_fn,
        export=export,
        aux_loss_weights=dict(config.aux_loss_weights),
        max_target_tokens=int(handle.model.config.max_target_positions),
        adapter=adapter,
        accepts_encoder_states=True,  # encoder-side gates or train_experts on encoder experts
        # make encoder parameters train or foreign: the engine then refuses the cache itself
    )
