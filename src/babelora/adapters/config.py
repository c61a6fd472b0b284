"""Configs of the expert adapter layers: plain LoRA, language experts, MoLoRA, fusion.

One layer type serves all of them (see `expert_linear.py`): a frozen linear plus E low-rank
experts, the first `num_shared` always on, the rest chosen by a router. The configs below only
say how many experts there are and how they are routed:

- plain LoRA: `LoRAConfig` (one always-on expert);
- one LoRA expert per language: `MoLoRAConfig(languages=..., num_shared=0)`;
- MoLoRA (shared + routed experts): `MoLoRAConfig(languages=..., num_shared=1, router=...)`;
- learned weight-space fusion: `MoLoRAConfig(router="weights", num_shared=0, ...)`;
- output-space gated fusion: `MoLoRAConfig(router="learned", routing_level="utterance")`.

The papers (methods.md sections 1-2) leave every number here open; each default is a choice
documented on its field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from babelora.errors import ConfigError
from babelora.languages import check_lang

RouterKind = Literal["none", "language", "learned", "hybrid", "weights"]
RoutingLevel = Literal["token", "utterance"]
Kernel = Literal["auto", "dense", "gather", "grouped"]


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank update of each target linear: y = W0 x + scale * B A dropout(x).

    Attributes:
        rank: r, the inner dimension of every expert (default 8).
        alpha: LoRA alpha; scale = alpha / rank, or alpha / sqrt(rank) with `use_rslora`
            (default 16.0, i.e. scale 2, the common Whisper recipe keeps alpha = 2 r).
        dropout: dropout on the experts' input, as PEFT's `lora_dropout` (default 0.0). One mask
            is shared by all experts of a layer (PEFT draws one per adapter).
        targets: which linear layers get experts; each entry is a preset name from
            `inject.PRESETS` (e.g. `whisper-all`, `whisper-decoder`, `causal-lm-attn`), a bare
            module name matched as a suffix (`q_proj` matches `...self_attn.q_proj`, PEFT's rule)
            or a regular expression matched against the full module name
            (default `("whisper-all",)`: Whisper encoder and decoder self-attention q/k/v/out,
            cross-attention q/k/v/out and fc1/fc2).
        exclude: regular expressions (full match) of module names to leave out (default none).
        use_rslora: rank-stabilised scale alpha / sqrt(rank) (arXiv:2312.03732) (default False).
        init: "default" = PEFT's `init_lora_weights=True` (A Kaiming-uniform, B = 0);
            "gaussian" = A ~ N(0, 1/r), B = 0. Either way a new adapter starts as the base model.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("whisper-all",)
    exclude: tuple[str, ...] = ()
    use_rslora: bool = False
    init: Literal["default", "gaussian"] = "default"

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ConfigError(f"lora.rank must be a positive integer, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ConfigError("lora.targets is empty: name a preset (whisper-all) or patterns")
        if self.init not in ("default", "gaussian"):
            raise ConfigError(f"lora.init must be 'default' or 'gaussian', got {self.init!r}")

    @property
    def scaling(self) -> float:
        """The factor applied to B A x: alpha / rank (or alpha / sqrt(rank) for rsLoRA)."""
        return self.alpha / (self.rank**0.5 if self.use_rslora else self.rank)


@dataclass(frozen=True)
class MoLoRAConfig:
    """A layer of shared (always-on) and routed low-rank experts (MoLoRA, AAAI 2026).

    y = W0 x + scale * (sum_s B_s A_s x + sum_{i in routed} g_i B_i A_i x).
    Expert order inside a layer: the `num_shared` shared experts first, then the routed ones;
    with `languages`, routed expert `S + l * experts_per_lang + j` is expert j of language l.

    Attributes:
        lora: rank, alpha, dropout, targets of every expert (default `LoRAConfig()`).
        languages: ISO 639-1 codes that own experts, in expert order (default none), or
            language pairs `src>tgt` (e.g. `en>de`) for experts per translation direction (the
            speech-LLM's `routing_key: pair`). Required by the `language` and `hybrid` routers;
            the learned router may use a plain pool instead.
        experts_per_lang: routed experts per language (default 1).
        num_experts: size of a language-free routed pool for the `learned`/`weights` routers;
            0 means `len(languages) * experts_per_lang` (default 0).
        num_shared: always-on experts that model cross-lingual knowledge (default 1).
        router: how routed experts are weighted (default "language", the faithful reading of
            "a router activates language-specific experts"):
            "none" = no routed experts (plain LoRA or shared experts only);
            "language" = hard language id per utterance: its experts get weight 1, the others 0;
                given a language posterior instead (LID), experts are weighted by it;
            "learned" = softmax over a linear map of the hidden state, top-k;
            "hybrid" = learned logits plus a language prior (`prior_strength` on the row's
                language experts);
            "weights" = one learnable weight per expert and layer, independent of the input
                (learned weight-space fusion of language experts).
        routing_level: "token" routes every token/frame; "utterance" routes once per row from the
            masked mean of the layer's input (cached while decoding) (default "token"; the
            language router is always per utterance).
        top_k: experts kept per token/utterance by the learned and hybrid routers; equal to the
            number of routed experts means a dense softmax mixture (default 2).
        normalize_top_k: renormalise the kept gates to sum to 1 (Mixtral) (default True).
        posterior_top_k: language router with a posterior: keep the k likeliest languages,
            renormalised; 0 keeps all (default 0).
        router_input: "hidden" = the layer input; "detached" = the same without gradient into
            the preceding layers (default "hidden").
        router_init_std: std of the learned router's initial weights (default 0.02; small so the
            first routing is near uniform but ties are broken).
        router_jitter: multiplicative uniform noise (1 +- jitter) on the router input while
            training, Switch Transformer style (default 0.0, off).
        prior_strength: hybrid router logit bonus for the row's language experts (default 5.0,
            so the language's experts win unless the learned logits disagree strongly).
        learn_prior: hybrid router: make the language prior a trainable [L, E] table
            (default False).
        load_balance_weight: weight of the Switch load-balancing loss (value 1.0 at uniform
            routing) in the training loss (default 0.01, as Switch/Mixtral).
        z_loss_weight: weight of the router z-loss (ST-MoE) (default 0.001).
        kernel: forward strategy: "dense" (all experts in two matmuls), "gather" (per-row
            gathered experts, for utterance routing), "grouped" (tokens dispatched to their top-k
            experts, for large pools); "auto" picks by shape (default "auto"). A kernel named
            for a level it does not serve (gather at token level, grouped at utterance level,
            either with a dense router) falls back to dense. All agree up to float rounding.
    """

    lora: LoRAConfig = field(default_factory=LoRAConfig)
    languages: tuple[str, ...] = ()
    experts_per_lang: int = 1
    num_experts: int = 0
    num_shared: int = 1
    router: RouterKind = "language"
    routing_level: RoutingLevel = "token"
    top_k: int = 2
    normalize_top_k: bool = True
    posterior_top_k: int = 0
    router_input: Literal["hidden", "detached"] = "hidden"
    router_init_std: float = 0.02
    router_jitter: float = 0.0
    prior_strength: float = 5.0
    learn_prior: bool = False
    load_balance_weight: float = 0.01
    z_loss_weight: float = 0.001
    kernel: Kernel = "auto"

    def __post_init__(self) -> None:
        langs = tuple(check_route_key(code) for code in self.languages)
        if len(set(langs)) != len(langs):
            raise ConfigError(f"molora.languages has duplicates: {list(self.languages)}")
        object.__setattr__(self, "languages", langs)
        if self.router not in ("none", "language", "learned", "hybrid", "weights"):
            raise ConfigError(
                "molora.router must be one of none, language, learned, hybrid, weights; "
                f"got {self.router!r}"
            )
        if self.routing_level not in ("token", "utterance"):
            raise ConfigError(
                f"molora.routing_level must be token or utterance, got {self.routing_level!r}"
            )
        for name in ("experts_per_lang", "top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"molora.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_experts", "num_shared", "posterior_top_k"):
            if getattr(self, name) < 0:
                raise ConfigError(f"molora.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("load_balance_weight", "z_loss_weight", "router_jitter", "router_init_std"):
            if getattr(self, name) < 0:
                raise ConfigError(f"molora.{name} must be >= 0, got {getattr(self, name)}")
        if self.router in ("language", "hybrid") and not self.languages:
            raise ConfigError(f"molora.router={self.router} needs molora.languages")
        if self.num_experts and self.languages and self.router in ("language", "hybrid"):
            raise ConfigError("molora.num_experts is for language-free pools; leave it 0")
        if self.router == "none" and self.num_routed:
            raise ConfigError(
                "molora.router=none cannot route experts: set num_experts=0 and no languages"
            )
        if self.router != "none" and not self.num_routed:
            raise ConfigError(
                f"molora.router={self.router} needs routed experts (languages or num_experts)"
            )
        if self.router in ("learned", "hybrid") and self.top_k > self.num_routed:
            raise ConfigError(
                f"molora.top_k={self.top_k} exceeds the {self.num_routed} routed experts"
            )
        if self.num_total == 0:
            raise ConfigError("molora has no experts: set num_shared or languages/num_experts")

    @property
    def num_routed(self) -> int:
        """Routed experts per layer."""
        if self.num_experts:
            return self.num_experts
        return len(self.languages) * self.experts_per_lang

    @property
    def num_total(self) -> int:
        """All experts per layer (shared first)."""
        return self.num_shared + self.num_routed

    @property
    def aux_loss_weights(self) -> dict[str, float]:
        """Weights of the router's auxiliary losses, keyed as `Routing.aux_losses`."""
        return {"load_balance": self.load_balance_weight, "z_loss": self.z_loss_weight}


def check_route_key(key: str) -> str:
    """A language code, or a direction `src>tgt` of two codes, normalised (LanguageError else)."""
    if isinstance(key, str) and ">" in key:
        src, _, tgt = key.partition(">")
        return f"{check_lang(src)}>{check_lang(tgt)}"
    return check_lang(key)


def lora_only(lora: LoRAConfig) -> MoLoRAConfig:
    """Plain LoRA as the one-expert case of the expert layer."""
    return MoLoRAConfig(lora=lora, num_shared=1, router="none")


def language_experts(lora: LoRAConfig, languages: tuple[str, ...] | list[str]) -> MoLoRAConfig:
    """One LoRA expert per language, no shared expert, hard language routing."""
    return MoLoRAConfig(lora=lora, languages=tuple(languages), num_shared=0, router="language")
