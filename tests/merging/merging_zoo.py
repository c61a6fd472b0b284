"""Helpers for the merging tests: tiny Whisper-shaped models (d_model 64, 2+2 layers), saved
fine-tunes (base + seeded noise), PEFT LoRA adapters and PEFT's own merge as the oracle."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

LANGS = ("de", "fr", "es")


def tiny_config(**overrides):
    from transformers import WhisperConfig

    kwargs = dict(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        vocab_size=100,
        num_mel_bins=80,
        max_source_positions=32,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=3,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    kwargs.update(overrides)
    return WhisperConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides):
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(seed)
    return WhisperForConditionalGeneration(tiny_config(**overrides)).eval()


def save_model(model, folder: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
    return folder


def finetuned(base, seed: int, noise: float = 0.05):
    model = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * noise)
    return model


def make_lora(base, folder: Path, seed: int, **lora_kwargs) -> Path:
    """Save a PEFT LoRA with random (non-zero) A and B; returns the folder."""
    from peft import LoraConfig, get_peft_model

    kwargs = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"])
    kwargs.update(lora_kwargs)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(
            copy.deepcopy(base), LoraConfig(init_lora_weights=False, **kwargs)
        )
        peft_model.save_pretrained(folder)
    return folder


def peft_merged_state(base, adapter: Path) -> dict[str, torch.Tensor]:
    """PEFT's own merge_and_unload of an adapter: the oracle for LoRA inputs."""
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(copy.deepcopy(base), adapter).merge_and_unload()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def read(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def write_recipe(path: Path, recipe: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(recipe, sort_keys=False), "utf-8")
    return path


LORA_CONVENTIONS = {
    "alpha_over_r": {},
    "rslora": {"use_rslora": True, "lora_alpha": 6},
    "patterns": {"rank_pattern": {"fc1": 2}, "alpha_pattern": {"v_proj": 3}},
    "bias_and_save": {
        "target_modules": ["q_proj", "fc1"],
        "lora_bias": True,
        "modules_to_save": ["final_layer_norm"],
    },
    "embedding": {"target_modules": ["embed_tokens", "fc2"], "r": 3, "lora_alpha": 5},
}


def set_adapter_base(folder: Path, name: str | None) -> None:
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = name
    config_path.write_text(json.dumps(config))
