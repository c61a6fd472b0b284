"""The `speech_llm` recipe: train a speech-LLM (Whisper encoder -> projector -> causal LM).

Config (`recipe.params`, `SpeechLLMParams`): `model` is a `SpeechLLMConfig` (projector, LM,
freeze flags, aux-loss options); the Whisper comes from the run's `model` section, as for every
recipe. `init_from` names the export folder of the previous training stage
(babelora.methods.speech_llm.stages);
`lora` optionally puts LoRA on the LM (babelora.adapters.inject; e.g. targets [causal-lm-attn],
or [whisper-decoder-self-attn, whisper-decoder-ffn] for the Whisper-decoder LM).

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
rebuilds the model from it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babelora.adapters.config import LoRAConfig
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

    def __post_init__(self) -> None:
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
        sbatch = SpeechLLMBatch(
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
            },
            Path(out_dir) / CONFIG_FILE,
        )

    return export


def _build(model_cfg: ModelConfig, params: SpeechLLMParams) -> tuple[SpeechLLM, str]:
    """The speech-LLM (with LoRA on its LM when configured) and the Whisper's prompt style."""
    handle = load_backbone(model_cfg)
    model = build_speech_llm(params.model, handle=handle)
    if params.lora is not None:
        from babelora.adapters.inject import inject

        inject(model.lm, params.lora, freeze_base=params.model.freeze_lm)
    return model, handle.prompt_style


def load_speech_llm(folder: str | Path) -> SpeechLLM:
    """Rebuild a speech-LLM exported by this recipe (for decoding and benchmarks)."""
    meta = read_yaml(Path(folder) / CONFIG_FILE)
    params = SpeechLLMParams(
        model=build_dataclass(SpeechLLMConfig, meta["model"], "model"),
        lora=build_dataclass(LoRAConfig, meta["lora"], "lora") if meta.get("lora") else None,
    )
    model, _ = _build(build_dataclass(ModelConfig, meta["backbone"], "backbone"), params)
    model.load_previous_stage(_load_weights(folder), partial=True)
    return model.eval()


def build_speech_llm_recipe(cfg: TrainConfig, params: SpeechLLMParams) -> Recipe:
    if cfg.data.text_leading_space != params.model.target_leading_space:
        raise ConfigError(
            "recipe.params.model.target_leading_space must equal data.text_leading_space "
            "(the collator tokenizes the targets)"
        )
    model, prompt_style = _build(cfg.model, params)
    inherited: set[str] = set()
    if params.init_from:
        state = _load_weights(params.init_from)
        model.load_previous_stage(state, partial=True)
        inherited = set(state)
    elif model.projector.moe is not None and model.projector.moe.reference_router is not None:
        log.info("speech_llm: no previous stage (init_from), so no transition loss")
        model.projector.moe.reference_router = None
    tok = model.tokenizer
    try:
        eot = token_id(tok, EOT)
    except KeyError:
        eot = None
    if eot != model.eos_id:
        raise ConfigError(
            f"recipe speech_llm: the engine's collator ends targets with {EOT}, but the LM's eos "
            f"is {tok.eos_token!r}; this LM's tokenizer is not supported by the Whisper collator"
        )
    losses = params.model.losses
    return Recipe(
        model=model,
        tokenizer=tok,
        prompt_style=prompt_style,  # the collator's Whisper prompt, unused by this recipe
        n_mels=int(model.encoder.config.num_mel_bins),
        loss_fn=make_loss_fn(_utterances(cfg), cfg.optim.grad_accum),
        export=make_export(cfg.model, params, inherited),
        aux_loss_weights={
            "lang": losses.lang_weight,
            "balance": losses.balance_weight,
            "transition": losses.transition_weight,
        },
        max_target_tokens=int(model.max_positions or 10**9),
    )


def replace_params(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of `cfg` with `recipe.params` keys replaced (used by the stage runner)."""
    params = {**cfg.recipe.params, **changes}
    return dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, params=params))
