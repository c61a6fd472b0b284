"""Spoken language identification: a small head on pooled Whisper encoder states.

Language-agnostic use of language experts needs each utterance's language. Whisper tiny.en has
no trained language tokens, so babelora trains this head on the corpus: masked mean of the
(frozen) encoder's frame states over the speech frames -> LayerNorm -> MLP -> softmax over the
expert languages. The encoder runs once per utterance to extract features; the head trains in
seconds. Saved as safetensors + JSON (never pickle).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from babelora.errors import ModelLoadError


@dataclass(frozen=True)
class LidConfig:
    """LID head settings (none is given by the paper; defaults chosen on the offline corpus)."""

    hidden: int = 256  # MLP width; 0 = a linear (logistic-regression) head
    dropout: float = 0.1
    epochs: int = 60
    lr: float = 3e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    seed: int = 0


class LidHead(nn.Module):
    """(B, T', D) encoder states + (B, T') valid mask -> (B, L) language logits."""

    def __init__(self, d_model: int, languages: Sequence[str], cfg: LidConfig = LidConfig()):
        super().__init__()
        self.languages = tuple(languages)
        self.cfg = cfg
        self.norm = nn.LayerNorm(d_model)
        if cfg.hidden > 0:
            self.mlp = nn.Sequential(
                nn.Linear(d_model, cfg.hidden),
                nn.GELU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.hidden, len(self.languages)),
            )
        else:
            self.mlp = nn.Linear(d_model, len(self.languages))

    @staticmethod
    def pool(states: Tensor, mask: Tensor | None) -> Tensor:
        """Masked mean over frames; padding frames never contribute."""
        if mask is None:
            return states.mean(dim=1)
        weights = mask.to(states.dtype).unsqueeze(-1)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def forward_pooled(self, pooled: Tensor) -> Tensor:
        return self.mlp(self.norm(pooled))

    def forward(self, states: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_pooled(self.pool(states, mask))

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.state_dict().items()}, folder / "lid.safetensors"
        )
        meta = {
            "languages": list(self.languages),
            "d_model": self.norm.normalized_shape[0],
            "config": asdict(self.cfg),
        }
        (folder / "lid.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> LidHead:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "lid.json").is_file() or not (folder / "lid.safetensors").is_file():
            raise ModelLoadError(f"{folder}: not a LID head folder (lid.json + lid.safetensors)")
        meta = json.loads((folder / "lid.json").read_text(encoding="utf-8"))
        head = cls(meta["d_model"], meta["languages"], LidConfig(**meta["config"]))
        head.load_state_dict(load_file(folder / "lid.safetensors"))
        return head.eval()


def frame_mask(feature_lens: Tensor, enc_frames: int) -> Tensor:
    """Valid encoder frames (B, T') from mel frame counts (the encoder halves the frame rate)."""
    valid = (feature_lens + 1) // 2
    return torch.arange(enc_frames, device=feature_lens.device)[None, :] < valid[:, None]


def train_lid_head(
    pooled: Tensor,
    labels: Tensor,
    languages: Sequence[str],
    cfg: LidConfig = LidConfig(),
) -> LidHead:
    """Fit a head on pooled encoder features (N, D) and language indices (N,)."""
    torch.manual_seed(cfg.seed)
    head = LidHead(pooled.shape[1], languages, cfg)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    head.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(labels), generator=gen)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = nn.functional.cross_entropy(head.forward_pooled(pooled[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


@torch.no_grad()
def predict(head: LidHead, pooled: Tensor) -> tuple[list[str], Tensor]:
    """Most likely language per row and the posterior (N, L)."""
    probs = torch.softmax(head.forward_pooled(pooled), dim=-1)
    return [head.languages[i] for i in probs.argmax(-1).tolist()], probs
