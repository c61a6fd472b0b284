"""Tiny models (built from configs, no downloads) and expert helpers for the adapter tests."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """PEFT's test model shape: a few linears and a nonlinearity."""

    def __init__(self, d: int = 12, hidden: int = 20, out: int = 6):
        super().__init__()
        self.lin0 = nn.Linear(d, hidden)
        self.lin1 = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        return self.head(torch.relu(self.lin1(torch.relu(self.lin0(x)))))


def make_whisper(seed: int = 0):
    """A tiny random WhisperForConditionalGeneration (d_model 64, 2+2 layers, vocab 120)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(
        vocab_size=120,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_mel_bins=80,
        max_source_positions=40,
        max_target_positions=32,
        decoder_start_token_id=1,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    torch.manual_seed(seed)
    return WhisperForConditionalGeneration(cfg).eval()


def whisper_batch(rows: int = 3, tokens: int = 6, seed: int = 1):
    """(input_features (rows, 80, 80), decoder_input_ids (rows, tokens)); 40 encoder positions."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(rows, 80, 80, generator=g)
    ids = torch.randint(3, 120, (rows, tokens), generator=g)
    return feats, ids


def randomize_experts(handle, seed: int = 0, scale: float = 0.5) -> None:
    """Give every expert non-zero B (a fresh adapter is exactly the base model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in handle.layers.values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * scale)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * scale)
