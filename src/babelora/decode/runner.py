"""Decode many utterances: load audio, batch by duration, encode, search, write JSONL.

A bad item (missing, corrupt, empty or non-finite audio) is recorded with its error and the
rest of the batch still completes; the caller reports a summary and a non-zero exit code.
Audio longer than the encoder window is cut into consecutive 30 s chunks whose transcripts are
joined (no overlap; `max_chunks` bounds the work, and longer audio is refused clearly).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from babelora.data.audio import HOP_LENGTH, N_SAMPLES, SAMPLE_RATE, load_audio, log_mel
from babelora.data.prompts import whisper_prompt_ids
from babelora.decode.memory import split_on_oom
from babelora.decode.options import RunnerOptions
from babelora.decode.search import DecodeOptions, RowHook, generate
from babelora.errors import AudioError, BabeloraError

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One thing to decode: audio and what to do with it."""

    id: str
    audio_filepath: str
    lang: str = "en"
    task: str = "asr"
    target_lang: str | None = None
    lang_source: str = "given"  # or "predicted"
    lang_probs: tuple[float, ...] | None = None  # LID posterior over the expert languages


@dataclass
class Result:
    id: str
    hypothesis: str = ""
    lang: str = ""
    lang_source: str = "given"
    task: str = "asr"
    target_lang: str | None = None
    audio_seconds: float = 0.0
    decode_seconds: float = 0.0
    chunks: int = 1
    repetition_guard: bool = False
    error: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        row = {
            "id": self.id,
            "hypothesis": self.hypothesis,
            "lang": self.lang,
            "lang_source": self.lang_source,
            "task": self.task,
            "audio_seconds": round(self.audio_seconds, 3),
            "decode_seconds": round(self.decode_seconds, 4),
        }
        if self.target_lang:
            row["target_lang"] = self.target_lang
        if self.chunks > 1:
            row["chunks"] = self.chunks
        if self.repetition_guard:
            row["repetition_guard"] = True
        if self.error:
            row["error"] = self.error
        row.update(self.extra)
        return row


@dataclass
class _Piece:
    """One encoder window of one request."""

    req: int
    chunk: int
    wave: np.ndarray
    prompt: tuple[int, ...]


def _chunks(wave: np.ndarray, max_chunks: int, name: str) -> list[np.ndarray]:
    if len(wave) <= N_SAMPLES:
        return [wave]
    count = int(np.ceil(len(wave) / N_SAMPLES))
    if count > max_chunks:
        raise AudioError(
            f"{name}: audio is {len(wave) / SAMPLE_RATE:.0f} s, longer than the limit of "
            f"{max_chunks} x 30 s windows (raise max_chunks or split the file)"
        )
    return [wave[i * N_SAMPLES : (i + 1) * N_SAMPLES] for i in range(count)]


