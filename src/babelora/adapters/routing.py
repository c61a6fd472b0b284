"""Routers: who weights which routed expert, for every token or utterance.

A router is an `nn.Module` with a `level` ("static", "utterance" or "token") whose forward
`(x, inputs) -> Routing` returns its decision as data (weights, expert ids, aux losses) instead of
stashing it on itself. Shapes: R rows (utterances or beams), T positions, D input dim,
E routed experts (shared experts are never routed), L languages, k kept experts.

Registry: `ROUTERS` maps the config name to the class; each class has
`from_config(cfg, in_features)`. Adding one: docs/adding_a_router.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from babelora.adapters.config import MoLoRAConfig
from babelora.adapters.losses import load_balance_loss, z_loss
from babelora.errors import ConfigError

Level = Literal["static", "utterance", "token"]


@dataclass
class RouterInputs:
    """What a router may look at besides the hidden state, already fitted to the layer's rows.

    lang_ids: (R,) long index into the config's languages, -1 = no language (shared only).
    lang_probs: (R, L) language posterior (e.g. from a LID head), rows sum to 1.
    mask: (R, T) bool, True on valid (non-padding) positions; None = all valid.
    """

    lang_ids: Tensor | None = None
    lang_probs: Tensor | None = None
    mask: Tensor | None = None


@dataclass
class Routing:
    """A routing decision.

    weights: gates of `expert_ids`, shape (*lead, k); or, when `expert_ids` is None, dense
        weights over all E routed experts, shape (*lead, E).
    expert_ids: (*lead, k) long indices into the routed experts, or None (dense).
    aux_losses: named scalar losses (unweighted), e.g. `load_balance`, `z_loss`.
    level: lead is () for "static", (R,) for "utterance", (R, T) for "token".
    """

    weights: Tensor
    expert_ids: Tensor | None = None
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    level: Level = "token"

    def dense(self, num_experts: int) -> Tensor:
        """Weights over all routed experts, (*lead, E); unselected experts get 0."""
        if self.expert_ids is None:
            return self.weights
        shape = (*self.expert_ids.shape[:-1], num_experts)
        out = self.weights.new_zeros(shape)
        return out.scatter_add(-1, self.expert_ids, self.weights)

    def rows(self, fn) -> Routing:
        """Apply `fn` to the row dimension of weights and ids (utterance level only)."""
        ids = None if self.expert_ids is None else fn(self.expert_ids)
        return Routing(fn(self.weights), ids, {}, self.level)


def _check_level(level: str) -> None:
    if level not in ("token", "utterance"):
        raise ConfigError(f"routing level must be token or utterance, got {level!r}")


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of x (R, T, D) over the valid positions of each row -> (R, D).

    Padding never enters the mean; a row without a valid position gives zeros.
    """
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(x.dtype).unsqueeze(-1)  # (R, T, 1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class LanguageRouter(nn.Module):
    """Hard language routing: row r uses the experts of its language (weight 1 each).

    Given a language posterior (R, L) instead of ids, each language's experts are weighted by
    its probability (optionally only the `posterior_top_k` likeliest languages, renormalised).
    Rows with language -1 use no routed expert. No parameters, no aux losses.
    """

    level: Level = "utterance"

    def __init__(self, num_langs: int, experts_per_lang: int = 1, posterior_top_k: int = 0):
        super().__init__()
        self.num_langs = num_langs
        self.experts_per_lang = experts_per_lang
        self.posterior_top_k = posterior_top_k

    @classmethod
    def from_config(cls, cfg: MoLoRAConfig, in_features: int) -> LanguageRouter:
        return cls(len(cfg.languages), cfg.experts_per_lang, cfg.posterior_top_k)

    def forward(self, x: Tensor, inputs: RouterInputs) -> Routing:
        epl = self.experts_per_lang
        if inputs.lang_probs is not None:
            probs = inputs.lang_probs.to(device=x.device, dtype=torch.float32)
            if 0 < self.posterior_top_k < self.num_langs:
                top, idx = probs.topk(self.posterior_top_k, dim=-1)
                probs = torch.zeros_like(probs).scatter(-1, idx, top)
                probs = probs / probs.sum(-1, keepdim=True).clamp(min=1e-9)
            weights = probs.repeat_interleave(epl, dim=-1).to(x.dtype)  # (R, L*epl)
            return Routing(weights, None, {}, "utterance")
        if inputs.lang_ids is None:
            raise ConfigError(
                "the language router needs each row's language: call "
                "handle.set_routing(langs=[...]) (or lang_probs=...) before the forward"
            )
        ids = inputs.lang_ids.to(x.device).long()
        known = ids >= 0
        base = ids.clamp(min=0) * epl
        expert_ids = base[:, None] + torch.arange(epl, device=x.device)  # (R, epl)
        weights = known[:, None].expand(-1, epl).to(x.dtype)  # 1 for known, 0 for -1
        return Routing(weights, expert_ids, {}, "utterance")


