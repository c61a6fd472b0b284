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

import logging
from pathlib import Path
from typing import Any

from babelora.adapters import AdapterHandle, export_peft, save_adapter_set
from babelora.errors import ConfigError, LanguageError
from babelora.languages import check_lang
from babelora.models.base_check import hub_name, write_base_signature
from babelora.models.expert_sets import (  # noqa: F401  (re-exported for the experts method)
    language_expert_config,
    load_set_experts,
    read_set_config,
)
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
