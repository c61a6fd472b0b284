"""The `experts` recipe: one LoRA expert per language on a frozen Whisper, trained in one run.

LoRA language experts (Li et al., Interspeech 2025, arXiv:2506.21555; methods.md section 2):
every language l gets its own update dW_l = (alpha / r) B_l A_l on the target linears of the
shared frozen base. All experts live in one `ExpertLoRALinear` per target (babelora.adapters),
so a mixed-language batch trains all of them at once: each row is routed to its own language's
expert (`set_routing(langs=batch["langs"])`). The experts share no parameter, so this equals
training each expert alone on its language's data (same token-mean loss normaliser per batch,
hence the same update direction; only the batch composition differs from separate runs).

Export (`final/`, see methods/experts/expert_sets.py): the expert set for batched language-aware
decoding (`babelora transcribe --experts DIR`) and one PEFT folder per language.

Configs: configs/experts/. DDP needs `ddp_find_unused_parameters: true` (a batch without
language l gives expert l no gradient).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from torch import nn

from babelora.adapters import (
    AdapterHandle,
    LoRAConfig,
    inject,
    language_experts,
    load_language_adapters,
)
from babelora.errors import ConfigError
from babelora.languages import check_lang
from babelora.methods.experts.expert_sets import (
    base_name,
    export_expert_set,
    load_set_experts,
    resolve_expert_languages,
    set_languages,
)
from babelora.train.config import TrainConfig
from babelora.train.recipe import (
    LossOutput,
    Recipe,
    load_backbone,
    seq2seq_loss,
)


@dataclass(frozen=True)
class ExpertsParams:
    """`recipe.params` of the `experts` recipe. The paper states none of these (methods.md 2.3)."""

    rank: int = 8  # r of every expert
    alpha: float = 16.0  # scale alpha / r = 2 (alpha = 2 r, as the lora recipe's configs)
    dropout: float = 0.0  # dropout on the experts' input (one mask shared by the experts)
    targets: list[str] = field(default_factory=lambda: ["whisper-all"])  # adapters.PRESETS
    # names (whisper-encoder, whisper-decoder, whisper-decoder-cross-attn, whisper-attn, ...),
    # bare module names (fc1) or regexes; default: encoder and decoder self-attention
    # q/k/v/out, cross-attention q/k/v/out and fc1/fc2
    exclude: list[str] = field(default_factory=list)  # regexes of module names to leave out
    use_rslora: bool = False  # scale alpha / sqrt(r)
    init: Literal["default", "gaussian"] = "default"  # PEFT's (A Kaiming-uniform, B = 0)
    languages: list[str] = field(default_factory=list)  # experts; [] = data.languages, or the
    # languages of the training manifests
    init_from: dict[str, str] = field(default_factory=dict)  # lang -> PEFT adapter folder to
    # start that expert from (others start fresh)
    init_from_set: str | None = None  # a saved expert set (an experts run's final/) to start from
    kernel: Literal["auto", "dense", "gather", "grouped"] = "auto"  # MoLoRAConfig.kernel

    def __post_init__(self) -> None:
        if self.init_from and self.init_from_set:
            raise ConfigError("recipe.params: give init_from or init_from_set, not both")
        for lang in self.init_from:
            check_lang(lang)

    def lora(self) -> LoRAConfig:
        return LoRAConfig(
            rank=self.rank,
            alpha=self.alpha,
            dropout=self.dropout,
            targets=tuple(self.targets),
            exclude=tuple(self.exclude),
            use_rslora=self.use_rslora,
            init=self.init,
        )


def routed_loss(adapter: AdapterHandle) -> Any:
    """loss_fn routing every row to its language's expert (summed token CE)."""

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> LossOutput:
        with adapter.routing(langs=batch["langs"]):
            return seq2seq_loss(model, batch)

    return loss_fn


def expert_set_export(adapter: AdapterHandle, cfg: TrainConfig) -> Any:
    def export(model: nn.Module, out_dir: Path) -> None:
        export_expert_set(adapter, out_dir, base_name(cfg.model), cfg.model.name)

    return export


def build_experts(cfg: TrainConfig, params: ExpertsParams) -> Recipe:
    languages = resolve_expert_languages(cfg, params.languages)
    handle = load_backbone(cfg.model)
    config = replace(language_experts(params.lora(), languages), kernel=params.kernel)
    adapter = inject(handle.model, config)
    if params.init_from:
        load_language_adapters(adapter, params.init_from)
    if params.init_from_set:
        got = set_languages(params.init_from_set)
        if got != languages:
            raise ConfigError(
                f"recipe.params.init_from_set: {params.init_from_set} has experts {got}, "
                f"this run {languages} (same languages in the same order needed)"
            )
        load_set_experts(adapter, params.init_from_set, 0, base_name(cfg.model))
    return Recipe(
        model=handle.model,
        tokenizer=handle.tokenizer,
        prompt_style=handle.prompt_style,
        n_mels=handle.n_mels,
        loss_fn=routed_loss(adapter),
        export=expert_set_export(adapter, cfg),
        max_target_tokens=int(handle.model.config.max_target_positions),
        adapter=adapter,
        accepts_encoder_states=True,  # seq2seq_loss: a decoder-only set trains on cached states
    )
