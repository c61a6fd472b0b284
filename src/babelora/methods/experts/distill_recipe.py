"""The `distill` recipe: one student LoRA learns from the LoRA language experts (Interspeech 2025).

Teacher of an utterance = the frozen base + its own language's expert (an `experts` run's set).
Student = the base + one LoRA shared by all languages, trained with
    CE(y, p_S) + lambda * T^2 * KL(p_T^(T) || p_S^(T))     per target token (methods/experts/kd.py).

One model holds everything: each target linear is an expert layer whose first
`student_experts` slots are the student (shared, always on) and whose routed slots are the
teachers (language router). Per batch, two forwards:
  1. teacher, under no_grad and in eval mode: student slots muted, each row routed to its
     language's expert;
  2. student: rows routed to no language (only the shared student slots act).
The teacher slots share tensors with the student, so their gradients are masked to zero and
AdamW runs without weight decay on these tensors (decay would shrink the teachers); with zero
gradients Adam's update is exactly zero, so the teachers stay bitwise fixed (tested).

Student rank = student_experts x the experts' rank (a sum of LoRAs is one LoRA of the summed
rank; exported exactly as one PEFT adapter). `student_init: average` starts the student from the
uniform weight-space average of the experts (truncated SVD to the student's rank).
Export (`final/`): the student as one PEFT adapter (+ babelora_base.json, distill.json).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from babelora.adapters import AdapterHandle, MoLoRAConfig, export_peft, inject
from babelora.errors import ConfigError
from babelora.methods.experts.expert_sets import base_name, language_expert_config, load_set_experts
from babelora.methods.experts.fusion import fuse_weight_space
from babelora.methods.experts.kd import distill_loss
from babelora.models.base_check import write_base_signature
from babelora.train.config import TrainConfig
from babelora.train.recipe import LossOutput, Recipe, load_backbone, seq2seq_forward

log = logging.getLogger("babelora.train")


@dataclass(frozen=True)
class DistillParams:
    """`recipe.params` of the `distill` recipe. The paper gives no value here (methods.md 2.5)."""

    teacher: str = ""  # an experts set folder (an `experts` run's final/); required
    temperature: float = 2.0  # T of the softened posteriors (Hinton et al. use 1-20; 2 common)
    kd_weight: float = 1.0  # lambda: weight of T^2 * KL next to the CE (1 = equal footing)
    direction: Literal["forward", "reverse"] = "forward"  # KL(teacher||student) or reverse
    student_experts: int = 1  # student rank = this x the experts' rank
    student_init: Literal["fresh", "average"] = "fresh"  # fresh LoRA (starts as the base) or
    # the uniform average of the experts
    dropout: float = 0.0  # LoRA dropout (student pass only; the teacher runs in eval mode)

    def __post_init__(self) -> None:
        if not self.teacher:
            raise ConfigError("recipe.params.teacher: name the experts set folder to distil")
        if self.temperature <= 0:
            raise ConfigError(f"recipe.params.temperature must be > 0, got {self.temperature}")
        if self.kd_weight < 0:
            raise ConfigError(f"recipe.params.kd_weight must be >= 0, got {self.kd_weight}")
        if self.student_experts < 1:
            raise ConfigError(
                f"recipe.params.student_experts must be >= 1, got {self.student_experts}"
            )


def _core(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


@contextmanager
def teacher_mode(adapter: AdapterHandle, student_slots: int) -> Iterator[None]:
    """Inside: eval mode and student slots muted (B = 0), so the model is base + routed experts.

    Must run under no_grad; the student's B is restored bitwise on exit.
    """
    model = adapter.model
    was_training = model.training
    saved = {}
    with torch.no_grad():
        for name, layer in adapter.layers.items():
            saved[name] = layer.lora_B[:student_slots].clone()
            layer.lora_B[:student_slots].zero_()
    model.eval()
    try:
        yield
    finally:
        with torch.no_grad():
            for name, layer in adapter.layers.items():
                layer.lora_B[:student_slots].copy_(saved[name])
        model.train(was_training)


def _freeze_teacher_slots(adapter: AdapterHandle, student_slots: int) -> None:
    """Zero the teachers' gradients (they share a tensor with the student)."""

    def mask(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[student_slots:] = 0
        return grad

    for layer in adapter.layers.values():
        layer.lora_A.register_hook(mask)
        layer.lora_B.register_hook(mask)


@torch.no_grad()
def init_student_average(adapter: AdapterHandle, student_slots: int) -> float:
    """Student slots := the uniform average of the teacher experts (best rank-S*r fit).

    Returns the largest relative truncation error over layers (0 when S*r >= L*r).
    """
    cfg = adapter.config
    weights = torch.zeros(cfg.num_total)
    weights[student_slots:] = 1.0 / cfg.num_routed
    rank = cfg.lora.rank
    fused = fuse_weight_space(adapter, weights, rank=student_slots * rank)
    for name, layer in adapter.layers.items():
        a, b = fused.modules[name]  # (S r, D), (O, S r): B'A' is the whole update (scale 1)
        layer.lora_A[:student_slots] = a.reshape(student_slots, rank, -1).to(layer.lora_A)
        b = (b / layer.scaling).reshape(b.shape[0], student_slots, rank).permute(1, 0, 2)
        layer.lora_B[:student_slots] = b.to(layer.lora_B)
    return fused.max_error


def make_loss_fn(adapter: AdapterHandle, params: DistillParams) -> Any:
    slots = params.student_experts

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> LossOutput:
        # features, or cached encoder states: teacher and student share the frozen encoder
        with torch.no_grad(), teacher_mode(adapter, slots), adapter.routing(langs=batch["langs"]):
            teacher = seq2seq_forward(_core(model), batch).logits
        with adapter.routing(langs=[None] * len(batch["langs"])):
            student = seq2seq_forward(model, batch).logits
        kd = distill_loss(
            student,
            teacher,
            batch["labels"],
            params.kd_weight,
            params.temperature,
            params.direction,
        )
        n = max(kd.tokens, 1)
        aux = {"ce": kd.ce.detach() / n, "kl": kd.kl.detach() / n}  # logged, weight 0
        return LossOutput(loss=kd.loss, aux_losses=aux)

    return loss_fn


def make_export(adapter: AdapterHandle, params: DistillParams, cfg: TrainConfig) -> Any:
    slots = params.student_experts

    def export(model: nn.Module, out_dir: Path) -> None:
        weights = torch.zeros(adapter.config.num_total)
        weights[:slots] = 1.0
        if slots == 1:
            export_peft(adapter, out_dir, expert=0, base_model_name_or_path=cfg.model.name)
        else:
            export_peft(adapter, out_dir, weights=weights, base_model_name_or_path=cfg.model.name)
        write_base_signature(out_dir, adapter.model, base_name(cfg.model))
        info = {
            "teacher": str(params.teacher),
            "languages": list(adapter.config.languages),
            "temperature": params.temperature,
            "kd_weight": params.kd_weight,
            "direction": params.direction,
            "student_rank": slots * adapter.config.lora.rank,
        }
        (Path(out_dir) / "distill.json").write_text(json.dumps(info, indent=2), encoding="utf-8")

    return export


def build_distill(cfg: TrainConfig, params: DistillParams) -> Recipe:
    teacher_cfg = language_expert_config(params.teacher)
    langs = list(teacher_cfg.languages)
    extra = [x for x in cfg.data.languages if x not in langs]
    if extra:
        raise ConfigError(
            f"data.languages has {extra} but the teacher {params.teacher} has experts only for "
            f"{langs}: every distilled utterance needs its language's teacher"
        )
    if not cfg.data.languages:
        from babelora.methods.experts.expert_sets import resolve_expert_languages

        resolve_expert_languages(cfg, langs)  # raises on a manifest row without a teacher
    handle = load_backbone(cfg.model)
    config = MoLoRAConfig(
        lora=replace(teacher_cfg.lora, dropout=params.dropout),
        languages=teacher_cfg.languages,
        num_shared=params.student_experts,
        router="language",
    )
    adapter = inject(handle.model, config)
    load_set_experts(adapter, params.teacher, params.student_experts, base_name(cfg.model))
    if params.student_init == "average":
        err = init_student_average(adapter, params.student_experts)
        log.info("distill: student starts from the experts' average (max rel. error %.3g)", err)
    _freeze_teacher_slots(adapter, params.student_experts)
    if cfg.optim.weight_decay:
        log.warning("distill: no weight decay on the expert tensors (they hold the teachers)")
    lora_params = adapter.trainable_parameters()
    return Recipe(
        model=handle.model,
        tokenizer=handle.tokenizer,
        prompt_style=handle.prompt_style,
        n_mels=handle.n_mels,
        loss_fn=make_loss_fn(adapter, params),
        export=make_export(adapter, params, cfg),
        aux_loss_weights={"ce": 0.0, "kl": 0.0},
        param_groups=[{"params": lora_params, "weight_decay": 0.0}],
        max_target_tokens=int(handle.model.config.max_target_positions),
        adapter=adapter,
        accepts_encoder_states=True,  # seq2seq_forward: a decoder-only teacher set (and so a
        # decoder-only student) trains both passes on the shared frozen encoder's cached states
    )
