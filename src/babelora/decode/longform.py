"""Long-form transcription with timestamps, as openai/whisper and faster-whisper do it.

Each file is read as a sequence of 30 s windows. A window starts at the file's `seek` (in mel
frames), is padded to 30 s and decoded with timestamp tokens under Whisper's timestamp rules
(babelora.decode.timestamps); its complete segments (closed by a timestamp pair) become timed
segments, and the next window starts at the last closing timestamp, so a segment cut by the
window's end is decoded again whole. Times are clamped to the end of the window's audio (the
model can place a timestamp in the silence that pads the last window to 30 s; openai/whisper
and faster-whisper leave such times as they are). A window whose no-speech probability is above
`no_speech_threshold` and whose mean log-prob is below `logprob_threshold` is skipped as
silence. With `condition_on_previous_text` each window's prompt carries the tokens decoded so
far (`<|startofprev|> ... <|startoftranscript|> ...`, at most 223 tokens); optional voice-
activity trimming (babelora.decode.vad) cuts long silences first and maps times back.

Batched across files: every round decodes the current window of every unfinished file,
`RunnerOptions.max_batch_size` rows (and `batch_seconds` of 30 s windows) per forward; rows
carry prompts of different lengths (babelora.decode.ragged) and, with language experts, their
own language's experts (`before_batch`, as in decode_requests).

The repetition guard of babelora.decode.search is off here by default: it ends a row inside a
segment, without the closing timestamp, so the whole window would become one segment and the
speech after the repetition would be skipped (seen on tiny.en); Whisper and faster-whisper
decode the repetition out and close it with a timestamp.

Not implemented: temperature fallback (babelora decodes greedily or with beams; its repetition
guard stops loops instead) and word-level timestamps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from tqdm import tqdm

from babelora.data.audio import N_FRAMES, SAMPLE_RATE, load_audio, log_mel
from babelora.data.prompts import NO_TIMESTAMPS, token_id, whisper_prompt_ids
from babelora.decode.ragged import RaggedWhisperStepDecoder, left_pad
from babelora.decode.runner import BatchHook, Request, Result, RunnerOptions
from babelora.decode.search import DecodeOptions, DecodingTask
from babelora.decode.timestamps import (
    FRAME_SECONDS,
    TimestampRules,
    TimestampTokens,
    split_segments,
    suppress_mask_with_timestamps,
)
from babelora.decode.vad import TimeMap, VadOptions, trim_silences
from babelora.errors import AudioError, BabeloraError

log = logging.getLogger(__name__)
NO_SPEECH_TOKENS = ("<|nospeech|>", "<|nocaptions|>")  # the name differs between vocabularies
SOT_PREV = "<|startofprev|>"


@dataclass(frozen=True)
class LongformOptions:
    """Long-form settings; defaults follow openai/whisper and faster-whisper's `transcribe`."""

    condition_on_previous_text: bool = True  # prompt each window with the text before it
    initial_prompt: str | None = None  # text that precedes the first window (names, spelling)
    max_initial_timestamp: float | None = 1.0  # the first timestamp of a window, at most (s)
    no_speech_threshold: float | None = 0.6  # skip a window above this no-speech prob ...
    logprob_threshold: float | None = -1.0  # ... unless its mean log-prob is above this
    max_new_tokens: int | None = None  # per window (None: the rest of the 448-token context)
    repetition_guard: int = 0  # replaces DecodeOptions.repetition_guard (0: off, as Whisper)
    vad: VadOptions | None = None  # trim long silences first (None: off)
    max_seconds: float | None = None  # refuse longer audio (None: any length)

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise BabeloraError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Segment:
    """One timed piece of a transcript (seconds in the original audio)."""

    id: int
    seek: float  # start of the window it was decoded in (s)
    start: float
    end: float
    text: str  # as decoded (Whisper's text starts with a space)
    tokens: list[int]  # timestamp tokens included
    avg_logprob: float
    no_speech_prob: float

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "seek": round(self.seek, 3),
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
            "tokens": list(self.tokens),
            "avg_logprob": round(self.avg_logprob, 4),
            "no_speech_prob": round(self.no_speech_prob, 4),
        }