def input_samples(samples: int, options: RunnerOptions) -> int:
    """The input length (samples) a clip of `samples` samples is decoded at: its duration plus
    the tail, at least `min_input_seconds`, rounded up to the length bucket, at most 30 s (exactly
    30 s with `pad_to_30s`), with an even frame count (conv2 has stride 2).

    It depends on the clip alone and batches only hold clips of one input length, so the
    encoder sees the same input for a clip whatever else is in its batch: a clip decodes the
    same alone or next to a long one.
    """
    if options.pad_to_30s:
        return N_SAMPLES
    length = max(samples + int(options.tail_seconds * SAMPLE_RATE), 1)
    length = max(length, int(options.min_input_seconds * SAMPLE_RATE))
    bucket = int(options.length_bucket_seconds * SAMPLE_RATE)
    if bucket > 0:
        length = -(-length // bucket) * bucket
    frames = min(length, N_SAMPLES) // HOP_LENGTH
    return (frames + frames % 2) * HOP_LENGTH


def features_for(waves: Sequence[np.ndarray], n_mels: int, options: RunnerOptions) -> torch.Tensor:
    """Log-mel batch (B, n_mels, T): each wave zero-padded to the batch's input length (the
    longest `input_samples` of its waves), so padding frames are true silence for every row, as
    Whisper's 30 s padding is."""
    if options.pad_to_30s:
        return torch.stack([log_mel(w, n_mels, pad_to_30s=True) for w in waves])
    length = max(input_samples(len(w), options) for w in waves)
    padded = [np.pad(w[:length], (0, max(0, length - len(w)))) for w in waves]
    return torch.stack([log_mel(w, n_mels) for w in padded])


def _batches(pieces: list[_Piece], options: RunnerOptions) -> Iterable[list[_Piece]]:
    """Batches of one input length and one prompt length (rows of different languages share a
    batch: expert routing is per row), longest first, within the seconds and size budgets."""

    def key(p: _Piece) -> tuple[int, int]:
        return input_samples(len(p.wave), options), len(p.prompt)

    order = sorted(pieces, key=lambda p: (key(p), p.prompt, -len(p.wave)))
    batch: list[_Piece] = []
    for piece in order:
        seconds = key(piece)[0] / SAMPLE_RATE * (len(batch) + 1)
        full = seconds > options.batch_seconds or len(batch) >= options.max_batch_size
        if batch and (key(piece) != key(batch[0]) or full):
            yield batch
            batch = []
        batch.append(piece)
    if batch:
        yield batch


BatchHook = Callable[[list[Request], torch.Tensor, int], Sequence[RowHook]]
"""before_batch(requests of the rows, valid mel frames per row (B,), padded mel frames)."""


def decode_requests(
    handle,
    requests: Sequence[Request],
    decode_options: DecodeOptions = DecodeOptions(),
    options: RunnerOptions = RunnerOptions(),
    before_batch: BatchHook | None = None,
) -> list[Result]:
    """Decode `requests` with a loaded WhisperHandle; results come back in request order.

    `before_batch(requests_of_rows, feature_lens, frames)` may set per-row state on the model (e.g.
    which language expert each row uses) and return hooks that follow the search's row
    selections (see babelora.decode.routing).
    """
    model, tok = handle.model, handle.tokenizer
    device = next(model.parameters()).device
    results = [
        Result(r.id, lang=r.lang, lang_source=r.lang_source, task=r.task, target_lang=r.target_lang)
        for r in requests
    ]
    pieces: list[_Piece] = []
    for i, req in enumerate(requests):
        try:
            wave = load_audio(req.audio_filepath)
            results[i].audio_seconds = len(wave) / SAMPLE_RATE
            prompt = tuple(
                whisper_prompt_ids(tok, req.lang, req.task, req.target_lang, handle.prompt_style)
            )
            parts = _chunks(wave, options.max_chunks, req.audio_filepath)
        except (BabeloraError, KeyError) as err:
            results[i].error = str(err)
            continue
        results[i].chunks = len(parts)
        pieces.extend(_Piece(i, c, w, prompt) for c, w in enumerate(parts))
    texts: dict[tuple[int, int], list[int]] = {}
    total = sum(len(p.wave) for p in pieces) / SAMPLE_RATE
    bar = tqdm(total=round(total), unit="audio s", disable=not options.show_progress, leave=False)

    def run(batch: Sequence[_Piece]) -> list:
        feats = features_for([p.wave for p in batch], handle.n_mels, options).to(device)
        feats = feats.to(next(model.parameters()).dtype)
        batch_reqs = [requests[p.req] for p in batch]
        lens = torch.tensor(
            [min(len(p.wave), N_SAMPLES) // HOP_LENGTH for p in batch], device=device
        )
        hooks = before_batch(batch_reqs, lens, feats.shape[-1]) if before_batch else ()
        with torch.no_grad():
            enc = model.get_encoder()(feats).last_hidden_state
            return generate(
                model, enc, [p.prompt for p in batch], handle.eot_id, decode_options, hooks
            )

    for batch in _batches(pieces, options):
        start = time.perf_counter()
        hyps = split_on_oom(run, batch)  # out of memory: halves, once
        spent = time.perf_counter() - start
        batch_audio = sum(len(p.wave) for p in batch)
        for piece, hyp in zip(batch, hyps):
            texts[(piece.req, piece.chunk)] = hyp.tokens
            res = results[piece.req]
            res.decode_seconds += spent * len(piece.wave) / batch_audio
            res.repetition_guard |= hyp.hit_guard
        bar.update(round(batch_audio / SAMPLE_RATE))
    bar.close()
    for i, res in enumerate(results):
        if res.error is None:
            tokens = [t for c in range(res.chunks) for t in texts.get((i, c), [])]
            res.hypothesis = tok.decode(tokens, skip_special_tokens=True).strip()
    return results


def write_results(results: Iterable[Result], path: str | Path) -> Path:
    """Hypotheses JSONL (one object per request, errors included), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for res in results:
            f.write(json.dumps(res.to_json(), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
