"""ExpertLoRALinear: a frozen linear layer plus E stacked low-rank experts.

    y = W0 x + scale * ( sum_{s < S} B_s A_s x  +  sum_{i routed} g_i(x) B_i A_i x )

(LoRA, Hu et al. 2021, arXiv:2106.09685; MoLoRA, AAAI 2026). The first S experts are shared
(always on, weight 1); the routed ones are weighted by a router (`routing.py`). One layer covers:
plain LoRA (S = 1, no router), one expert per language in mixed-language batches (language
router), MoLoRA (shared + learned/hybrid router) and learned fusion (weights router), with the
batched kernels of `kernels.py` (no Python loop over experts).

Shapes: x (..., D) -> y (..., O); A (E, r, D); B (E, O, r); R rows = x.shape[0], T = the
positions between the first and last dim (1 for 2-D inputs).
Names follow PEFT (`base_layer`, `lora_A`, `lora_B`, scale alpha/r) so export is a reshape.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from babelora.adapters.config import MoLoRAConfig
from babelora.adapters.context import RoutingContext
from babelora.adapters.kernels import (
    dense_delta,
    flat_b,
    gather_delta,
    grouped_delta,
    static_delta,
)
from babelora.adapters.routing import RouterInputs, Routing, build_router
from babelora.errors import ConfigError, MergeError

GATHER_MIN_POSITIONS = 16  # below this many positions per row, gathering weights costs more
GROUPED_MIN_EXPERTS = 8  # token dispatch pays off only for pools this large with k <= E/4


class ExpertLoRALinear(nn.Module):
    """A frozen `nn.Linear` (`base_layer`) with shared and routed low-rank experts.

    Args:
        base: the linear layer to wrap; its parameters are frozen.
        num_shared: always-on experts S.
        num_routed: routed experts (0 without a router).
        rank, alpha, dropout, use_rslora, init: as `LoRAConfig`.
        router: module returning a `Routing` (None: all experts always on, weight 1).
        context: shared per-batch routing state (languages, masks, decode cache, aux losses).
        key: this layer's module name (cache and aux-loss key, export name).
        stream: which mask of the context applies ("encoder", "decoder", "default").
        kernel: as `MoLoRAConfig.kernel`.
    """

    def __init__(
        self,
        base: nn.Linear,
        *,
        num_shared: int = 1,
        num_routed: int = 0,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        use_rslora: bool = False,
        init: str = "default",
        router: nn.Module | None = None,
        context: RoutingContext | None = None,
        key: str = "",
        stream: str = "default",
        kernel: str = "auto",
    ):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ConfigError(
                f"{key or 'layer'}: experts wrap nn.Linear, got {type(base).__name__}"
            )
        if (router is None) != (num_routed == 0):
            raise ConfigError(f"{key or 'layer'}: routed experts need a router and vice versa")
        self.base_layer = base
        base.requires_grad_(False)
        self.num_shared = num_shared
        self.num_routed = num_routed
        self.rank = rank
        self.alpha = alpha
        self.use_rslora = use_rslora
        self.scaling = alpha / (math.sqrt(rank) if use_rslora else rank)
        self.kernel = kernel
        self.key = key
        self.stream = stream
        self.context = context if context is not None else RoutingContext()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        num = num_shared + num_routed
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(num, rank, base.in_features, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(num, base.out_features, rank, device=w.device))
        self.router = router
        self.merged_weights: Tensor | None = None
        self.disabled = False
        self.reset_parameters(init)

    @classmethod
    def from_config(
        cls,
        base: nn.Linear,
        cfg: MoLoRAConfig,
        context: RoutingContext | None = None,
        key: str = "",
        stream: str = "default",
    ) -> ExpertLoRALinear:
        """The layer `cfg` describes, around `base`."""
        router = build_router(cfg, base.in_features)
        if router is not None:
            router.to(base.weight.device)
        lora = cfg.lora
        return cls(
            base,
            num_shared=cfg.num_shared,
            num_routed=cfg.num_routed,
            rank=lora.rank,
            alpha=lora.alpha,
            dropout=lora.dropout,
            use_rslora=lora.use_rslora,
            init=lora.init,
            router=router,
            context=context,
            key=key,
            stream=stream,
            kernel=cfg.kernel,
        )

    # -- parameters -------------------------------------------------------------------------
    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def num_experts(self) -> int:
        return self.num_shared + self.num_routed

    @property
    def merged(self) -> bool:
        return self.merged_weights is not None

    @torch.no_grad()
    def reset_parameters(self, init: str = "default") -> None:
        """PEFT's init: A as nn.Linear's default (Kaiming-uniform, a=sqrt(5)) or N(0, 1/r); B=0."""
        if init == "default":  # kaiming_uniform_(a=sqrt(5)) on (r, D) has bound 1/sqrt(D)
            bound = 1.0 / math.sqrt(self.in_features)
            self.lora_A.uniform_(-bound, bound)
        elif init == "gaussian":
            self.lora_A.normal_(std=1.0 / self.rank)
        else:
            raise ConfigError(f"unknown LoRA init {init!r}; use 'default' or 'gaussian'")
        self.lora_B.zero_()

    # -- weights and merging ----------------------------------------------------------------
    def _expert_weights(self, weights: Tensor | None) -> Tensor:
        """Per-expert multipliers (E,) for merging/exporting; None only without a router."""
        if weights is None:
            if self.router is not None and self.router.level != "static":
                raise MergeError(
                    f"{self.key}: routing depends on the input, so there is no single weight to "
                    "merge; pass expert weights (e.g. handle.fold_weights(lang))"
                )
            weights = torch.ones(self.num_experts)
            if self.router is not None:  # static router: its learned weights
                weights[self.num_shared :] = self.router(self.lora_A, RouterInputs()).weights
        weights = torch.as_tensor(weights, dtype=torch.float32).detach().reshape(-1)
        if weights.numel() != self.num_experts:
            raise MergeError(
                f"{self.key}: got {weights.numel()} expert weights for {self.num_experts} experts"
            )
        return weights.cpu()

    def delta_weight(self, expert: int | None = None, weights: Tensor | None = None) -> Tensor:
        """scale * sum_e w_e B_e A_e as an (O, D) float32 matrix.

        `expert` picks one expert (weight 1); otherwise `weights` (E,) as in `merge`.
        """
        if expert is not None:
            if not 0 <= expert < self.num_experts:
                raise MergeError(f"{self.key}: no expert {expert} (has {self.num_experts})")
            weights = torch.zeros(self.num_experts)
            weights[expert] = 1.0
        w = self._expert_weights(weights).to(self.lora_A.device)
        A = self.lora_A.detach().float()
        B = self.lora_B.detach().float()
        E, r, D = A.shape
        return self.scaling * (flat_b(B * w[:, None, None]) @ A.reshape(E * r, D))

    @torch.no_grad()
    def merge(self, weights: Tensor | None = None) -> None:
        """Add the experts' update (with fixed `weights`) into the base weight; idempotent."""
        w = self._expert_weights(weights)
        if self.merged:
            if torch.equal(w, self.merged_weights):
                return
            raise MergeError(f"{self.key}: already merged with other weights; unmerge() first")
        weight = self.base_layer.weight
        weight += self.delta_weight(weights=w).to(weight.dtype)
        self.merged_weights = w

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract a merged update again (no-op when not merged)."""
        if not self.merged:
            return
        weight = self.base_layer.weight
        weight -= self.delta_weight(weights=self.merged_weights).to(weight.dtype)
        self.merged_weights = None

    # -- forward ----------------------------------------------------------------------------
    def route(self, x3: Tensor) -> Routing | None:
        """The routing decision for x3 (R, T, D): cached, computed, and recorded."""
        if self.router is None:
            return None
        ctx = self.context
        R, T, _ = x3.shape
        if self.router.level == "static":
            return self.router(x3, RouterInputs())
        routing = ctx.cached(self.key, R)
        if routing is not None:
            return routing
        strict = self.router.level == "utterance" or not ctx.cache_decisions
        inputs = ctx.inputs(R, T, self.stream, x3.device, strict_mask=strict)
        routing = self.router(x3, inputs)
        ctx.store(self.key, routing)
        ctx.record(self.key, routing, inputs.mask, self.num_routed)
        return routing

    def _delta(self, h: Tensor, routing: Routing | None) -> Tensor:
        """scale * sum of gated expert outputs for h (R, T, D).

        The scale rides on the (small) expert weights, never on the (R, T, O) output.
        """
        A, B, S, scale = self.lora_A, self.lora_B, self.num_shared, self.scaling
        if routing is None:
            return static_delta(h, A, B, A.new_full((self.num_experts,), scale))
        if routing.level == "static":
            w = torch.cat([routing.weights.new_ones(S), routing.weights.to(A.dtype)])
            return static_delta(h, A, B, w * scale)
        ids, gates = routing.expert_ids, routing.weights.to(A.dtype) * scale
        R, T, D = h.shape
        if routing.level == "utterance":
            K = S + (0 if ids is None else ids.shape[-1])
            use_gather = self.kernel == "gather" or (
                self.kernel == "auto" and self.num_experts > K and T >= GATHER_MIN_POSITIONS
            )
            if ids is not None and use_gather:
                shared = torch.arange(S, device=h.device).expand(R, S)
                all_ids = torch.cat([shared, ids + S], dim=1)  # (R, K)
                all_w = torch.cat([gates.new_full((R, S), scale), gates], dim=1)
                return gather_delta(h, A, B, all_ids, all_w)
            dense = Routing(gates, ids).dense(self.num_routed)  # (R, E_routed)
            w = torch.cat([dense.new_full((R, S), scale), dense], dim=-1)
            return dense_delta(h, A, B, w[:, None, :])
        # token level
        k = 0 if ids is None else ids.shape[-1]
        use_grouped = self.kernel == "grouped" or (
            self.kernel == "auto"
            and self.num_routed >= GROUPED_MIN_EXPERTS
            and 4 * k <= self.num_routed
        )
        if ids is not None and use_grouped:
            flat = grouped_delta(
                h.reshape(-1, D), A[S:], B[S:], ids.reshape(-1, k), gates.reshape(-1, k)
            )
            y = flat.reshape(R, T, -1)
            if S:
                y = y + static_delta(h, A[:S], B[:S], A.new_full((S,), scale))
            return y
        dense = Routing(gates, ids).dense(self.num_routed)  # (R, T, E_routed)
        w = torch.cat([dense.new_full((R, T, S), scale), dense], dim=-1)
        return dense_delta(h, A, B, w)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disabled or self.merged:
            return result
        D = self.in_features
        x3 = x.reshape(x.shape[0], -1, D) if x.dim() > 1 else x.reshape(1, 1, D)
        routing = self.route(x3)
        h = self.dropout(x3).to(self.lora_A.dtype)
        delta = self._delta(h, routing)
        return result + delta.reshape(*x.shape[:-1], self.out_features).to(result.dtype)

    def extra_repr(self) -> str:
        router = "none" if self.router is None else type(self.router).__name__
        return (
            f"key={self.key!r}, shared={self.num_shared}, routed={self.num_routed}, "
            f"rank={self.rank}, scaling={self.scaling:g}, router={router}, stream={self.stream}"
        )
