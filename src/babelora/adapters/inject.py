"""Put expert layers into a model by module-name patterns, and the handle that drives them.

`inject(model, config)` replaces every target `nn.Linear` (in place) by an `ExpertLoRALinear`,
freezes everything else, and returns an `AdapterHandle`: the model, its layers by module name,
the shared `RoutingContext`, and the operations on all layers at once (set the batch's routing,
collect aux losses, merge/unload, adapter state dicts).

Targets: a preset name from `PRESETS`, a bare module name (suffix match, PEFT's rule: `fc1`
matches `model.encoder.layers.0.fc1`) or a regular expression (full match on the module name).
Streams: each layer knows which padding mask applies to its input; Whisper's cross-attention
k/v read the encoder output, so they use the encoder mask (`default_stream`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from babelora.adapters.config import LoRAConfig, MoLoRAConfig, lora_only
from babelora.adapters.context import RoutingContext
from babelora.adapters.expert_linear import ExpertLoRALinear
from babelora.errors import ConfigError, MergeError

_ATTN = r"(q_proj|k_proj|v_proj|out_proj)"
_ENC = r"(.*\.)?encoder\.layers\.\d+\."
_DEC = r"(.*\.)?decoder\.layers\.\d+\."

PRESETS: dict[str, tuple[str, ...]] = {
    "whisper-encoder-attn": (_ENC + r"self_attn\." + _ATTN,),
    "whisper-encoder-ffn": (_ENC + r"(fc1|fc2)",),
    "whisper-decoder-self-attn": (_DEC + r"self_attn\." + _ATTN,),
    "whisper-decoder-cross-attn": (_DEC + r"encoder_attn\." + _ATTN,),
    "whisper-decoder-ffn": (_DEC + r"(fc1|fc2)",),
    "whisper-encoder": (_ENC + r"(self_attn\." + _ATTN + r"|fc1|fc2)",),
    "whisper-decoder": (_DEC + r"((self_attn|encoder_attn)\." + _ATTN + r"|fc1|fc2)",),
    "whisper-attn": (r"(.*\.)?(encoder|decoder)\.layers\.\d+\.(self_attn|encoder_attn)\." + _ATTN,),
    "whisper-all": (
        _ENC + r"(self_attn\." + _ATTN + r"|fc1|fc2)",
        _DEC + r"((self_attn|encoder_attn)\." + _ATTN + r"|fc1|fc2)",
    ),
    "whisper-qv": (
        r"(.*\.)?(encoder|decoder)\.layers\.\d+\.(self_attn|encoder_attn)\.(q_proj|v_proj)",
    ),
    "causal-lm-attn": (r"(.*\.)?layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",),
    "causal-lm-all": (
        r"(.*\.)?layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",
        r"(.*\.)?layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)",
    ),
}
"""Target presets. The causal-LM ones follow Llama/Qwen/Mistral names in transformers; give a
prefix regex (e.g. `llm\\..*\\.q_proj`) when a speech-LLM also holds an encoder with such names."""


def default_stream(name: str) -> str:
    """Which padding mask a layer's input follows: encoder frames, decoder tokens, or default."""
    if re.search(r"(^|\.)encoder_attn\.(k_proj|v_proj)$", name):
        return "encoder"  # cross-attention keys/values are computed from the encoder output
    if re.search(r"(^|\.)encoder\.", name):
        return "encoder"
    if re.search(r"(^|\.)decoder\.", name):
        return "decoder"
    return "default"


def _matcher(entry: str) -> Callable[[str], bool]:
    if entry in PRESETS:
        regexes = [re.compile(p) for p in PRESETS[entry]]
        return lambda name: any(r.fullmatch(name) for r in regexes)
    if re.fullmatch(r"\w+", entry):
        return lambda name: name == entry or name.endswith("." + entry)
    try:
        regex = re.compile(entry)
    except re.error as err:
        raise ConfigError(
            f"lora.targets: {entry!r} is not a preset or valid regex ({err})"
        ) from None
    return lambda name: regex.fullmatch(name) is not None


