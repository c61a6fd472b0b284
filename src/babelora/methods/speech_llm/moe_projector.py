"""Mixture-of-Experts speech projector with experts in language groups (arXiv 2511.10670).

Each downsampled speech frame x is mapped to the LM's width by a few experts chosen by a router.
Experts are organised in G language groups of M experts (one group per language, so an expert
can specialise in one language's semantic subspace), plus an optional always-on shared group.

Router: one linear layer scores all E = G*M routed experts per frame; p = softmax(logits) is the
joint distribution, P(g) = sum_{e in g} p(e) the group mass and q(e|g) = p(e) / P(g) the
distribution inside group g (methods.md 3.5). Dispatch (config `routing`):
- `hierarchical` (default; as DLG-MoE's language-group routing): top-1 group by P(g), then the
  top-k experts of that group by q(e|g);
- `flat`: top-k over all E experts by p.
Weights of the chosen experts are renormalised to sum to 1 (`normalize_weights`, Mixtral style)
or are the raw joint probabilities p(e) (Switch style; lets the task loss reach the group scores).
With hierarchical routing and normalised weights the group choice is trained by the
language-specific loss only (projector_losses.py), which is the paper's intent.

Output: y = sum_{chosen e} w_e E_e(x) + mean_s S_s(x) (the shared group, when configured).

Experts are stacked tensors; the forward sorts the (frame, expert) pairs by expert and runs one
batched matmul over a (E, C, D) buffer (C = largest expert load) - no Python loop over experts.
`tests/reference/moe_projector_dense.py` is the dense reference it is tested against.

Shapes: B batch, T frames, D input dim, O output dim, H expert hidden dim, G groups,
M experts per group, E = G*M routed experts, K experts per frame, N frames computed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class MoEProjectorConfig:
    """Layout and routing of the MoE projector (the paper's values are not public)."""

    num_groups: int = 2  # G: language groups, one per language of `group_langs`
    experts_per_group: int = 2  # M: routed experts in each group
    group_langs: tuple[str, ...] = ()  # language of each group, in order; empty = unnamed groups
    shared_experts: int = 0  # experts in the always-on shared group (0 = no shared group)
    routing: Literal["hierarchical", "flat"] = "hierarchical"
    top_k: int = 1  # experts per frame (inside the chosen group when hierarchical)
    normalize_weights: bool = True  # renormalise chosen experts' weights to sum to 1

    def __post_init__(self) -> None:
        if self.num_groups < 1 or self.experts_per_group < 1:
            raise ValueError("num_groups and experts_per_group must be >= 1")
        if self.group_langs and len(self.group_langs) != self.num_groups:
            raise ValueError(
                f"group_langs has {len(self.group_langs)} languages but num_groups is "
                f"{self.num_groups}; give one language per group"
            )
        if len(set(self.group_langs)) != len(self.group_langs):
            raise ValueError(f"group_langs repeats a language: {list(self.group_langs)}")
        limit = self.experts_per_group if self.routing == "hierarchical" else self.num_experts
        if not 1 <= self.top_k <= limit:
            raise ValueError(f"top_k must be in 1..{limit} for {self.routing} routing")
        if self.shared_experts < 0:
            raise ValueError("shared_experts must be >= 0")

    @property
    def num_experts(self) -> int:
        """E: routed experts (the shared group not included)."""
        return self.num_groups * self.experts_per_group


@dataclass
class ProjectorRouting:
    """What the router decided, for the losses and for analysis (never stored on the module).

    logits (B,T,E) router scores; expert_ids (B,T,K) chosen routed experts (global ids
    g*M + m); weights (B,T,K) their mixing weights; group_ids (B,T) the chosen group (flat
    routing: the group of the top-1 expert); mask (B,T) True on real frames;
    reference_logits (B,T,E) a frozen earlier router's scores (transition loss), or None.
    """

    logits: Tensor
    expert_ids: Tensor
    weights: Tensor
    group_ids: Tensor
    num_groups: int
    experts_per_group: int
    mask: Tensor | None = None
    reference_logits: Tensor | None = None

    @property
    def log_probs(self) -> Tensor:
        """log p(e), (B,T,E)."""
        return F.log_softmax(self.logits.float(), dim=-1)

    @property
    def probs(self) -> Tensor:
        """p(e), (B,T,E)."""
        return self.log_probs.exp()

    @property
    def group_log_probs(self) -> Tensor:
        """log P(g) = logsumexp of log p over the group's experts, (B,T,G)."""
        B, T, _ = self.logits.shape
        lp = self.log_probs.view(B, T, self.num_groups, self.experts_per_group)
        return torch.logsumexp(lp, dim=-1)

    @property
    def group_probs(self) -> Tensor:
        """P(g), (B,T,G)."""
        return self.group_log_probs.exp()

    @property
    def within_group_probs(self) -> Tensor:
        """q(e|g) = softmax of the group's logits, (B,T,G,M)."""
        B, T, _ = self.logits.shape
        return F.softmax(self.logits.float().view(B, T, self.num_groups, -1), dim=-1)

    @property
    def frame_mask(self) -> Tensor:
        """(B,T) bool, all True when no mask was given."""
        if self.mask is None:
            return torch.ones(self.logits.shape[:2], dtype=torch.bool, device=self.logits.device)
        return self.mask


class StackedExperts(nn.Module):
    """n independent experts (Linear, or Linear-GELU-Linear when hidden_dim > 0) in stacked
    tensors: w1 (n, D, H), b1 (n, H), w2 (n, H, O), b2 (n, O)."""

    def __init__(self, n: int, d_in: int, d_out: int, hidden_dim: int = 0) -> None:
        super().__init__()
        self.n, self.d_in, self.d_out, self.hidden_dim = n, d_in, d_out, hidden_dim
        mid = hidden_dim if hidden_dim > 0 else d_out
        self.w1 = nn.Parameter(torch.empty(n, d_in, mid))
        self.b1 = nn.Parameter(torch.empty(n, mid))
        if hidden_dim > 0:
            self.w2 = nn.Parameter(torch.empty(n, hidden_dim, d_out))
            self.b2 = nn.Parameter(torch.empty(n, d_out))
        else:
            self.register_parameter("w2", None)
            self.register_parameter("b2", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's default init, per expert: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        for w, b in ((self.w1, self.b1), (self.w2, self.b2)):
            if w is None:
                continue
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def _run(self, h: Tensor, experts: Tensor | slice) -> Tensor:
        """Experts on a (n', C, D) buffer; `experts` selects the n' weight stacks."""
        h = torch.baddbmm(self.b1[experts].unsqueeze(1), h, self.w1[experts])
        if self.w2 is not None:
            h = F.gelu(h)
            h = torch.baddbmm(self.b2[experts].unsqueeze(1), h, self.w2[experts])
        return h

    def forward_all(self, x: Tensor) -> Tensor:
        """Every expert on every row: x (N, D) -> (n, N, O)."""
        return self._run(x.unsqueeze(0).expand(self.n, -1, -1), slice(None))

    def forward_expert(self, e: int, x: Tensor) -> Tensor:
        """Expert `e` alone on x (N, D) -> (N, O) (reference path)."""
        return self._run(x.unsqueeze(0), slice(e, e + 1)).squeeze(0)

    def dispatch(self, x: Tensor, expert_ids: Tensor, weights: Tensor) -> Tensor:
        """sum_k weights[:, k] * expert_{expert_ids[:, k]}(x); x (N, D), ids/weights (N, K).

        Sort the N*K (row, expert) pairs by expert, scatter rows into a zero-padded (E, C, D)
        buffer (C = the largest expert load; no token is dropped), one batched matmul, gather.
        """
        N, K = expert_ids.shape
        flat = expert_ids.reshape(-1)  # (N*K,)
        rows = torch.arange(N, device=x.device).repeat_interleave(K)  # (N*K,)
        order = torch.argsort(flat, stable=True)
        sorted_e = flat[order]
        counts = torch.bincount(flat, minlength=self.n)  # (E,)
        capacity = int(counts.max()) if flat.numel() else 0
        starts = torch.cumsum(counts, 0) - counts  # (E,)
        slot = torch.arange(flat.numel(), device=x.device) - starts[sorted_e]  # rank within expert
        buf = x.new_zeros(self.n, capacity, self.d_in)  # (E, C, D)
        buf[sorted_e, slot] = x[rows[order]]
        y = self._run(buf, slice(None))[sorted_e, slot]  # (N*K, O)
        y = y * weights.reshape(-1)[order].unsqueeze(-1).to(y.dtype)
        return x.new_zeros(N, self.d_out, dtype=y.dtype).index_add_(0, rows[order], y)


def route(logits: Tensor, cfg: MoEProjectorConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k dispatch from router logits (B,T,E) -> expert_ids (B,T,K), weights (B,T,K),
    group_ids (B,T); see the module docstring for the two routing modes."""
    B, T, E = logits.shape
    G, M, K = cfg.num_groups, cfg.experts_per_group, cfg.top_k
    log_p = F.log_softmax(logits.float(), dim=-1)  # (B,T,E)
    if cfg.routing == "hierarchical":
        group_lp = torch.logsumexp(log_p.view(B, T, G, M), dim=-1)  # (B,T,G)
        group_ids = group_lp.argmax(dim=-1)  # (B,T)
        in_group = (
            log_p.view(B, T, G, M)
            .gather(2, group_ids[..., None, None].expand(B, T, 1, M))
            .squeeze(2)
        )  # (B,T,M) log p of the chosen group's experts
        top_lp, top_m = in_group.topk(K, dim=-1)  # (B,T,K)
        expert_ids = group_ids.unsqueeze(-1) * M + top_m
    else:
        top_lp, expert_ids = log_p.topk(K, dim=-1)  # (B,T,K)
        group_ids = expert_ids[..., 0] // M
    weights = F.softmax(top_lp, dim=-1) if cfg.normalize_weights else top_lp.exp()
    return expert_ids, weights, group_ids


class MoEProjector(nn.Module):
    """Frame-wise MoE map (B, T, d_in) -> (B, T, d_out) with language-grouped experts.

    `enable_reference_router()` keeps a frozen copy of the router; its logits then come back in
    `ProjectorRouting.reference_logits` for the transition loss between training stages.
    """

    def __init__(self, cfg: MoEProjectorConfig, d_in: int, d_out: int, hidden_dim: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_in, self.d_out = d_in, d_out
        self.router = nn.Linear(d_in, cfg.num_experts)
        self.experts = StackedExperts(cfg.num_experts, d_in, d_out, hidden_dim)
        self.shared = (
            StackedExperts(cfg.shared_experts, d_in, d_out, hidden_dim)
            if cfg.shared_experts > 0
            else None
        )
        self.reference_router: nn.Linear | None = None

    def enable_reference_router(self) -> None:
        """Freeze a copy of the current router as the reference for the transition loss
        (call at the start of a stage, after loading the previous stage's weights)."""
        ref = copy.deepcopy(self.router)
        ref.requires_grad_(False)
        self.reference_router = ref

    def reset_reference_router(self) -> None:
        """Copy the current router into the (existing) reference router."""
        if self.reference_router is None:
            self.enable_reference_router()
            return
        self.reference_router.load_state_dict(self.router.state_dict())

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, ProjectorRouting]:
        """x (B,T,D), mask (B,T) True on real frames -> y (B,T,O) (zeros on padding), routing."""
        B, T, _ = x.shape
        logits = self.router(x)  # (B,T,E)
        expert_ids, weights, group_ids = route(logits, self.cfg)
        valid = mask if mask is not None else torch.ones(B, T, dtype=torch.bool, device=x.device)
        xv = x[valid]  # (N, D): only real frames are computed
        y = self.experts.dispatch(xv, expert_ids[valid], weights[valid])
        if self.shared is not None:
            y = y + self.shared.forward_all(xv).mean(dim=0)
        out = x.new_zeros(B, T, self.d_out, dtype=y.dtype)
        out[valid] = y
        ref = None
        if self.reference_router is not None:
            with torch.no_grad():
                ref = self.reference_router(x)
        routing = ProjectorRouting(
            logits=logits,
            expert_ids=expert_ids,
            weights=weights,
            group_ids=group_ids,
            num_groups=self.cfg.num_groups,
            experts_per_group=self.cfg.experts_per_group,
            mask=mask,
            reference_logits=ref,
        )
        return out, routing
