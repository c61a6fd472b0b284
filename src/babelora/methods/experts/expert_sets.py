"""Language-expert sets on disk, shared by the experts, distill and fusion recipes and the CLI.

An experts run exports one folder (`final/`) holding:
    babelora_experts.json / .safetensors   every expert, for batched language-aware decoding
                                           (adapters.save_adapter_set; `--experts DIR`)
    babelora_base.json                     the base model it was trained on (models.base_check)
    <lang>/                                one PEFT LoRA adapter per language (plain PEFT loads it)
Distillation and fusion read the experts of such a set into other layer layouts (a student slot
in front, fusion weights or gates), so they copy the stacked factors by module name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from babelora.adapters import AdapterHandle, MoLoRAConfig, export_peft, save_adapter_set
from babelora.adapters.peft_io import SET_CONFIG, SET_WEIGHTS
from babelora.config import build_dataclass
from babelora.errors import ConfigError, LanguageError, ModelLoadError
from babelora.languages import check_lang
from babelora.models.base_check import check_base, hub_name, write_base_signature
from babelora.train.config import ModelConfig, TrainConfig

log = logging.getLogger("babelora.train")


def base_name(model_cfg: ModelConfig) -> str:
    """A readable name of the run's base model (for provenance and error messages)."""
    if model_cfg.tiny_random:
        return f"tiny-random-whisper(seed={model_cfg.tiny_random_seed})"
    if model_cfg.name is None:
        from babelora.models.whisper import DEFAULT_MODEL

        return DEFAULT_MODEL
    return model_cfg.name


def resolve_expert_languages(cfg: TrainConfig, explicit: list[str] | tuple[str, ...]) -> list[str]:
    """The expert languages of a run, checked against its data.

    `explicit` (recipe.params.languages) wins; otherwise `data.languages`; otherwise every
    language of the training manifests (for the configured tasks), sorted, as the engine does.
    Raises when the data would route a row to a language without an expert.
    """
    from babelora.data.manifest import read_manifest

    data_langs = [check_lang(x) for x in cfg.data.languages]
    langs = [check_lang(x) for x in explicit]
    if langs and data_langs:
        extra = [x for x in data_langs if x not in langs]
        if extra:
            raise ConfigError(
                f"data.languages has {extra} but the experts are {langs} "
                "(recipe.params.languages): every training language needs an expert"
            )
        return langs
    if data_langs:
        return data_langs
    found: set[str] = set()
    for path in cfg.data.train:
        for utt in read_manifest(path, data_root=cfg.data.data_root):
            if utt.task not in cfg.data.tasks:
                continue
            if langs and utt.lang not in langs:
                raise LanguageError(
                    f"{path}: utterance {utt.id!r} has language {utt.lang!r}, which has no "
                    f"expert (experts: {', '.join(langs)}); add it to recipe.params.languages "
                    "or set data.languages to train on the expert languages only"
                )
            found.add(utt.lang)
    return langs or sorted(found)


def export_expert_set(
    adapter: AdapterHandle, folder: str | Path, base: str | None, peft_base: str | None = None
) -> Path:
    """Write the set (all experts + routers), its base signature and one PEFT folder per language.

    `base` names the base model in the signature; `peft_base` is PEFT's
    `base_model_name_or_path` (a loadable id or folder; None: the hub id of an offline model
    `base`, or nothing for a random one). `--adapter`, `--experts` and merges check the
    signature against the base they are put on.
    """
    folder = Path(folder)
    peft_base = hub_name(peft_base or base)
    save_adapter_set(adapter, folder)
    write_base_signature(folder, adapter.model, base)
    cfg = adapter.config
    if cfg.router == "language" and cfg.experts_per_lang == 1 and not cfg.num_experts:
        for lang in cfg.languages:
            export_peft(adapter, folder / lang, lang=lang, base_model_name_or_path=peft_base)
            write_base_signature(folder / lang, adapter.model, base)
    return folder


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


def set_languages(folder: str | Path) -> list[str]:
    return list(read_set_config(folder).languages)


def parse_lang_values(text: str, what: str) -> dict[str, Any]:
    """`de=0.5,fr=0.5` -> {"de": 0.5, "fr": 0.5} (language codes checked)."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ConfigError(f"{what}: expected lang=value pairs like de=0.5, got {part!r}")
        lang, value = (s.strip() for s in part.split("=", 1))
        out[check_lang(lang)] = value
    if not out:
        raise ConfigError(f"{what}: no lang=value pairs in {text!r}")
    return out
