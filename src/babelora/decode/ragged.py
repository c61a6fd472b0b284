"""A Whisper step decoder for prompts of different lengths in one batch (left padding).

Long-form decoding conditions each window on the text before it (`<|startofprev|> ... <|sot|>
...`), so the rows of a batch carry prompts of different lengths. The search wants equal-length
prompts; `left_pad` pads them on the left and `RaggedWhisperStepDecoder` hides the padding from
the model with an attention mask and per-row positions, so each row decodes as it would alone
(tests/decode/test_longform.py checks this against unpadded single-row decoding).

It also reads the no-speech probability at each row's `<|startoftranscript|>` position on the
first step (openai/whisper's `no_speech_probs`), before any filter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from babelora.decode.search import WhisperStepDecoder, returned_cache


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[list[list[int]], list[int]]:
    """Prompts left-padded with `pad_id` to the longest, and the padding of each."""
    width = max(len(p) for p in prompts)
    pads = [width - len(p) for p in prompts]
    return [[pad_id] * n + list(p) for n, p in zip(pads, prompts)], pads


class RaggedWhisperStepDecoder(WhisperStepDecoder):
    """WhisperStepDecoder over left-padded prompts (`pads[i]` pad tokens before row i's prompt).

    `sot_index[i]` is the position of `<|startoftranscript|>` in row i's padded prompt and
    `no_speech` the no-speech token (None: not measured); after the first step
    `no_speech_probs[i]` holds row i's probability of it (rows in their original order).
    """

    def __init__(
        self,
        model,
        encoder_states: Tensor,
        pads: Sequence[int],
        sot_index: Sequence[int] | None = None,
        no_speech: int | None = None,
    ):
        super().__init__(model, encoder_states)
        rows = encoder_states.shape[0]
        self.pads = torch.tensor(list(pads), dtype=torch.long, device=self.device)
        self.origin = torch.arange(rows, device=self.device)
        self.mask: Tensor | None = None  # (rows, tokens so far), 1 = real token
        self.next_pos: Tensor | None = None  # (rows,) position of the next token
        self.sot_index = list(sot_index) if sot_index is not None else None
        self.no_speech = no_speech
        self.no_speech_probs: list[float] = [0.0] * rows

    def step(self, input_ids: Tensor) -> Tensor:
        n = input_ids.shape[1]
        if self.mask is None:
            cols = torch.arange(n, device=self.device)[None]
            pads = self.pads[self.origin][:, None]
            self.mask = (cols >= pads).long()
            positions = (cols - pads).clamp(min=0)
        else:
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], n)], dim=1)
            positions = self.next_pos[:, None] + torch.arange(n, device=self.device)[None]
        self.next_pos = positions[:, -1] + 1
        out = self.decoder(
            input_ids=input_ids,
            attention_mask=self.mask,
            position_ids=positions,
            encoder_hidden_states=self.enc,
            use_cache=True,
            **{self._cache_kw: self.cache},
        )
        self.cache = returned_cache(out)
        hidden = out.last_hidden_state
        if not self._started and self.no_speech is not None and self.sot_index is not None:
            rows = torch.arange(hidden.shape[0], device=self.device)
            index = torch.tensor(self.sot_index, device=self.device)[self.origin]
            at_sot = self.model.proj_out(hidden[rows, index]).float().softmax(dim=-1)
            for row, orig in enumerate(self.origin.tolist()):
                self.no_speech_probs[orig] = float(at_sot[row, self.no_speech])
        self._started = True
        return torch.log_softmax(self.model.proj_out(hidden[:, -1]).float(), dim=-1)

    def select(self, rows: Tensor, same_source: bool = False) -> None:
        super().select(rows, same_source)
        self.origin = self.origin.index_select(0, rows)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, rows)
            self.next_pos = self.next_pos.index_select(0, rows)
