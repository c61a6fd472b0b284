"""The `molora` recipe: Whisper + MoLoRA experts (+ MGRF), trained with the router aux losses.

MoLoRA (AAAI 2026, methods.md section 1): shared LoRA experts are always on, routed experts are
weighted by a router (`language`: the utterance's language picks its experts; `learned`: top-k
softmax on the hidden state; `hybrid`: learned logits plus a language prior), at token or
utterance level. MGRF optionally fuses each utterance's pooled encoder vector back into its
frames before cross-attention. Everything the paper leaves open is a config option
(`MoLoRAParams`, and `MoLoRAConfig` / `MGRFConfig` with their documented defaults).

Per batch the loss function routes rows by `batch["langs"]` with the encoder / decoder masks
(`babelora.methods.molora.model.route_batch`), runs the seq2seq loss and returns the routers'
`load_balance` and `z_loss` (each averaged over layers) as aux losses; the loop weights them with
`molora.load_balance_weight` / `molora.z_loss_weight` (or `recipe.aux_loss_weights`) and logs
them as `train/aux/<name>`.

Export (`final/`):
- `babelora_experts.{json,safetensors}` (+ `mgrf.{json,safetensors}`): the whole set, for routed
  decoding (`babelora.methods.molora.model.load_molora`, `--experts final`);
- `<lang>/`: one PEFT LoRA per language, the shared experts plus that language's experts
  folded into one adapter, and `shared/` (shared experts only, for languages without experts):
  merged into Whisper they decode exactly as the routed model, at plain-LoRA cost (the layout
  of the `experts` recipe's export). Exact only with the language router and without MGRF, so
  `export_peft: auto` writes them only then; `always` writes them anyway (marked inexact in
  `export_info.json`);
- `babelora_base.json` (here and in each PEFT folder): the base model's signature, checked when
  the set is loaded on another model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from babelora.adapters import AdapterHandle, MoLoRAConfig, export_peft, inject, load_peft_expert
from babelora.adapters.mgrf import MGRF, MGRFConfig
from babelora.config import build_dataclass, to_dict
from babelora.errors import ConfigError
from babelora.methods.molora.model import (  # noqa: F401  (has_mgrf, load_molora: the CLI's entry)
    attach_mgrf,
    has_mgrf,
    load_molora,
    route_batch,
    save_molora,
)
from babelora.models.base_check import write_base_signature
from babelora.train.config import TrainConfig
from babelora.train.recipe import (
    LossOutput,
    Recipe,
    load_backbone,
    seq2seq_loss,
)

log = logging.getLogger("babelora.train")
EXPORT_INFO = "export_info.json"


@dataclass(frozen=True)
class MoLoRAParams:
    """`recipe.params` of the `molora` recipe.

    Attributes:
        molora: the `MoLoRAConfig` fields (lora.rank/alpha/targets, router, routing_level,
            top_k, num_shared, experts_per_lang, num_experts, aux-loss weights, ...; defaults as
            documented there). `languages` defaults to `data.languages` for the language and
            hybrid routers (one expert group per training language; with no data.languages,
            the languages of the training manifests, sorted, as the engine resolves them).
        mgrf: MGRF after the Whisper encoder, trained with the experts (default none = off).
        unknown_language: a batch row whose language has no experts: "error" (default) or
            "shared" (the row uses only the shared experts, e.g. English in an X->en setup).
        init_experts: expert name -> trained PEFT LoRA folder to initialise it from (names as
            `AdapterHandle.expert_names()`: `de`, `shared0`, `expert3`, ...; default none).
        init_from_set: an `experts` run's export (one LoRA expert per language, same languages in
            the same order, same rank and targets): its experts become the routed language
            experts (default none).
        router_lr: learning rate of the routers (and hybrid priors); None = optim.lr (default).
        mgrf_lr: learning rate of MGRF; None = optim.lr (default).
        export_peft: per-language folded PEFT adapters: "auto" (only when exact: language
            router, no MGRF), "always", "never" (default "auto").
    """

    molora: dict[str, Any] = field(default_factory=dict)
    mgrf: MGRFConfig | None = None
    unknown_language: Literal["error", "shared"] = "error"
    init_experts: dict[str, str] = field(default_factory=dict)
    init_from_set: str | None = None
    router_lr: float | None = None
    mgrf_lr: float | None = None
    export_peft: Literal["auto", "always", "never"] = "auto"

    def __post_init__(self) -> None:
        for name in ("router_lr", "mgrf_lr"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"recipe.params.{name} must be > 0 or null, got {value}")


def molora_config(params: MoLoRAParams, data_languages: list[str] | tuple[str, ...] = ()):
    """The MoLoRAConfig of `params.molora`, languages defaulting to `data_languages`."""
    raw = dict(params.molora)
    router = raw.get("router", MoLoRAConfig.router)
    if router in ("language", "hybrid") and not raw.get("languages"):
        if not data_languages:
            raise ConfigError(
                f"recipe.params.molora.router={router} needs languages: set "
                "recipe.params.molora.languages or data.languages"
            )
        raw["languages"] = list(data_languages)
    return build_dataclass(MoLoRAConfig, raw, "recipe.params.molora")


def run_languages(cfg: TrainConfig) -> list[str]:
    """The run's languages as the engine resolves them: `data.languages`, or else every language
    of the training manifests (for the configured tasks), sorted."""
    if cfg.data.languages:
        return list(cfg.data.languages)
    from babelora.data.manifest import read_manifest

    found = set()
    for path in cfg.data.train:
        for utt in read_manifest(path, data_root=cfg.data.data_root):
            if utt.task in cfg.data.tasks:
                found.add(utt.lang)
    return sorted(found)


def _init_experts(adapter: AdapterHandle, paths: dict[str, str]) -> None:
    names = adapter.expert_names()
    for name, path in paths.items():
        if name not in names:
            raise ConfigError(
                f"recipe.params.init_experts: no expert named {name!r}; experts: {', '.join(names)}"
            )
        report = load_peft_expert(adapter, path, expert=names.index(name))
        log.info(
            "molora: expert %s from %s (%d layers loaded, %d untouched)",
            name,
            path,
            len(report.loaded),
            len(report.missing),
        )


def _init_from_set(adapter: AdapterHandle, folder: str, base: str) -> None:
    from babelora.models.expert_sets import load_set_experts

    cfg = adapter.config
    if cfg.router not in ("language", "hybrid") or cfg.experts_per_lang != 1:
        raise ConfigError(
            "recipe.params.init_from_set needs one routed expert per language "
            "(molora.router language or hybrid, experts_per_lang 1)"
        )
    got = load_set_experts(adapter, folder, cfg.num_shared, base)
    if got != list(cfg.languages):
        raise ConfigError(
            f"recipe.params.init_from_set: {folder} has experts {got}, this run "
            f"{list(cfg.languages)} (same languages in the same order needed)"
        )
    log.info("molora: language experts %s from %s", got, folder)


def _param_groups(adapter: AdapterHandle, mgrf: MGRF | None, params: MoLoRAParams, lr: float):
    """AdamW groups: experts, routers and MGRF (each with its learning rate); None = default."""
    if params.router_lr is None and params.mgrf_lr is None:
        return None
    experts, routers = [], []
    for layer in adapter.layers.values():
        experts += [p for p in (layer.lora_A, layer.lora_B) if p.requires_grad]
        if layer.router is not None:
            routers += [p for p in layer.router.parameters() if p.requires_grad]
    groups = [{"params": experts, "lr": lr}]
    groups.append({"params": routers, "lr": params.router_lr or lr})
    if mgrf is not None:
        groups.append({"params": list(mgrf.parameters()), "lr": params.mgrf_lr or lr})
    return [g for g in groups if g["params"]]


def peft_export_exact(adapter: AdapterHandle, mgrf: MGRF | None) -> tuple[bool, str]:
    """Whether per-language folded PEFT adapters equal the routed model, and why not."""
    if adapter.config.router not in ("language", "none"):
        return False, f"router {adapter.config.router} routes per input, not per language"
    if mgrf is not None:
        return False, "MGRF is not part of a PEFT LoRA adapter"
    return True, ""


def make_export(
    adapter: AdapterHandle,
    mgrf: MGRF | None,
    params: MoLoRAParams,
    base: str | None,
    base_label: str | None = None,
):
    """The recipe's export function (see the module docstring). `base`: PEFT's
    base_model_name_or_path; `base_label`: the base's readable name in babelora_base.json."""

    def export(model: nn.Module, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        save_molora(adapter, out_dir, mgrf, base_label)
        exact, reason = peft_export_exact(adapter, mgrf)
        write = params.export_peft == "always" or (params.export_peft == "auto" and exact)
        folded: dict[str, str] = {}
        if write:
            cfg = adapter.config
            langs = list(cfg.languages) if cfg.router in ("language", "hybrid") else []
            targets: list[str | None] = [*langs, *([None] if cfg.num_shared else [])]
            for lang in targets:
                name = lang or "shared"
                export_peft(
                    adapter,
                    out_dir / name,
                    weights=_language_weights(adapter, lang),
                    base_model_name_or_path=base,
                )
                write_base_signature(out_dir / name, adapter.model, base_label)
                folded[name] = name
        info = {
            "format": "babelora-molora",
            "config": to_dict(adapter.config),
            "mgrf": None if mgrf is None else to_dict(mgrf.config),
            "experts": adapter.expert_names(),
            "peft": folded,
            "peft_exact": exact and bool(folded),
            "peft_note": reason or "folded adapters equal the routed model",
        }
        (out_dir / EXPORT_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")

    return export


def _language_weights(adapter: AdapterHandle, lang: str | None) -> torch.Tensor:
    """Shared experts at 1, plus `lang`'s experts at 1: exactly what the language router gives
    a row of language `lang` (None: a row without experts)."""
    cfg = adapter.config
    w = torch.zeros(cfg.num_total)
    w[: cfg.num_shared] = 1.0
    if lang is not None:
        start = cfg.num_shared + adapter.context.lang_index(lang) * cfg.experts_per_lang
        w[start : start + cfg.experts_per_lang] = 1.0
    return w


def make_loss_fn(adapter: AdapterHandle, unknown: str):
    """loss_fn(model, batch): route the batch, summed token CE, the routers' aux losses."""

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> LossOutput:
        # the inputs stay set until the next batch: activation-checkpoint recomputation during
        # backward routes again (and the aux losses it records are dropped by the next set)
        route_batch(adapter, batch, unknown)  # type: ignore[arg-type]
        out = seq2seq_loss(model, batch)
        aux = adapter.aux_losses() if model.training else {}
        return LossOutput(loss=out.loss, aux_losses=aux)

    return loss_fn


def _base_label(cfg: TrainConfig) -> str:
    if cfg.model.tiny_random:
        return f"tiny-random-whisper(seed={cfg.model.tiny_random_seed})"
    if cfg.model.name is None:
        from babelora.models.whisper import DEFAULT_MODEL

        return DEFAULT_MODEL
    return cfg.model.name


def build_molora(cfg: TrainConfig, params: MoLoRAParams) -> Recipe:
    mcfg = molora_config(params, run_languages(cfg))
    handle = load_backbone(cfg.model)
    model = handle.model
    adapter = inject(model, mcfg)
    mgrf = attach_mgrf(model, adapter, params.mgrf) if params.mgrf is not None else None
    if params.init_from_set:
        _init_from_set(adapter, params.init_from_set, _base_label(cfg))
    if params.init_experts:
        _init_experts(adapter, params.init_experts)
    log.info(
        "molora: %d expert layers, experts %s, router %s (%s), %d trainable parameters%s",
        len(adapter.layers),
        adapter.expert_names(),
        mcfg.router,
        mcfg.routing_level,
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        " + MGRF" if mgrf is not None else "",
    )
    return Recipe(
        model=model,
        tokenizer=handle.tokenizer,
        prompt_style=handle.prompt_style,
        n_mels=handle.n_mels,
        loss_fn=make_loss_fn(adapter, params.unknown_language),
        export=make_export(adapter, mgrf, params, cfg.model.name, _base_label(cfg)),
        aux_loss_weights=dict(mcfg.aux_loss_weights),
        param_groups=_param_groups(adapter, mgrf, params, cfg.optim.lr),
        max_target_tokens=int(model.config.max_target_positions),
        adapter=adapter,
        accepts_encoder_states=True,  # seq2seq_loss: a decoder-only set trains on cached states
    )
