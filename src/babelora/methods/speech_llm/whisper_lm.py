"""A pretrained Whisper decoder used as a decoder-only causal language model.

The speech-LLM's offline default LM (the backbone role of arXiv 2511.10670): the decoder of Whisper
tiny.en with its cross-attention removed, so that speech reaches it only as a prefix of
`inputs_embeds`, exactly as for any `AutoModelForCausalLM`. Why remove rather than feed zeros:
cross-attention over zero encoder states is *not* a no-op (the value and output biases still add
a constant vector), so the only exact "off" is skipping the sub-block, which transformers'
`WhisperDecoderLayer` does when `encoder_hidden_states` is None. The `encoder_attn` modules are
deleted as well, so they hold no memory, receive no LoRA by name pattern and leave no unused
trainable parameters (which DDP rejects).

Whisper's decoder has a learned table of `max_target_positions` (448) positions: prefix + prompt
+ target must fit, and this model raises a clear error when they would not.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import WhisperConfig, WhisperForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from babelora.data.collate import IGNORE_INDEX
from babelora.decode.search import cache_keyword, returned_cache
from babelora.errors import ConfigError

# the output field that holds the KV cache: `cache` in recent transformers, else `past_key_values`
_OUTPUT_CACHE = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
)


class WhisperDecoderLM(WhisperForCausalLM):
    """`WhisperForCausalLM` without cross-attention, with a position-limit check and
    `logits_to_keep` (compute the LM head on the last N positions only, as Llama/GPT-2 do)."""

    def __init__(self, config: WhisperConfig) -> None:
        config = copy.deepcopy(config)
        config.is_encoder_decoder = False
        config.tie_word_embeddings = True
        super().__init__(config)
        for layer in self.model.decoder.layers:
            del layer.encoder_attn
            del layer.encoder_attn_layer_norm

    @property
    def max_positions(self) -> int:
        """Number of positions in the learned positional table (448 for released Whisper)."""
        return int(self.config.max_target_positions)

    @classmethod
    def from_whisper(cls, whisper: torch.nn.Module) -> WhisperDecoderLM:
        """Copy the decoder (and tied output projection) of a `WhisperForConditionalGeneration`."""
        lm = cls(whisper.config)
        state = {
            k: v for k, v in whisper.model.decoder.state_dict().items() if ".encoder_attn" not in k
        }
        lm.model.decoder.load_state_dict(state, strict=True)
        lm.proj_out.weight = lm.model.decoder.embed_tokens.weight  # Whisper ties them
        dtype = next(whisper.parameters()).dtype
        return lm.to(dtype=dtype, device=next(whisper.parameters()).device)

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Causal LM forward (no encoder states). `labels` are *already shifted* (HF Whisper
        convention): `labels[:, i]` is the target of `logits[:, i]`; -100 is ignored. `cache`
        is the KV cache (`past_key_values`, its older name, is accepted as well)."""
        if cache is None:
            cache = kwargs.pop("past_key_values", None)
        if (
            kwargs.get("encoder_outputs") is not None
            or kwargs.get("encoder_hidden_states") is not None
        ):
            raise ValueError("WhisperDecoderLM has no cross-attention; give speech as a prefix")
        kwargs.pop("encoder_outputs", None)
        kwargs.pop("encoder_hidden_states", None)
        self._check_positions(input_ids, inputs_embeds, cache, position_ids)
        decoder = self.model.decoder
        outputs = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            use_cache=use_cache,
            **{cache_keyword(decoder.forward): cache},
            **kwargs,
        )
        hidden = outputs[0]
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        else:
            hidden = hidden[:, logits_to_keep]
        logits = self.proj_out(hidden)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                labels.to(logits.device).reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, **{_OUTPUT_CACHE: returned_cache(outputs)}
        )

    def _check_positions(self, input_ids, inputs_embeds, cache, position_ids) -> None:
        if position_ids is not None:
            top = int(position_ids.max()) + 1 if position_ids.numel() else 0
        else:
            length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            past = cache.get_seq_length() if cache is not None else 0
            top = past + length
        if top > self.max_positions:
            raise ConfigError(
                f"sequence needs {top} positions but the Whisper decoder LM has "
                f"{self.max_positions} (max_target_positions): downsample the speech more "
                "(projector.downsample) or shorten the audio / target"
            )


def whisper_decoder_lm(whisper: torch.nn.Module) -> WhisperDecoderLM:
    """The decoder of `whisper` (a `WhisperForConditionalGeneration`) as a causal LM."""
    return WhisperDecoderLM.from_whisper(whisper)
