"""Speech projector: downsample encoder frames, then map them to the LM's embedding width.

Downsampling by k (config `downsample`) keeps the LM's sequence short (Whisper's encoder gives
50 frames/s; k = 5 gives SLAM-ASR's 10 per second, so 30 s of speech is 300 LM positions):
- `stack`: concatenate k consecutive frames (B, T, D) -> (B, ceil(T/k), k*D);
- `conv`: a strided Conv1d(D, D, kernel k, stride k) + GELU -> (B, ceil(T/k), D).
Then a head: `linear` (one Linear, or Linear-GELU-Linear when `hidden_dim` > 0; the baseline)
or `moe` (babelora.methods.speech_llm.moe_projector, experts in language groups).
Padding frames are zeroed before downsampling, so they never leak into a real output frame,
and output frames that hold no real input frame are padding too (zeros, mask False).

Shapes: B batch, T encoder frames, D encoder width, T' = ceil(T/k), O LM width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from babelora.methods.speech_llm.moe_projector import (
    MoEProjector,
    MoEProjectorConfig,
    ProjectorRouting,
)


@dataclass(frozen=True)
class ProjectorConfig:
    """Projector architecture; `moe` is used when kind == 'moe'."""

    kind: Literal["linear", "moe"] = "linear"
    downsample: int = 5  # k: encoder frames per LM position (50 Hz / 5 = 10 Hz)
    downsample_mode: Literal["stack", "conv"] = "stack"
    hidden_dim: int = 0  # 0: one Linear per head/expert; > 0: Linear-GELU-Linear of this width
    moe: MoEProjectorConfig = field(default_factory=MoEProjectorConfig)

    def __post_init__(self) -> None:
        if self.downsample < 1:
            raise ValueError(f"projector.downsample must be >= 1, got {self.downsample}")
        if self.hidden_dim < 0:
            raise ValueError("projector.hidden_dim must be >= 0")


@dataclass
class ProjectorOutput:
    """embeds (B,T',O) zeros on padding; mask (B,T') True on real frames; routing (MoE only)."""

    embeds: Tensor
    mask: Tensor
    routing: ProjectorRouting | None = None


def downsampled_lengths(lengths: Tensor, k: int) -> Tensor:
    """Real output frames per utterance: ceil(lengths / k)."""
    return torch.div(lengths + k - 1, k, rounding_mode="floor")


def length_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B, max_len) bool, True for the first lengths[b] positions."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


class Downsampler(nn.Module):
    """Merge k frames into one, by stacking or by a strided convolution."""

    def __init__(self, d_in: int, k: int, mode: str = "stack") -> None:
        super().__init__()
        self.k, self.mode = k, mode
        if mode == "stack":
            self.out_dim, self.conv = d_in * k, None
        elif mode == "conv":
            self.out_dim, self.conv = d_in, nn.Conv1d(d_in, d_in, kernel_size=k, stride=k)
        else:
            raise ValueError(f"downsample_mode must be 'stack' or 'conv', got {mode!r}")

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """x (B,T,D), mask (B,T) -> (B,T',out_dim), mask (B,T')."""
        B, T, D = x.shape
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros_like(x))
        pad = (-T) % self.k
        x = F.pad(x, (0, 0, 0, pad))  # (B, T + pad, D)
        out_mask = length_mask(downsampled_lengths(mask.sum(1), self.k), (T + pad) // self.k)
        if self.conv is None:
            return x.reshape(B, (T + pad) // self.k, self.k * D), out_mask
        y = F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)  # (B, T', D)
        return y, out_mask


def _mlp(d_in: int, d_out: int, hidden: int) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class Projector(nn.Module):
    """Downsampler + head (linear/MLP or MoE): encoder states -> LM input embeddings."""

    def __init__(self, cfg: ProjectorConfig, d_in: int, d_out: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.downsample = Downsampler(d_in, cfg.downsample, cfg.downsample_mode)
        width = self.downsample.out_dim
        if cfg.kind == "moe":
            self.head: nn.Module = MoEProjector(cfg.moe, width, d_out, cfg.hidden_dim)
        elif cfg.kind == "linear":
            self.head = _mlp(width, d_out, cfg.hidden_dim)
        else:
            raise ValueError(f"projector.kind must be 'linear' or 'moe', got {cfg.kind!r}")

    @property
    def moe(self) -> MoEProjector | None:
        """The MoE head, or None for the linear baseline."""
        return self.head if isinstance(self.head, MoEProjector) else None

    def forward(self, x: Tensor, mask: Tensor) -> ProjectorOutput:
        """x (B,T,D) encoder states, mask (B,T) -> ProjectorOutput over T' = ceil(T/k) frames."""
        h, out_mask = self.downsample(x, mask)
        if self.moe is not None:
            y, routing = self.head(h, out_mask)
            return ProjectorOutput(y, out_mask, routing)
        y = self.head(h)
        y = torch.where(out_mask.unsqueeze(-1), y, torch.zeros_like(y))
        return ProjectorOutput(y, out_mask, None)
