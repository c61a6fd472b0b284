"""The `speech_llm` recipe: train a speech-LLM (Whisper encoder -> projector -> causal LM).

Config (`recipe.params`, `SpeechLLMParams`): `model` is a `SpeechLLMConfig` (projector, LM,
freeze flags, aux-loss options); the Whisper comes from the run's `model` section, as for every
recipe. `init_from` names the export folder of the previous training stage
(babelora.methods.speech_llm.stages);
`lora` optionally puts LoRA on the LM (babelora.adapters.inject; e.g. targets [causal-lm-attn],
or [whisper-decoder-self-attn, whisper-decoder-ffn] for the Whisper-decoder LM); `molora` puts
MoLoRA experts there instead (MoLoRAConfig fields: language-routed + shared experts, language /
learned / hybrid router; default targets causal-lm-all = attention and MLP projections). Each
row's expert group is its routing key (`model.routing_key`: source, target, pair or auto,
babelora.methods.speech_llm.routing); `molora.languages` defaults to the keys found in the
training manifests. The routers' `load_balance` and `z_loss` join the aux losses.

LMs other than Whisper's decoder (Gemma, Llama, Qwen) have no Whisper special tokens, so the
engine's Whisper collator gets `CollatorTokenizer`: target text through the LM's tokenizer,
<|endoftext|> as the LM's eos, Whisper's prompt tokens as placeholders the recipe never reads.

The engine's Whisper collator gives the batches: log-mel, real lengths, `labels` (target tokens
+ <|endoftext|>, which are the speech-LLM's targets, so the loop's token count is exact) and ids.
The rest of each utterance (target language, `segments`, the `replay` flag of a mixed stage
manifest) is looked up by id in the run's manifests. The speech-LLM prompt is built from the
utterance by `SpeechLLM.prompt_ids` (data/prompts.py), never from the collator's Whisper prompt.

Aux losses `lang`, `balance`, `transition` are weighted by `recipe.aux_loss_weights` (defaults:
`model.losses`); the transition loss is additionally scaled by its anneal factor
lambda_tr(step) / lambda_tr(0), with the step from `batch["step"]` when the loop provides it,
else counted from this process's training calls (not restored by --resume).

The transition loss needs a previous stage: without `init_from` the reference router is dropped.

Export (`final/`): `speech_llm.safetensors` (every tensor trained in this or an earlier stage)
and `speech_llm.yaml` (the SpeechLLMConfig and the Whisper it was built on); `load_speech_llm`
rebuilds the model from it (`babelora evaluate --speech-llm final/`). With MoLoRA and the
language router (or LoRA), `lm_peft/<key>/` holds the LM's experts folded per routing key (shared
+ that key's experts) as a PEFT adapter of the LM: merged into the LM it equals the routed model
for rows of that key.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babelora.adapters.config import LoRAConfig, MoLoRAConfig
from babelora.config import build_dataclass, read_yaml, to_dict
from babelora.data.collate import IGNORE_INDEX
from babelora.data.prompts import EOT, token_id
from babelora.errors import ConfigError, ModelLoadError
from babelora.methods.speech_llm.losses import transition_weight_at
from babelora.methods.speech_llm.model import (
    SpeechLLM,
    SpeechLLMBatch,
    SpeechLLMConfig,
    build_speech_llm,
)
from babelora.methods.speech_llm.routing import route_keys
from babelora.train.config import ModelConfig, TrainConfig
from babelora.train.recipe import LossOutput, Recipe, load_backbone

log = logging.getLogger("babelora.train")
WEIGHTS_FILE = "speech_llm.safetensors"
CONFIG_FILE = "speech_llm.yaml"


@dataclass(frozen=True)
class SpeechLLMParams:
    """`recipe.params` of the `speech_llm` recipe."""

    model: SpeechLLMConfig = field(default_factory=SpeechLLMConfig)
    init_from: str | None = None  # previous stage's export folder (holds speech_llm.safetensors)
    lora: LoRAConfig | None = None  # LoRA on the LM (None = no adapter)
    molora: dict[str, Any] | None = None  # MoLoRA in the LM: MoLoRAConfig fields (None = off)

    def __post_init__(self) -> None:
        if self.lora is not None and self.molora is not None:
            raise ConfigError("recipe.params: give lora or molora for the LM, not both")
        if self.model.encoder is not None:
            raise ConfigError(
                "recipe.params.model.encoder: the speech-LLM's Whisper is the run's model.name; "
                "leave model.encoder unset"
            )


def _utterances(cfg: TrainConfig) -> dict[str, Any]:
    from babelora.data.manifest import read_manifest

    utts = {}
    for path in [*cfg.data.train, *cfg.data.dev]:
        for utt in read_manifest(path, data_root=cfg.data.data_root):
            utts[utt.id] = utt
    return utts


class CollatorTokenizer:
    """What the engine's Whisper collator asks of a tokenizer, for an LM without Whisper's
    special tokens: `encode` is the LM's tokenizer, <|endoftext|> is the LM's eos, and the
    other Whisper tokens (the collator's prompt, never read by this recipe) are the eos too."""

    unk_token_id = -1  # no token is unknown: every Whisper token has a stand-in

    def __init__(self, tokenizer: Any, eos_id: int) -> None:
        self.tokenizer = tokenizer
        self.eos_id = int(eos_id)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.eos_id

    def decode(self, ids: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(ids, **kwargs)


def _core(model: nn.Module) -> SpeechLLM:
    return getattr(model, "module", model)  # DDP / Accelerate wrappers keep it in .module


def make_loss_fn(utts: dict[str, Any], grad_accum: int) -> Any:
    """loss_fn(model, batch) -> LossOutput for the engine (summed token CE + aux losses)."""
    calls = {"train": 0}

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> LossOutput:
        core = _core(model)
        try:
            items = [utts[i] for i in batch["ids"]]
        except KeyError as err:
            raise ConfigError(f"utterance {err} is not in the run's manifests") from None
        labels = batch["labels"]
        targets = [row[row != IGNORE_INDEX].tolist() for row in labels]
        dev = labels.device
        frame_labels = core.frame_labels_for(
            [u.lang for u in items], [u.segments for u in items], batch["feature_lens"]
        )
        keys = None
        if core.experts is not None and core.experts.context.languages:
            keys = core.route_keys_for(
                [u.task for u in items], [u.lang for u in items], [u.target_lang for u in items]
            )
        sbatch = SpeechLLMBatch(
            route_keys=keys,
            features=batch["input_features"],
            feature_lengths=batch["feature_lens"],
            prompt_ids=[core.prompt_ids(u.task, u.lang, u.target_lang) for u in items],
            target_ids=targets,
            frame_labels=frame_labels.to(dev) if frame_labels is not None else None,
            replay=torch.tensor([bool(u.extra.get("replay", False)) for u in items], device=dev),
            ids=list(batch["ids"]),
        )
        out = model(sbatch)
        aux = dict(out.aux_losses)
        if core.experts is not None and model.training:
            aux.update(core.experts.aux_losses())  # load_balance, z_loss (learned routers)
        if "transition" in aux:
            step = batch.get("step")
            if step is None:
                step = calls["train"] // grad_accum
            losses = core.cfg.losses
            factor = transition_weight_at(int(step), losses) / max(losses.transition_weight, 1e-12)
            aux["transition"] = aux["transition"] * factor
        if model.training:
            calls["train"] += 1
        return LossOutput(loss=out.loss * out.num_tokens, aux_losses=aux)

    return loss_fn


def _load_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path}: no speech-LLM weights (expected a speech_llm export folder)")
    return load_file(str(path))


def make_export(model_cfg: ModelConfig, params: SpeechLLMParams, inherited: set[str]) -> Any:
    """Export: tensors trained now or in an earlier stage, plus the config to rebuild."""

    def export(model: nn.Module, out_dir: Path) -> None:
        from safetensors.torch import save_file

        from babelora.config import dump_config

        core = _core(model)
        trained = {n for n, p in core.named_parameters() if p.requires_grad} | inherited
        state = {
            k: v.detach().cpu().clone().contiguous()
            for k, v in core.state_dict().items()
            if k in trained and ".reference_router." not in k
        }
        save_file(state, str(Path(out_dir) / WEIGHTS_FILE))
        dump_config(
            {
                "backbone": to_dict(model_cfg),
                "model": to_dict(params.model),
                "lora": to_dict(params.lora),
                "molora": to_dict(core.experts.config) if params.molora is not None else None,
            },
            Path(out_dir) / CONFIG_FILE,
        )
        export_lm_folds(core, Path(out_dir) / "lm_peft")

    return export


def export_lm_folds(model: SpeechLLM, folder: Path) -> list[str]:
    """The LM's experts as PEFT adapters of the LM, one per routing key (shared + that key's
    experts; `shared/` for keys without experts), where that equals the routed model (language
    router or plain LoRA). Returns the folder names written."""
    from babelora.adapters import export_peft

    experts = model.experts
    if experts is None or experts.config.router not in ("language", "none"):
        return []
    cfg = experts.config
    keys: list[str | None] = [*cfg.languages, *([None] if cfg.num_shared else [])]
    written = []
    for key in keys:
        name = (key or "shared").replace(">", "-")
        export_peft(experts, folder / name, weights=experts.fold_weights(key))
        written.append(name)
    return written


def molora_config(raw: dict[str, Any], keys: list[str]) -> MoLoRAConfig:
    """MoLoRAConfig for the LM from `recipe.params.molora`: LoRA targets default to the LM's
    attention and MLP projections, `languages` to the routing keys `keys` of the data."""
    raw = dict(raw)
    lora = dict(raw.get("lora") or {})
    lora.setdefault("targets", ["causal-lm-all"])
    raw["lora"] = lora
    router = raw.get("router", "language")
    if not raw.get("languages") and router in ("language", "hybrid"):
        if not keys:
            raise ConfigError("recipe.params.molora: no routing keys found in the training data")
        raw["languages"] = list(keys)
    return build_dataclass(MoLoRAConfig, raw, "recipe.params.molora")


def attach_lm_experts(model: SpeechLLM, config: LoRAConfig | MoLoRAConfig) -> Any:
    """Inject LoRA / MoLoRA into `model.lm` (the LM's base weights stay as `freeze_lm` says)
    and hand the handle to the model, which then routes every batch."""
    from babelora.adapters.inject import inject

    handle = inject(model.lm, config, freeze_base=model.cfg.freeze_lm)
    model.attach_experts(handle)
    model.apply_freeze()
    return handle


def _build(
    model_cfg: ModelConfig, params: SpeechLLMParams, keys: list[str] | None = None
) -> tuple[SpeechLLM, str]:
    """The speech-LLM (with LoRA / MoLoRA in its LM when configured) and the Whisper's prompt
    style. `keys`: the data's routing keys (MoLoRA's default expert groups)."""
    handle = load_backbone(model_cfg)
    model = build_speech_llm(params.model, handle=handle)
    if params.lora is not None:
        attach_lm_experts(model, params.lora)
    elif params.molora is not None:
        attach_lm_experts(model, molora_config(params.molora, keys or []))
    return model, handle.prompt_style


def load_speech_llm(folder: str | Path) -> SpeechLLM:
    """Rebuild a speech-LLM exported by this recipe (for decoding and benchmarks)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ModelLoadError(f"{folder}: not a speech-LLM export (no {CONFIG_FILE})")
    meta = read_yaml(path)
    params = SpeechLLMParams(
        model=build_dataclass(SpeechLLMConfig, meta["model"], "model"),
        lora=build_dataclass(LoRAConfig, meta["lora"], "lora") if meta.get("lora") else None,
        molora=meta.get("molora") or None,
    )
    model, _ = _build(build_dataclass(ModelConfig, meta["backbone"], "backbone"), params)
    model.load_previous_stage(_load_weights(folder), partial=True, source=str(folder))
    return model.eval()


def data_route_keys(cfg: TrainConfig, params: SpeechLLMParams) -> list[str]:
    """The routing keys of the run's training utterances (configured tasks and languages)."""
    from babelora.data.manifest import read_manifest

    rows = []
    for path in cfg.data.train:
        for u in read_manifest(path, data_root=cfg.data.data_root):
            if u.task in cfg.data.tasks and (
                not cfg.data.languages or u.lang in cfg.data.languages
            ):
                rows.append((u.task, u.lang, u.target_lang))
    return route_keys(params.model.routing_key, rows)


def build_speech_llm_recipe(cfg: TrainConfig, params: SpeechLLMParams) -> Recipe:
    if cfg.data.text_leading_space != params.model.target_leading_space:
        raise ConfigError(
            "recipe.params.model.target_leading_space must equal data.text_leading_space "
            "(the collator tokenizes the targets)"
        )
    keys = None
    if params.molora is not None and not params.molora.get("languages"):
        keys = data_route_keys(cfg, params)
    model, prompt_style = _build(cfg.model, params, keys)
    inherited: set[str] = set()
    if params.init_from:
        state = _load_weights(params.init_from)
        model.load_previous_stage(state, partial=True, source=str(params.init_from))
        inherited = set(state)
    elif model.projector.moe is not None and model.projector.moe.reference_router is not None:
        log.info("speech_llm: no previous stage (init_from), so no transition loss")
        model.projector.moe.reference_router = None
    tok: Any = model.tokenizer
    try:
        eot = token_id(tok, EOT)
    except KeyError:
        eot = None
    if eot != model.eos_id:  # not a Whisper tokenizer: the collator gets the LM's tokens
        tok, prompt_style = CollatorTokenizer(model.tokenizer, model.eos_id), "english"
    losses = params.model.losses
    weights = {
        "lang": losses.lang_weight,
        "balance": losses.balance_weight,
        "transition": losses.transition_weight,
    }
    if model.experts is not None:
        weights.update(model.experts.config.aux_loss_weights)
    return Recipe(
        model=model,
        tokenizer=tok,
        prompt_style=prompt_style,  # the collator's Whisper prompt, unused by this recipe
        n_mels=int(model.encoder.config.num_mel_bins),
        loss_fn=make_loss_fn(_utterances(cfg), cfg.optim.grad_accum),
        export=make_export(cfg.model, params, inherited),
        aux_loss_weights=weights,
        max_target_tokens=int(model.max_positions or 10**9),
    )


def replace_params(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of `cfg` with `recipe.params` keys replaced (used by the stage runner)."""
    params = {**cfg.recipe.params, **changes}
    return dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, params=params))
