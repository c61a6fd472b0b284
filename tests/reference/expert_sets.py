"""A saved language-expert set on the tiny random Whisper, with non-zero experts (tests)."""

from __future__ import annotations

from pathlib import Path

import torch


def make_expert_set(
    folder: Path,
    langs: tuple[str, ...] = ("de", "fr"),
    rank: int = 4,
    seed: int = 0,
    scale: float = 0.05,
    targets: tuple[str, ...] = ("whisper-all",),
) -> Path:
    """Experts with random A and B (B scaled by `scale`) on tiny_random_whisper(seed=0)."""
    from babelora.adapters import LoRAConfig, inject, language_experts
    from babelora.methods.experts.expert_sets import export_expert_set
    from babelora.models.whisper import tiny_random_whisper

    handle = tiny_random_whisper(seed=0)
    lora = LoRAConfig(rank=rank, alpha=2.0 * rank, targets=targets)
    adapter = inject(handle.model, language_experts(lora, langs))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * 0.3)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * scale)
    return export_expert_set(adapter, folder, "tiny-random-whisper(seed=0)")


def tiny_batch(langs: list[str], seed: int = 0) -> dict:
    """A training-style batch for the tiny Whisper: features, prompt + text ids, labels."""
    g = torch.Generator().manual_seed(seed)
    n = len(langs)
    ids = torch.randint(200, 5000, (n, 6), generator=g)
    ids[:, 0] = 50257
    labels = torch.full((n, 6), -100)
    labels[:, 2:5] = ids[:, 3:6]
    return {
        "input_features": torch.randn(n, 80, 60, generator=g),
        "feature_lens": torch.full((n,), 60),
        "decoder_input_ids": ids,
        "labels": labels,
        "langs": list(langs),
    }