def find_targets(
    model: nn.Module, targets: Sequence[str], exclude: Sequence[str] = ()
) -> list[str]:
    """Names of the linear layers of `model` that `targets` select and `exclude` spares."""
    matchers = [_matcher(t) for t in targets]
    excluders = [re.compile(p) for p in exclude]
    names = []
    for name, module in model.named_modules():
        if not name or not any(m(name) for m in matchers):
            continue
        if any(r.fullmatch(name) for r in excluders):
            continue
        if isinstance(module, ExpertLoRALinear):
            raise ConfigError(f"{name} already has expert adapters; inject once per model")
        if isinstance(module, nn.Linear):
            names.append(name)
        elif not any(isinstance(m, nn.Linear) for m in module.children()):
            raise ConfigError(
                f"lora.targets selects {name}, a {type(module).__name__}, not nn.Linear"
            )
    if not names:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:5]
        raise ConfigError(
            f"lora.targets {list(targets)} match no linear layer; the model has e.g. {linear}"
        )
    return names


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@dataclass
class AdapterHandle:
    """A model with expert layers, and the operations on all of them."""

    model: nn.Module
    config: MoLoRAConfig
    context: RoutingContext
    layers: dict[str, ExpertLoRALinear]

    # -- routing ----------------------------------------------------------------------------
    def set_routing(
        self,
        langs: Sequence[str | None] | None = None,
        lang_ids: Tensor | Sequence[int] | None = None,
        lang_probs: Tensor | None = None,
        masks: dict[str, Tensor] | None = None,
        decoding: bool = False,
    ) -> None:
        """Set the batch's languages / posterior / padding masks (see RoutingContext.set)."""
        self.context.set(
            langs=langs, lang_ids=lang_ids, lang_probs=lang_probs, masks=masks, decoding=decoding
        )

    def clear_routing(self) -> None:
        self.context.clear()

    @contextmanager
    def routing(self, **kwargs) -> Iterator[RoutingContext]:
        """`with handle.routing(langs=[...]): model(...)`; inputs cleared afterwards (the aux
        losses stay until `aux_losses()` / `aux_loss()` or the next `set_routing`)."""
        self.set_routing(**kwargs)
        try:
            yield self.context
        finally:
            self.context.clear_inputs()

    def aux_losses(self) -> dict[str, Tensor]:
        """Unweighted aux losses, each averaged over layers, since the last call."""
        return self.context.pop_aux_losses()

    def aux_loss(self, losses: dict[str, Tensor] | None = None) -> Tensor:
        """Config-weighted sum of the aux losses (pops them unless `losses` is given)."""
        losses = self.aux_losses() if losses is None else losses
        weights = self.config.aux_loss_weights
        total = torch.zeros(())
        for name, value in losses.items():
            total = total.to(value.device) + weights.get(name, 0.0) * value
        return total

    # -- experts ----------------------------------------------------------------------------
    def expert_names(self) -> list[str]:
        """Names in expert order: shared0.., then `de` / `de.1` (languages) or `expert0`.."""
        cfg = self.config
        names = [f"shared{i}" for i in range(cfg.num_shared)]
        if cfg.languages and not cfg.num_experts:
            for lang in cfg.languages:
                epl = cfg.experts_per_lang
                names += [lang] if epl == 1 else [f"{lang}.{j}" for j in range(epl)]
        else:
            names += [f"expert{i}" for i in range(cfg.num_routed)]
        return names

    def fold_weights(self, lang: str | None = None) -> Tensor:
        """Expert weights (E,) of shared experts plus language `lang`'s experts (all 1).

        This is exactly what the model computes for a row of language `lang` only with the
        language router (or without routed experts, lang None); other routers raise MergeError.
        """
        cfg = self.config
        w = torch.zeros(cfg.num_total)
        w[: cfg.num_shared] = 1.0
        if lang is None:
            if cfg.router not in ("none", "language"):
                raise MergeError(f"router {cfg.router} routes per input; name expert weights")
            return w
        if cfg.router != "language":
            raise MergeError(
                f"folding language {lang!r} is exact only with the language router, not "
                f"{cfg.router}; pass explicit expert weights instead"
            )
        start = cfg.num_shared + self.context.lang_index(lang) * cfg.experts_per_lang
        w[start : start + cfg.experts_per_lang] = 1.0
        return w

    def _weights(self, lang: str | None, weights: Tensor | None) -> Tensor | None:
        if weights is not None:
            return weights
        if lang is not None or self.config.router == "language":
            return self.fold_weights(lang)
        return None  # layer decides (no router, or static router weights)

    def merge(self, lang: str | None = None, weights: Tensor | None = None) -> None:
        """Fold (shared + `lang`) experts, or given weights, into every base weight."""
        w = self._weights(lang, weights)
        for layer in self.layers.values():
            layer.merge(w)

    def unmerge(self) -> None:
        for layer in self.layers.values():
            layer.unmerge()

    def unload(self, lang: str | None = None, weights: Tensor | None = None, merge: bool = True):
        """Replace every expert layer by its base linear (merged first unless merge=False).

        Returns the plain model; this handle is unusable afterwards.
        """
        if merge:
            self.merge(lang, weights)
        for name, layer in self.layers.items():
            _set_module(self.model, name, layer.base_layer)
        self.layers = {}
        return self.model

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model: every expert layer off inside the block."""
        for layer in self.layers.values():
            layer.disabled = True
        try:
            yield
        finally:
            for layer in self.layers.values():
                layer.disabled = False

    # -- parameters -------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers.values() for p in layer.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def freeze_experts(self, freeze: bool = True) -> None:
        """Freeze (or unfreeze) lora_A/lora_B, leaving routers trainable (fusion training)."""
        for layer in self.layers.values():
            layer.lora_A.requires_grad_(not freeze)
            layer.lora_B.requires_grad_(not freeze)

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """Experts and routers of every layer, keyed `<module>.<param>` (no base weights)."""
        out = {}
        for name, layer in self.layers.items():
            for key, value in layer.state_dict().items():
                if not key.startswith("base_layer."):
                    out[f"{name}.{key}"] = value
        return out

    def load_adapter_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load what `adapter_state_dict` gave; missing or unexpected keys or other shapes
        (an adapter trained on another base model) raise ConfigError before anything changes."""
        current = self.adapter_state_dict()
        expected = set(current)
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or extra:
            raise ConfigError(
                f"adapter state mismatch: missing {missing[:3]}, unexpected {extra[:3]}"
            )
        for key, value in current.items():
            if tuple(state[key].shape) != tuple(value.shape):
                raise ConfigError(
                    f"adapter tensor {key} has shape {tuple(state[key].shape)} but this model "
                    f"needs {tuple(value.shape)} (an adapter for another base model?)"
                )
        with torch.no_grad():
            for name, layer in self.layers.items():
                for key, param in layer.state_dict(keep_vars=True).items():
                    if not key.startswith("base_layer."):
                        param.copy_(state[f"{name}.{key}"])


def inject(
    model: nn.Module,
    config: LoRAConfig | MoLoRAConfig,
    *,
    stream_of: Callable[[str], str] = default_stream,
    freeze_base: bool = True,
) -> AdapterHandle:
    """Wrap the target linears of `model` (in place) with expert layers; return the handle.

    A `LoRAConfig` gives plain LoRA (one always-on expert). With `freeze_base` every parameter
    outside the expert layers stops requiring grad.
    """
    cfg = lora_only(config) if isinstance(config, LoRAConfig) else config
    names = find_targets(model, cfg.lora.targets, cfg.lora.exclude)
    if freeze_base:
        model.requires_grad_(False)
    context = RoutingContext(cfg.languages)
    layers = {}
    for name in names:
        base = model.get_submodule(name)
        layer = ExpertLoRALinear.from_config(base, cfg, context, key=name, stream=stream_of(name))
        _set_module(model, name, layer)
        layers[name] = layer
    return AdapterHandle(model, cfg, context, layers)
