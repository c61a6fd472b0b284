"""Multi-Granularity Representation Fusion (MGRF, from MoLoRA, AAAI 2026).

Frame-level states h (B, T, D) and a sentence-level vector s (B, D) pooled over the valid frames
are fused so that noise in single frames distorts the representation less:

    s  = Pool(h, mask)                                   attention pooling or masked mean
    h' = h + sigmoid(W_g [h ; s]) * (W_s s)              "gated" (default, methods.md 1.5)
    h' = h + W_s s                                       "add"
    h' = h + W_o [h ; s]                                 "concat"

The paper's exact operator is not public (methods.md 1.3); the variants above are the config.
Padding frames never enter s (they get zero attention / zero weight in the mean) and keep their
input values in h'. With `zero_init` the output projection starts at 0, so a fresh MGRF is the
identity and can be put after a pretrained encoder without changing it: after Whisper's encoder
(before cross-attention, `attach_to_encoder`; methods/molora) or in a speech-LLM, on the encoder
frames before the projector or on the projector's output just before it enters the LLM
(methods/speech_llm, `SpeechLLMConfig.mgrf`). It lives here, below the method packages, because
both of them use it.
Shapes: B batch, T frames, D model dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from babelora.errors import ConfigError


@dataclass(frozen=True)
class MGRFConfig:
    """MGRF options.

    Attributes:
        pooling: "attention" (softmax over learned frame scores) or "mean" (masked mean)
            (default "attention").
        fusion: "gated", "add" or "concat" (formulas in the module docstring) (default "gated").
        gate: "vector" (one gate per dimension) or "scalar" (one per frame) (default "vector").
        attention_hidden: hidden size of the attention scorer v^T tanh(W h); 0 = linear w^T h
            (default 0).
        zero_init: start with a zero output projection, so MGRF starts as the identity
            (default True).
        dropout: dropout on the sentence vector while training (default 0.0).
    """

    pooling: Literal["attention", "mean"] = "attention"
    fusion: Literal["gated", "add", "concat"] = "gated"
    gate: Literal["vector", "scalar"] = "vector"
    attention_hidden: int = 0
    zero_init: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "pooling": ("attention", "mean"),
            "fusion": ("gated", "add", "concat"),
            "gate": ("vector", "scalar"),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"mgrf.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if self.attention_hidden < 0:
            raise ConfigError(f"mgrf.attention_hidden must be >= 0, got {self.attention_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"mgrf.dropout must be in [0, 1), got {self.dropout}")


class MGRF(nn.Module):
    """Gated fusion of frame states with a pooled sentence vector (see module docstring)."""

    def __init__(self, d_model: int, config: MGRFConfig | None = None):
        super().__init__()
        cfg = config or MGRFConfig()
        self.config = cfg
        if cfg.pooling == "attention":
            if cfg.attention_hidden:
                self.scorer = nn.Sequential(
                    nn.Linear(d_model, cfg.attention_hidden),
                    nn.Tanh(),
                    nn.Linear(cfg.attention_hidden, 1, bias=False),
                )
            else:
                self.scorer = nn.Linear(d_model, 1, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.fusion == "concat":
            self.proj = nn.Linear(2 * d_model, d_model)
        else:
            self.proj = nn.Linear(d_model, d_model)  # W_s
        if cfg.fusion == "gated":
            self.gate = nn.Linear(2 * d_model, d_model if cfg.gate == "vector" else 1)  # W_g
        if cfg.zero_init:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def pool(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        """Sentence vector s (B, D) from the valid frames of h (B, T, D); mask (B, T) bool."""
        valid = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if mask is None else mask
        if valid.shape != h.shape[:2]:
            raise ConfigError(f"MGRF mask is {tuple(valid.shape)}, frames are {tuple(h.shape[:2])}")
        weight = valid.to(h.dtype)
        if self.config.pooling == "attention":
            scores = self.scorer(h).squeeze(-1).float()  # (B, T)
            scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
            weight = scores.softmax(dim=-1).to(h.dtype) * weight  # padding: exactly 0
        total = weight.sum(dim=1, keepdim=True).clamp(min=torch.finfo(h.dtype).tiny)
        return torch.einsum("bt,btd->bd", weight / total, h)

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        """h' (B, T, D); padding frames (mask False) are returned unchanged."""
        s = self.dropout(self.pool(h, mask))
        s_t = s[:, None, :].expand_as(h)  # s at every frame
        if self.config.fusion == "concat":
            update = self.proj(torch.cat([h, s_t], dim=-1))
        else:
            update = self.proj(s)[:, None, :]  # W_s s, (B, 1, D)
            if self.config.fusion == "gated":
                update = torch.sigmoid(self.gate(torch.cat([h, s_t], dim=-1))) * update
        if mask is not None:
            update = update * mask[..., None].to(update.dtype)
        return h + update


def attach_to_encoder(
    encoder: nn.Module,
    mgrf: MGRF,
    mask_fn: Callable[[], Tensor | None] | None = None,
) -> torch.utils.hooks.RemovableHandle:
    """Apply `mgrf` to an encoder's output (e.g. Whisper's, before cross-attention).

    Registers `mgrf` as `encoder.mgrf` (so it trains and saves with the model) and a forward
    hook that replaces `last_hidden_state` (or the first output). `mask_fn()` gives the batch's
    valid-frame mask (B, T'), e.g. `lambda: handle.context.masks.get("encoder")`; None = all
    frames valid. Attach after `inject(...)`, which freezes everything it does not create.
    Returns the hook handle (`.remove()` detaches the hook).
    """
    encoder.add_module("mgrf", mgrf)

    def hook(module: nn.Module, args, output):
        mask = mask_fn() if mask_fn is not None else None
        if hasattr(output, "last_hidden_state"):
            output.last_hidden_state = mgrf(output.last_hidden_state, mask)
            return output
        if isinstance(output, tuple):
            return (mgrf(output[0], mask), *output[1:])
        return mgrf(output, mask)

    return encoder.register_forward_hook(hook)