@dataclass
class _File:
    """The long-form state of one request."""

    index: int
    mel: torch.Tensor  # (n_mels, frames) of the (trimmed) audio
    sot: list[int]  # <|startoftranscript|> ... without <|notimestamps|>
    timemap: TimeMap | None
    seek: int = 0
    tokens: list[int] = field(default_factory=list)  # all decoded tokens (the prompt source)
    reset_since: int = 0
    segments: list[Segment] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return int(self.mel.shape[-1])


def sot_sequence(tokenizer, req: Request, style: str) -> list[int]:
    """The decoder prefix of `req` for timestamped decoding (no `<|notimestamps|>`)."""
    ids = whisper_prompt_ids(tokenizer, req.lang, req.task, req.target_lang, style)
    if ids[-1] == token_id(tokenizer, NO_TIMESTAMPS):
        ids = ids[:-1]
    return ids


def window_prompt(
    state: _File, sot_prev: int, options: LongformOptions, context: int
) -> tuple[list[int], int]:
    """The prompt of the file's next window and the index of its <|startoftranscript|>."""
    previous = state.tokens[state.reset_since :][-(context // 2 - 1) :]
    prefix = [sot_prev, *previous] if previous else []
    return prefix + state.sot, len(prefix)


def _no_speech_id(tokenizer) -> int | None:
    for name in NO_SPEECH_TOKENS:
        try:
            return token_id(tokenizer, name)
        except KeyError:
            continue
    return None


def _window(mel: torch.Tensor, seek: int) -> tuple[torch.Tensor, int]:
    """The 30 s window at `seek`, zero-padded (as Whisper pads log-mel), and its valid frames."""
    piece = mel[:, seek : seek + N_FRAMES]
    size = piece.shape[-1]
    return torch.nn.functional.pad(piece, (0, N_FRAMES - size)), size


def _prepare(
    handle, req: Request, options: LongformOptions, prompt: str | None
) -> tuple[_File, float]:
    wave = load_audio(req.audio_filepath)
    seconds = len(wave) / SAMPLE_RATE
    if options.max_seconds is not None and seconds > options.max_seconds:
        raise AudioError(
            f"{req.audio_filepath}: audio is {seconds:.0f} s, longer than the limit of "
            f"{options.max_seconds:.0f} s"
        )
    timemap = None
    if options.vad is not None:
        wave, timemap = trim_silences(wave, options.vad)
    mel = log_mel(wave, handle.n_mels) if len(wave) >= 400 else torch.zeros(handle.n_mels, 0)
    sot = sot_sequence(handle.tokenizer, req, handle.prompt_style)
    state = _File(0, mel, sot, timemap)
    prompt = prompt if prompt is not None else options.initial_prompt
    if prompt and prompt.strip():
        state.tokens = handle.tokenizer.encode(" " + prompt.strip(), add_special_tokens=False)
    return state, seconds


def _finish_window(
    state: _File,
    tokens: list[int],
    logprob: float,
    no_speech: float,
    size: int,
    handle,
    stamps: TimestampTokens,
    options: LongformOptions,
) -> None:
    """Turn a decoded window into segments and move the file's seek on."""
    avg = logprob / (len(tokens) + 1)
    skip = options.no_speech_threshold is not None and no_speech > options.no_speech_threshold
    if skip and options.logprob_threshold is not None and avg > options.logprob_threshold:
        skip = False
    if skip:
        state.seek += size
        return
    raw, seek = split_segments(tokens, stamps, state.seek, size)
    window_start = state.seek * FRAME_SECONDS
    window_end = (state.seek + size) * FRAME_SECONDS  # where this window's audio ends
    for piece in raw:
        text = handle.tokenizer.decode([t for t in piece.tokens if t < stamps.eot])
        start, end = min(piece.start, window_end), min(piece.end, window_end)
        if start >= end or not text.strip():
            continue
        if state.timemap is not None:
            start, end = state.timemap.original(start), state.timemap.original(end, is_end=True)
        state.tokens.extend(piece.tokens)
        index = len(state.segments)
        state.segments.append(
            Segment(index, window_start, start, end, text, piece.tokens, avg, no_speech)
        )
    if not options.condition_on_previous_text:
        state.reset_since = len(state.tokens)
    state.seek = seek if seek > state.seek else state.seek + size


def transcribe_long(
    handle,
    requests: Sequence[Request],
    decode_options: DecodeOptions = DecodeOptions(),
    options: RunnerOptions = RunnerOptions(),
    longform: LongformOptions = LongformOptions(),
    before_batch: BatchHook | None = None,
    prompts: Sequence[str | None] | None = None,
) -> list[Result]:
    """Decode `requests` long-form with timestamps (module docstring); results in request order,
    each with `extra["segments"]` (Segment.to_json) and the joined text as `hypothesis`.
    `prompts[i]` (not None) replaces `longform.initial_prompt` for request i."""
    model, tok = handle.model, handle.tokenizer
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    decode_options = replace(decode_options, repetition_guard=longform.repetition_guard)
    stamps = TimestampTokens.of(handle)
    rules = TimestampRules(stamps, longform.max_initial_timestamp)
    suppress = suppress_mask_with_timestamps(model.config.suppress_tokens or [], stamps, device)
    sot_prev, no_speech = token_id(tok, SOT_PREV), _no_speech_id(tok)
    context = int(model.config.max_target_positions)
    results = [
        Result(r.id, lang=r.lang, lang_source=r.lang_source, task=r.task, target_lang=r.target_lang)
        for r in requests
    ]
    states: list[_File] = []
    for i, req in enumerate(requests):
        try:
            state, seconds = _prepare(handle, req, longform, prompts[i] if prompts else None)
        except (BabeloraError, KeyError) as err:
            results[i].error = str(err)
            continue
        state.index, results[i].audio_seconds, results[i].chunks = i, seconds, 0
        states.append(state)
    rows = max(1, min(options.max_batch_size, int(options.batch_seconds // 30)))
    total = sum(s.frames for s in states) * FRAME_SECONDS
    bar = tqdm(total=round(total), unit="audio s", disable=not options.show_progress, leave=False)
    while active := [s for s in states if s.seek < s.frames]:
        for first in range(0, len(active), rows):
            batch = active[first : first + rows]
            start = time.perf_counter()
            windows = [_window(s.mel, s.seek) for s in batch]
            feats = torch.stack([w for w, _ in windows]).to(device=device, dtype=dtype)
            sizes = [size for _, size in windows]
            prompts, sots = zip(*(window_prompt(s, sot_prev, longform, context) for s in batch))
            padded, pads = left_pad(prompts, stamps.eot)
            lens = torch.tensor(sizes, device=device)
            reqs = [requests[s.index] for s in batch]
            hooks = before_batch(reqs, lens, N_FRAMES) if before_batch else ()
            with torch.no_grad():
                enc = model.get_encoder()(feats).last_hidden_state
                decoder = RaggedWhisperStepDecoder(
                    model, enc, pads, [p + s for p, s in zip(pads, sots)], no_speech
                )
                room = context - len(padded[0])
                task = DecodingTask(
                    decoder=decoder,
                    prompts=padded,
                    eot=stamps.eot,
                    options=decode_options,
                    row_hooks=hooks,
                    max_new=max(1, min(longform.max_new_tokens or room, room)),
                    suppress=suppress,
                    blank=[220, stamps.eot],
                    logit_filters=[rules],
                )
                hyps = task.run()
            spent = time.perf_counter() - start
            for row, (state, hyp, size) in enumerate(zip(batch, hyps, sizes)):
                before = state.seek
                _finish_window(
                    state, hyp.tokens, hyp.logprob, decoder.no_speech_probs[row], size,
                    handle, stamps, longform,
                )  # fmt: skip
                res = results[state.index]
                res.decode_seconds += spent / len(batch)
                res.repetition_guard |= hyp.hit_guard
                res.chunks += 1
                bar.update(round((min(state.seek, state.frames) - before) * FRAME_SECONDS))
    bar.close()
    for state in states:
        res = results[state.index]
        res.hypothesis = "".join(s.text for s in state.segments).strip()
        res.extra["segments"] = [s.to_json() for s in state.segments]
    return results


def segments_of(result: Result) -> list[dict]:
    """The segments of a long-form result (empty for a plain one)."""
    return list(result.extra.get("segments", []))