class LearnedRouter(nn.Module):
    """Softmax router with top-k from the hidden state (Shazeer et al. 2017; Switch; Mixtral).

    logits = W x (per token) or W mean_valid(x) (per utterance); probs = softmax(logits);
    the top-k probabilities (renormalised if `normalize`) gate their experts. While training it
    returns the load-balancing loss and z-loss (padding excluded). Subclasses add `prior()`.
    """

    def __init__(
        self,
        in_features: int,
        num_experts: int,
        top_k: int = 2,
        level: str = "token",
        normalize: bool = True,
        init_std: float = 0.02,
        jitter: float = 0.0,
        detach_input: bool = False,
    ):
        super().__init__()
        _check_level(level)
        self.level: Level = level  # type: ignore[assignment]
        self.num_experts = num_experts
        self.top_k = min(top_k, num_experts)
        self.normalize = normalize
        self.jitter = jitter
        self.detach_input = detach_input
        self.weight = nn.Parameter(torch.empty(num_experts, in_features))
        nn.init.normal_(self.weight, std=init_std)

    @classmethod
    def from_config(cls, cfg: MoLoRAConfig, in_features: int) -> LearnedRouter:
        return cls(
            in_features,
            cfg.num_routed,
            cfg.top_k,
            cfg.routing_level,
            cfg.normalize_top_k,
            cfg.router_init_std,
            cfg.router_jitter,
            cfg.router_input == "detached",
        )

    def prior(self, inputs: RouterInputs, device: torch.device) -> Tensor | None:
        """Per-row logit bias (R, E) added to the learned logits; none here."""
        return None

    def forward(self, x: Tensor, inputs: RouterInputs) -> Routing:
        h = x.detach() if self.detach_input else x
        if self.training and self.jitter > 0:
            h = h * torch.empty_like(h).uniform_(1 - self.jitter, 1 + self.jitter)
        mask = inputs.mask
        if self.level == "utterance":
            h = masked_mean(h, mask)  # (R, D)
            mask = None if mask is None else mask.any(dim=1)  # rows with audio/text
        logits = nn.functional.linear(h.to(self.weight.dtype), self.weight).float()
        bias = self.prior(inputs, x.device)
        if bias is not None:
            logits = logits + (bias if self.level == "utterance" else bias[:, None, :])
        probs = logits.softmax(dim=-1)
        dense = self.top_k == self.num_experts  # a softmax mixture of all experts
        ids = None if dense else probs.topk(self.top_k, dim=-1).indices
        aux: dict[str, Tensor] = {}
        if self.training:
            flat_mask = None if mask is None else mask.reshape(-1)
            num = self.num_experts
            if ids is not None:  # with all experts kept the balance loss is constant 1
                flat = (probs.reshape(-1, num), ids.reshape(-1, self.top_k), flat_mask)
                aux["load_balance"] = load_balance_loss(*flat)
            aux["z_loss"] = z_loss(logits.reshape(-1, num), flat_mask)
        if ids is None:
            return Routing(probs.to(x.dtype), None, aux, self.level)
        top = probs.gather(-1, ids)
        if self.normalize:
            top = top / top.sum(-1, keepdim=True)
        return Routing(top.to(x.dtype), ids, aux, self.level)


class HybridRouter(LearnedRouter):
    """Learned logits plus a language prior: `prior_strength` on the row's language experts.

    With a posterior (R, L) the prior is `prior_strength * posterior` spread to each language's
    experts. The prior table (L, E) is fixed unless `learn_prior`.
    """

    def __init__(
        self,
        in_features: int,
        num_langs: int,
        experts_per_lang: int,
        strength: float = 5.0,
        learn_prior: bool = False,
        **kwargs,
    ):
        super().__init__(in_features, num_langs * experts_per_lang, **kwargs)
        table = torch.eye(num_langs).repeat_interleave(experts_per_lang, dim=1) * strength
        if learn_prior:
            self.lang_prior = nn.Parameter(table)
        else:
            self.register_buffer("lang_prior", table)

    @classmethod
    def from_config(cls, cfg: MoLoRAConfig, in_features: int) -> HybridRouter:
        return cls(
            in_features,
            len(cfg.languages),
            cfg.experts_per_lang,
            cfg.prior_strength,
            cfg.learn_prior,
            top_k=cfg.top_k,
            level=cfg.routing_level,
            normalize=cfg.normalize_top_k,
            init_std=cfg.router_init_std,
            jitter=cfg.router_jitter,
            detach_input=cfg.router_input == "detached",
        )

    def prior(self, inputs: RouterInputs, device: torch.device) -> Tensor | None:
        table = self.lang_prior.to(device)
        if inputs.lang_probs is not None:
            return inputs.lang_probs.to(device=device, dtype=table.dtype) @ table
        if inputs.lang_ids is None:
            raise ConfigError(
                "the hybrid router needs each row's language (or a posterior): call "
                "handle.set_routing(langs=[...]) before the forward"
            )
        ids = inputs.lang_ids.to(device).long()
        rows = table[ids.clamp(min=0)]  # (R, E)
        return rows * (ids >= 0)[:, None].to(rows.dtype)


class WeightsRouter(nn.Module):
    """One learnable weight per routed expert and layer, the same for every input.

    The layer then computes W0 x + scale * sum_e w_e B_e A_e x: learned weight-space fusion of
    experts (freeze the experts, train only these weights on dev data). Initialised to 1/E.
    """

    level: Level = "static"

    def __init__(self, num_experts: int):
        super().__init__()
        self.weight = nn.Parameter(torch.full((num_experts,), 1.0 / num_experts))

    @classmethod
    def from_config(cls, cfg: MoLoRAConfig, in_features: int) -> WeightsRouter:
        return cls(cfg.num_routed)

    def forward(self, x: Tensor, inputs: RouterInputs) -> Routing:
        return Routing(self.weight.to(x.dtype), None, {}, "static")


ROUTERS: dict[str, type[nn.Module]] = {
    "language": LanguageRouter,
    "learned": LearnedRouter,
    "hybrid": HybridRouter,
    "weights": WeightsRouter,
}


def build_router(cfg: MoLoRAConfig, in_features: int) -> nn.Module | None:
    """The router the config names, for a layer with `in_features` inputs (None for "none")."""
    if cfg.router == "none":
        return None
    if cfg.router not in ROUTERS:
        raise ConfigError(f"unknown router {cfg.router!r}; known: {', '.join(ROUTERS)}")
    return ROUTERS[cfg.router].from_config(cfg, in_features)  # type: ignore[attr-defined]
