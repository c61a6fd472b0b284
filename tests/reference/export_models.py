"""Tiny Whispers to export: multilingual (base's vocabulary and tokenizer), fine-tuned with a
random PEFT LoRA, or with every tensor perturbed (no two equal, so nothing is aliased)."""

from __future__ import annotations

from pathlib import Path

import torch

# a tiny random Whisper with the multilingual vocabulary (base's tokenizer fits it)
MULTILINGUAL = dict(
    vocab_size=51865,
    decoder_start_token_id=50258,
    eos_token_id=50257,
    pad_token_id=50257,
    bos_token_id=50257,
    begin_suppress_tokens=[220, 50257],
)


def base_tokenizer_json() -> Path:
    """Whisper base's tokenizer.json straight from its package (no join: it is small)."""
    from babelora.models import offline

    item = next(f for f in offline.WHISPER_BASE.extras if f.path.endswith("tokenizer.json"))
    return offline._locate(item, "Whisper base")


def base_config_json() -> Path:
    from babelora.models import offline

    item = next(f for f in offline.WHISPER_BASE.extras if f.path.endswith("config.json"))
    return offline._locate(item, "Whisper base")


def multilingual_tiny(seed: int = 0):
    """tiny_random_whisper with base's vocabulary and tokenizer (prompt with language tokens)."""
    from babelora.models.whisper import _load_tokenizer, tiny_random_whisper

    handle = tiny_random_whisper(seed, **MULTILINGUAL)
    handle.tokenizer = _load_tokenizer(base_tokenizer_json().parent)
    handle.name = f"tiny-random-whisper-multilingual(seed={seed})"
    return handle


def random_lora(model, folder: Path, seed: int = 0, scale: float = 0.2) -> Path:
    """Save a PEFT LoRA (q/v projections and fc1, random non-zero B) for `model`'s architecture;
    `model` itself is left as it was."""
    import copy

    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"]),
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * scale)
    peft_model.save_pretrained(str(folder))
    return Path(folder)


@torch.no_grad()
def perturb(model, seed: int = 0) -> None:
    """Add noise to every parameter (in place): biases and norms stop being all equal."""
    g = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(torch.randn(param.shape, generator=g) * 0.01)
