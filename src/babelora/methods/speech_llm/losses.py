"""Auxiliary losses of the MoE speech projector (arXiv 2511.10670), as pure functions.

The paper names three losses but publishes no formula; these are our documented choices
(methods.md 3.5), each with a weight in `ProjectorLossConfig`:

- language-specific loss: L_lang = -mean_t log P_t(g*(t)) over labelled real frames, where
  P_t(g) is the router's group mass and g*(t) the frame's language group. Frame labels come from
  the manifest's `segments` (code-switched audio; a frame takes the language of the segment that
  contains its centre) or, without segments, from the utterance language (`frame_labels`).
- intra-group load balancing, Switch style (Fedus et al. 2021, arXiv:2101.03961) inside each
  group: L_g = M * sum_{e in g} f_e * Q_e, where, over the real frames that sent at least one
  slot to group g, f_e is the share of g's slots dispatched to expert e and Q_e the mean
  within-group probability q(e|g). L_bal = mean of L_g over groups that received frames. It is 1
  when load and probabilities are uniform inside every group, larger when skewed.
- transition loss between stages: KL(p_ref || p_new) of the router distribution (`router_kl`,
  over all E experts; or `group_kl`, over the G groups) against the frozen router of the
  previous stage, on the frames of replayed (previous-stage) utterances. Its weight is annealed
  from `transition_weight` to `transition_final_weight` over `transition_anneal_steps` steps of
  the stage (`linear`, `cosine` or `constant`): the pull towards the old routing matters most
  right after the data changes and is relaxed as the new stage settles.

Padding frames never count: every loss uses the routing's frame mask (and label -100 = ignore).
Shapes: B batch, T frames, E experts, G groups, M experts per group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from babelora.data.collate import IGNORE_INDEX
from babelora.errors import LanguageError
from babelora.methods.speech_llm.moe_projector import ProjectorRouting


@dataclass(frozen=True)
class ProjectorLossConfig:
    """Weights and options of the projector's auxiliary losses (paper values not public)."""

    lang_weight: float = 0.1  # lambda_lang
    balance_weight: float = 0.01  # lambda_bal (Switch Transformer's alpha)
    transition_weight: float = 0.0  # lambda_tr at the start of a stage (0 = off)
    transition_kind: Literal["router_kl", "group_kl"] = "router_kl"
    transition_anneal: Literal["linear", "cosine", "constant"] = "linear"
    transition_anneal_steps: int = 500  # steps over which lambda_tr moves to the final weight
    transition_final_weight: float = 0.0
    unknown_lang: Literal["error", "ignore"] = "error"  # a language with no expert group

    def __post_init__(self) -> None:
        for name in ("lang_weight", "balance_weight", "transition_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.transition_anneal_steps < 1:
            raise ValueError("transition_anneal_steps must be >= 1")


def _field(seg: Any, name: str) -> Any:
    return seg[name] if isinstance(seg, Mapping) else getattr(seg, name)


def frame_labels(
    langs: Sequence[str],
    segments: Sequence[Sequence[Any] | None] | None,
    lengths: Sequence[int] | Tensor,
    frame_seconds: float,
    group_langs: Sequence[str],
    num_frames: int | None = None,
    unknown_lang: str = "error",
) -> Tensor:
    """Language-group label of every projector frame, (B, T) long, -100 where unknown/padding.

    Frame i spans [i, i+1) * frame_seconds (the encoder's 20 ms frame times the projector's
    downsampling); it takes the group of the first segment containing its centre, or -100 when
    no segment does (pauses between segments). Utterances without segments label every real
    frame with their own language. `segments` items are manifest `Segment`s or dicts with
    start, end, lang (seconds).
    """
    lengths = [int(n) for n in lengths]
    T = num_frames if num_frames is not None else max(lengths, default=0)
    group_of = {lang: g for g, lang in enumerate(group_langs)}

    def group(lang: str, where: str) -> int:
        if lang in group_of:
            return group_of[lang]
        if unknown_lang == "ignore":
            return IGNORE_INDEX
        raise LanguageError(
            f"{where}: language '{lang}' has no expert group in the MoE projector "
            f"(group_langs: {', '.join(group_langs) or 'none'}); add it to "
            "projector.moe.group_langs or set losses.unknown_lang=ignore"
        )

    labels = torch.full((len(lengths), T), IGNORE_INDEX, dtype=torch.long)
    for b, (lang, n) in enumerate(zip(langs, lengths)):
        segs = segments[b] if segments is not None else None
        if not segs:
            labels[b, :n] = group(lang, f"utterance {b}")
            continue
        centres = (torch.arange(n, dtype=torch.float64) + 0.5) * frame_seconds
        row = torch.full((n,), IGNORE_INDEX, dtype=torch.long)
        for seg in reversed(list(segs)):  # reversed: the first containing segment wins
            inside = (centres >= float(_field(seg, "start"))) & (
                centres < float(_field(seg, "end"))
            )
            row[inside] = group(str(_field(seg, "lang")), f"utterance {b} segment")
        labels[b, :n] = row
    return labels


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` where `mask` (0 when nothing is selected; still in the graph)."""
    picked = torch.where(mask, values, torch.zeros_like(values))
    return picked.sum() / mask.sum().clamp(min=1)


def language_loss(routing: ProjectorRouting, labels: Tensor) -> Tensor:
    """L_lang = -mean log P_t(label_t) over real frames with a label (labels (B,T), -100 = skip)."""
    labels = labels.to(routing.logits.device)
    valid = routing.frame_mask & (labels >= 0)
    group_lp = routing.group_log_probs  # (B,T,G)
    nll = -group_lp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B,T)
    return masked_mean(nll, valid)


def balance_loss(routing: ProjectorRouting) -> Tensor:
    """Intra-group Switch load-balancing loss (module docstring); 1 at uniform load."""
    B, T, E = routing.logits.shape
    G, M = routing.num_groups, routing.experts_per_group
    valid = routing.frame_mask.unsqueeze(-1)  # (B,T,1)
    slots = torch.zeros(B, T, E, device=routing.logits.device)
    slots.scatter_add_(
        -1, routing.expert_ids, torch.ones_like(routing.expert_ids, dtype=slots.dtype)
    )
    slots = torch.where(valid, slots, torch.zeros_like(slots)).view(B, T, G, M)
    in_group = slots.sum(-1) > 0  # (B,T,G): frame sent >= 1 slot to group g
    load = slots.sum((0, 1))  # (G,M) slots per expert
    group_slots = load.sum(-1)  # (G,)
    f = load / group_slots.clamp(min=1).unsqueeze(-1)  # (G,M)
    q = routing.within_group_probs  # (B,T,G,M)
    q = torch.where(in_group.unsqueeze(-1), q, torch.zeros_like(q))
    frames = in_group.sum((0, 1))  # (G,)
    q_mean = q.sum((0, 1)) / frames.clamp(min=1).unsqueeze(-1)  # (G,M)
    per_group = M * (f * q_mean).sum(-1)  # (G,)
    used = frames > 0
    return masked_mean(per_group, used)


def transition_loss(
    routing: ProjectorRouting, replay: Tensor | None = None, kind: str = "router_kl"
) -> Tensor:
    """KL(p_ref || p_new) per frame, mean over real frames of replayed utterances.

    `replay` (B,) bool marks utterances from earlier stages' data (None = all count). Zero when
    the routing has no reference router.
    """
    if routing.reference_logits is None:
        return routing.logits.sum() * 0.0
    if kind not in TRANSITION_KINDS:
        raise ValueError(f"unknown transition loss {kind!r}; choose from {list(TRANSITION_KINDS)}")
    new_lp, ref_lp = TRANSITION_KINDS[kind](routing)
    kl = (ref_lp.exp() * (ref_lp - new_lp)).sum(-1)  # (B,T)
    mask = routing.frame_mask
    if replay is not None:
        mask = mask & replay.to(mask.device).bool().unsqueeze(-1)
    return masked_mean(kl, mask)


def _router_log_probs(routing: ProjectorRouting) -> tuple[Tensor, Tensor]:
    return routing.log_probs, F.log_softmax(routing.reference_logits.float(), dim=-1)


def _group_log_probs(routing: ProjectorRouting) -> tuple[Tensor, Tensor]:
    B, T, _ = routing.logits.shape
    ref = F.log_softmax(routing.reference_logits.float(), dim=-1)
    ref = torch.logsumexp(ref.view(B, T, routing.num_groups, -1), dim=-1)
    return routing.group_log_probs, ref


TRANSITION_KINDS = {"router_kl": _router_log_probs, "group_kl": _group_log_probs}


def transition_weight_at(step: int, cfg: ProjectorLossConfig) -> float:
    """lambda_tr at `step` (counted from the start of the current stage)."""
    w0, w1 = cfg.transition_weight, cfg.transition_final_weight
    frac = min(max(step, 0) / cfg.transition_anneal_steps, 1.0)
    if cfg.transition_anneal == "constant":
        return w0
    if cfg.transition_anneal == "cosine":
        return w1 + (w0 - w1) * 0.5 * (1.0 + math.cos(math.pi * frac))
    return w0 + (w1 - w0) * frac


def projector_aux_losses(
    routing: ProjectorRouting,
    labels: Tensor | None = None,
    replay: Tensor | None = None,
    kind: str = "router_kl",
) -> dict[str, Tensor]:
    """The unweighted auxiliary losses that apply: `balance` always, `lang` when frame labels
    are given, `transition` when the routing carries a reference router's logits."""
    out = {"balance": balance_loss(routing)}
    if labels is not None:
        out["lang"] = language_loss(routing, labels)
    if routing.reference_logits is not None:
        out["transition"] = transition_loss(routing, replay, kind)
    return out


def weighted_aux_loss(
    aux: Mapping[str, Tensor], cfg: ProjectorLossConfig, step: int = 0
) -> tuple[Tensor | float, dict[str, float]]:
    """sum_i lambda_i * L_i over the losses present, and the weights used (for logging)."""
    weights = {
        "lang": cfg.lang_weight,
        "balance": cfg.balance_weight,
        "transition": transition_weight_at(step, cfg),
    }
    total: Tensor | float = 0.0
    used = {}
    for name, value in aux.items():
        w = weights.get(name, 0.0)
        used[name] = w
        if w:
            total = total + w * value
    return total, used
