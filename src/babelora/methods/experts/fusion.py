"""Fusion of language experts into one (LoRA language experts, Interspeech 2025, sec. 2.5).

Weight space: dW = sum_e w_e * scale * B_e A_e per layer, with weights given, the uniform
average, or learned per layer (a `weights` router trained on dev data with the experts frozen);
the sum is re-factorised to one rank-`rank` LoRA by truncated SVD and saved as a PEFT adapter,
with the relative Frobenius error of the truncation reported per layer.

The SVD never forms the (O, D) matrix: with dW = Bc Ac (Bc (O, R), Ac (R, D), R = sum of ranks),
QR of Bc and Ac^T reduce it to an (R, R) core whose SVD gives the same singular triplets.

Output space: y = W0 x + sum_e g_e(pool(x)) scale B_e A_e x, a gate from the masked mean of
each layer's input: `gated_fusion_config` is the MoLoRA layer with a learned utterance-level
dense router and no shared expert, so it shares its kernels, tests and export path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from babelora.adapters.config import LoRAConfig, MoLoRAConfig
from babelora.adapters.inject import AdapterHandle
from babelora.adapters.kernels import flat_b
from babelora.adapters.peft_io import write_peft_adapter
from babelora.errors import ConfigError, MergeError


def learned_fusion_config(lora: LoRAConfig, languages: Sequence[str]) -> MoLoRAConfig:
    """Language experts mixed by one learnable weight per expert and layer (init 1/L)."""
    return MoLoRAConfig(lora=lora, languages=tuple(languages), num_shared=0, router="weights")


def gated_fusion_config(lora: LoRAConfig, languages: Sequence[str]) -> MoLoRAConfig:
    """Output-space gated fusion: a dense softmax gate per layer from the pooled layer input."""
    return MoLoRAConfig(
        lora=lora,
        languages=tuple(languages),
        num_shared=0,
        router="learned",
        routing_level="utterance",
        top_k=len(languages),
        load_balance_weight=0.0,
        z_loss_weight=0.0,
    )


@torch.no_grad()
def copy_experts(src: AdapterHandle, dst: AdapterHandle) -> None:
    """Copy every layer's stacked experts from `src` to `dst` (same targets, same layout)."""
    if set(src.layers) != set(dst.layers):
        raise ConfigError("copy_experts: the two handles wrap different modules")
    for name, layer in dst.layers.items():
        other = src.layers[name]
        if other.lora_A.shape != layer.lora_A.shape or other.scaling != layer.scaling:
            raise ConfigError(
                f"copy_experts: {name} differs ({tuple(other.lora_A.shape)} scale {other.scaling}"
                f" vs {tuple(layer.lora_A.shape)} scale {layer.scaling})"
            )
        layer.lora_A.copy_(other.lora_A)
        layer.lora_B.copy_(other.lora_B)


def average_weights(handle: AdapterHandle) -> Tensor:
    """Shared experts 1, every routed expert 1/num_routed: the uniform average of experts."""
    cfg = handle.config
    w = torch.ones(cfg.num_total)
    if cfg.num_routed:
        w[cfg.num_shared :] = 1.0 / cfg.num_routed
    return w


def low_rank(bc: Tensor, ac: Tensor, rank: int) -> tuple[Tensor, Tensor, float]:
    """Best rank-`rank` factors of Bc @ Ac (Eckart-Young) and the relative Frobenius error.

    Returns A' (rank, D), B' (O, rank) with B' A' the truncated SVD, singular values split
    evenly (sqrt) between the factors; rows/columns past the true rank are zero.
    """
    bc, ac = bc.double(), ac.double()
    qb, rb = torch.linalg.qr(bc)  # (O, m), (m, R)
    qa, ra = torch.linalg.qr(ac.T)  # (D, n), (n, R)
    u, s, vh = torch.linalg.svd(rb @ ra.T)  # core (m, n)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    b = (qb @ u[:, :k]) * root  # (O, k)
    a = root[:, None] * (vh[:k] @ qa.T)  # (k, D)
    total = float((s**2).sum())
    err = float((s[k:] ** 2).sum() / total) ** 0.5 if total > 0 else 0.0
    if k < rank:
        a = torch.cat([a, a.new_zeros(rank - k, a.shape[1])])
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - k)], dim=1)
    return a.float(), b.float(), err


@dataclass
class FusionResult:
    """One fused LoRA (scale 1: B' A' is the whole update) and its truncation errors."""

    modules: dict[str, tuple[Tensor, Tensor]]
    rel_error: dict[str, float]
    rank: int

    @property
    def max_error(self) -> float:
        return max(self.rel_error.values(), default=0.0)

    @property
    def mean_error(self) -> float:
        return sum(self.rel_error.values()) / max(len(self.rel_error), 1)

    def delta_weight(self, name: str) -> Tensor:
        a, b = self.modules[name]
        return b @ a

    def save(self, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
        """Write as a PEFT adapter (alpha = rank, so PEFT's scale is 1)."""
        provenance = {
            "fusion": "weight-space, truncated SVD",
            "rank": self.rank,
            "max_rel_error": self.max_error,
            "rel_error": self.rel_error,
        }
        return write_peft_adapter(
            path,
            self.modules,
            alpha=float(self.rank),
            base_model_name_or_path=base_model_name_or_path,
            provenance=provenance,
        )


@torch.no_grad()
def fuse_weight_space(
    handle: AdapterHandle,
    weights: Tensor | dict[str, Tensor] | None = None,
    rank: int | None = None,
) -> FusionResult:
    """Fuse each layer's experts into one rank-`rank` LoRA (default: the experts' rank).

    Args:
        weights: (E,) for all layers, {module: (E,)} per layer, or None for each layer's learned
            `weights` router (shared experts count 1).
        rank: rank of the fused adapter; the error is 0 when it reaches the sum of the ranks of
            the experts with non-zero weight.
    """
    rank = rank or handle.config.lora.rank
    if rank <= 0:
        raise ConfigError(f"fusion rank must be positive, got {rank}")
    modules, errors = {}, {}
    for name, layer in handle.layers.items():
        w = weights.get(name) if isinstance(weights, dict) else weights
        if isinstance(weights, dict) and w is None:
            raise MergeError(f"fusion weights lack module {name}")
        w = layer._expert_weights(w)  # validates the length; router weights when None
        keep = torch.nonzero(w).flatten()
        if keep.numel() == 0:
            a = layer.lora_A.new_zeros(rank, layer.in_features).float()
            modules[name], errors[name] = (a, a.new_zeros(layer.out_features, rank)), 0.0
            continue
        A = layer.lora_A.detach().double()[keep]  # (n, r, D)
        scale = (layer.scaling * w[keep].double()).to(A.device)
        B = layer.lora_B.detach().double()[keep] * scale[:, None, None]  # (n, O, r)
        a, b, err = low_rank(flat_b(B), A.reshape(-1, A.shape[-1]), rank)
        modules[name], errors[name] = (a.cpu(), b.cpu()), err
    return FusionResult(modules, errors, rank)
