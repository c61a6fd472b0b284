"""Whisper's timestamp tokens: the decoding rules that keep them well formed, and cutting a
window's tokens into timed segments.

Whisper (Radford et al. 2022, openai/whisper `ApplyTimestampRules`) predicts `<|t|>` tokens,
t = 0.00 .. 30.00 s in steps of 0.02 s, around each segment of text: `<|0.00|> text <|2.40|>
<|2.40|> more text <|5.10|> <|endoftext|>`. `TimestampRules` is a logit filter for
babelora.decode.search (`DecodingTask.logit_filters`) applying openai/whisper's rules, which
faster-whisper/CTranslate2 share:
- the first token is a timestamp, at most `max_initial_timestamp` seconds;
- timestamps come in pairs (a closing timestamp is followed by an opening one or EOT), except
  that a single timestamp may end the text;
- timestamps never decrease, and a segment has non-zero length;
- `<|notimestamps|>` is never emitted;
- when the timestamp tokens together are more probable than the best text token, a timestamp
  is taken.
`split_segments` cuts the tokens of one 30 s window into segments and says where the next
window starts (faster-whisper's `_split_segments_by_timestamps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from babelora.data.prompts import NO_TIMESTAMPS, token_id

TIME_PRECISION = 0.02  # seconds per timestamp token
FRAME_SECONDS = 0.01  # seconds per mel frame
INPUT_STRIDE = 2  # mel frames per timestamp step (conv2 stride)


@dataclass(frozen=True)
class TimestampTokens:
    """Where a Whisper vocabulary keeps its timestamp tokens: `<|0.00|>` is `timestamp_begin`
    (the id after `<|notimestamps|>`), the last one is `vocab - 1`."""

    eot: int
    no_timestamps: int
    vocab: int

    @property
    def timestamp_begin(self) -> int:
        return self.no_timestamps + 1

    @classmethod
    def of(cls, handle) -> TimestampTokens:
        """The timestamp tokens of a loaded WhisperHandle."""
        return cls(
            eot=handle.eot_id,
            no_timestamps=token_id(handle.tokenizer, NO_TIMESTAMPS),
            vocab=int(handle.model.proj_out.out_features),
        )

    def is_timestamp(self, token: int) -> bool:
        return token >= self.timestamp_begin

    def seconds(self, token: int) -> float:
        return (token - self.timestamp_begin) * TIME_PRECISION


class TimestampRules:
    """Logit filter applying Whisper's timestamp rules (module docstring) to log-probs
    (rows, V), given the tokens each row has emitted so far (prompt excluded).

    `max_initial_timestamp` (seconds, None: no limit) bounds the first timestamp: 1.0 as
    openai/whisper and faster-whisper default.
    """

    def __init__(self, tokens: TimestampTokens, max_initial_timestamp: float | None = 1.0):
        self.tokens = tokens
        self.max_initial = (
            None
            if max_initial_timestamp is None
            else int(round(max_initial_timestamp / TIME_PRECISION))
        )

    def __call__(self, logprobs: Tensor, seqs: Sequence[Sequence[int]]) -> Tensor:
        begin, eot = self.tokens.timestamp_begin, self.tokens.eot
        logprobs = logprobs.clone()
        logprobs[:, self.tokens.no_timestamps] = float("-inf")
        for row, seq in enumerate(seqs):
            if not seq:  # the first token: a timestamp, not later than the initial limit
                logprobs[row, :begin] = float("-inf")
                if self.max_initial is not None:
                    logprobs[row, begin + self.max_initial + 1 :] = float("-inf")
                continue
            last = seq[-1] >= begin
            penultimate = len(seq) < 2 or seq[-2] >= begin
            if last and penultimate:  # a pair just closed: text or EOT next
                logprobs[row, begin:] = float("-inf")
            elif last:  # an opening or closing timestamp: no text right after a closing one
                logprobs[row, :eot] = float("-inf")
            stamps = [t for t in seq if t >= begin]
            if stamps:  # never decrease; a segment's end is after its start
                floor = stamps[-1] if last and not penultimate else stamps[-1] + 1
                logprobs[row, begin:floor] = float("-inf")
        stamp_mass = logprobs[:, begin:].logsumexp(dim=-1)
        best_text = logprobs[:, :begin].max(dim=-1).values
        force = stamp_mass > best_text
        if force.any():
            logprobs[force, :begin] = float("-inf")
        return logprobs


def suppress_mask_with_timestamps(
    suppress_tokens: Sequence[int], tokens: TimestampTokens, device: torch.device | str = "cpu"
) -> Tensor:
    """Boolean (V,) mask of tokens never emitted when decoding with timestamps: the model's
    `suppress_tokens` (non-speech symbols) and every special token between EOT and the
    timestamps (start-of-transcript, languages, tasks, previous-text, no-speech); EOT and the
    timestamp tokens stay allowed (`<|notimestamps|>` is banned by `TimestampRules`)."""
    mask = torch.zeros(tokens.vocab, dtype=torch.bool, device=device)
    ids = [t for t in suppress_tokens if 0 <= t < tokens.vocab]
    mask[ids] = True
    mask[tokens.eot + 1 : tokens.timestamp_begin] = True
    mask[tokens.eot] = False
    return mask


@dataclass
class RawSegment:
    """One timed piece of a window: absolute start/end seconds and its tokens (timestamps
    included)."""

    start: float
    end: float
    tokens: list[int]


def split_segments(
    tokens: Sequence[int],
    stamps: TimestampTokens,
    seek: int,
    segment_frames: int,
) -> tuple[list[RawSegment], int]:
    """Cut the decoded tokens (EOT removed) of the window starting at mel frame `seek` and
    holding `segment_frames` frames of audio into segments; return them and the next seek.

    Complete segments are closed by a timestamp pair; the next window starts at the last
    closing timestamp, so an unfinished last segment is decoded again from its start. A single
    timestamp before EOT means no speech follows it in this window: the next window starts
    after this one. Without any pair the whole window is one segment (ending at its last
    timestamp if there is one)."""
    begin = stamps.timestamp_begin
    tokens = list(tokens)
    offset = seek * FRAME_SECONDS
    single_ending = len(tokens) >= 2 and tokens[-2] < begin <= tokens[-1]
    pairs = [i for i in range(1, len(tokens)) if tokens[i] >= begin and tokens[i - 1] >= begin]
    segments: list[RawSegment] = []
    if pairs:
        cuts = pairs + ([len(tokens)] if single_ending else [])
        last = 0
        for cut in cuts:
            piece = tokens[last:cut]
            segments.append(
                RawSegment(
                    offset + stamps.seconds(piece[0]), offset + stamps.seconds(piece[-1]), piece
                )
            )
            last = cut
        if single_ending:
            return segments, seek + segment_frames
        return segments, seek + (tokens[last - 1] - begin) * INPUT_STRIDE
    duration = segment_frames * FRAME_SECONDS
    times = [t for t in tokens if t >= begin]
    if times and times[-1] != begin:
        duration = stamps.seconds(times[-1])
    segments.append(RawSegment(offset, offset + duration, tokens))
    return segments, seek + segment_frames
