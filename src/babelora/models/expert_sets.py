"""Read a saved set of language experts and copy its experts into another model's expert layers.

Shared by the methods that start from an `experts` run (language-expert fusion, distillation,
MoLoRA's `init_from_set`), so it sits below them: the set's format is `adapters`' own and the
base check is `models.base_check`'s.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from babelora.adapters import AdapterHandle, MoLoRAConfig
from babelora.adapters.peft_io import SET_CONFIG, SET_WEIGHTS
from babelora.config import build_dataclass
from babelora.errors import ModelLoadError
from babelora.models.base_check import check_base


def read_set_config(folder: str | Path) -> MoLoRAConfig:
    """The MoLoRAConfig of a saved expert set (ModelLoadError when `folder` is not one)."""
    path = Path(folder)
    if not (path / SET_CONFIG).is_file() or not (path / SET_WEIGHTS).is_file():
        hint = ""
        if (path / "final" / SET_CONFIG).is_file():
            hint = f" (did you mean {path / 'final'}?)"
        raise ModelLoadError(
            f"{path}: not an expert set (needs {SET_CONFIG} and {SET_WEIGHTS}){hint}"
        )
    try:
        data = json.loads((path / SET_CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{path / SET_CONFIG}: not valid JSON ({err})") from None
    return build_dataclass(MoLoRAConfig, data, str(path / SET_CONFIG))


def language_expert_config(folder: str | Path) -> MoLoRAConfig:
    """The config of a set of one LoRA expert per language (no shared experts), or an error."""
    cfg = read_set_config(folder)
    if cfg.num_shared or cfg.router != "language" or cfg.experts_per_lang != 1:
        raise ModelLoadError(
            f"{folder}: expected one LoRA expert per language (an `experts` run), got "
            f"num_shared={cfg.num_shared}, router={cfg.router}, "
            f"experts_per_lang={cfg.experts_per_lang}"
        )
    return cfg


@torch.no_grad()
def load_set_experts(
    adapter: AdapterHandle, folder: str | Path, first_slot: int = 0, base: str | None = None
) -> list[str]:
    """Copy the experts of a saved language-expert set into slots `first_slot..` of `adapter`.

    Both must wrap the same modules with the same rank and scale; the set's base signature
    must match `adapter.model`. Returns the set's languages in slot order.
    """
    from safetensors.torch import load_file

    cfg = language_expert_config(folder)
    check_base(folder, adapter.model, base)
    state = load_file(str(Path(folder) / SET_WEIGHTS))
    n = cfg.num_routed
    names = {k.rsplit(".", 1)[0] for k in state if k.endswith(".lora_A")}
    missing = sorted(set(adapter.layers) - names)
    extra = sorted(names - set(adapter.layers))
    if missing or extra:
        raise ModelLoadError(
            f"{folder}: the set wraps other modules than this model "
            f"(missing {missing[:2]}, unexpected {extra[:2]}); use the set's targets"
        )
    for name, layer in adapter.layers.items():
        a, b = state[f"{name}.lora_A"], state[f"{name}.lora_B"]
        if a.shape[1:] != layer.lora_A.shape[1:] or first_slot + n > layer.num_experts:
            raise ModelLoadError(
                f"{folder}: {name} experts are {tuple(a.shape)} but the model's slots are "
                f"{tuple(layer.lora_A.shape)} (rank or base model differ)"
            )
        if abs(cfg.lora.scaling - layer.scaling) > 1e-12:
            b = b * (cfg.lora.scaling / layer.scaling)
        layer.lora_A[first_slot : first_slot + n] = a.to(layer.lora_A)
        layer.lora_B[first_slot : first_slot + n] = b.to(layer.lora_B)
    return list(cfg.languages)
