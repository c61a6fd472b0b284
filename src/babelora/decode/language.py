"""Whisper's own language identification: which `<|lang|>` token follows `<|startoftranscript|>`.

A multilingual Whisper predicts the spoken language as its first decoding step: the decoder
reads `<|startoftranscript|>` and the language tokens' logits, softmaxed over the candidates
(all of Whisper's languages, or a given set), are the posterior. `detect_languages` does this
batched (encoder once per batch, one decoder step) on the first 30 s of each utterance, as
Whisper does; `apply_detections` turns the predictions into language-agnostic Requests
(`lang_source="predicted"`), optionally with the posterior over an expert set's languages
(`lang_probs`) to weight its experts. English-only models (*.en) have never learned these tokens:
they are refused with a pointer to a trained LID head (`--lid`).

Batches hold clips of one input length (`runner.input_samples`), as decoding's do, so a clip's
probabilities do not depend on what else is in its batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from babelora.data.audio import N_SAMPLES, SAMPLE_RATE, load_audio
from babelora.data.prompts import SOT, token_id
from babelora.decode.runner import Request, RunnerOptions, features_for, input_samples
from babelora.errors import BabeloraError, LanguageError
from babelora.languages import LANG_CODES, check_lang

AUTO = "auto"
MULTILINGUAL_VOCAB = 51865  # Whisper's multilingual vocabulary size; *.en models have 51864


@dataclass(frozen=True)
class Detection:
    """Whisper's language prediction for one utterance: the language, its probability, and the
    posterior over the candidate languages (summing to 1)."""

    lang: str
    prob: float
    probs: dict[str, float]


def is_multilingual(handle) -> bool:
    """Whether the model has learned Whisper's language tokens (not a *.en model)."""
    return int(handle.model.config.vocab_size) >= MULTILINGUAL_VOCAB


def check_detectable(handle) -> None:
    """Raise LanguageError when `handle` cannot identify languages itself (English-only)."""
    if not is_multilingual(handle):
        raise LanguageError(
            f"--language auto: {handle.name} is an English-only model and cannot identify the "
            "spoken language; use a trained LID head (--lid DIR), a multilingual model "
            "(--model base), or name the language (--language LANG)"
        )


def language_token_ids(tokenizer, langs: Sequence[str] | None = None) -> dict[str, int]:
    """{code: id of `<|code|>`} for `langs` (default: every Whisper language the vocabulary has)."""
    if langs is None:
        out = {}
        for code in LANG_CODES:
            with contextlib.suppress(KeyError):
                out[code] = token_id(tokenizer, f"<|{code}|>")
        return out
    out = {}
    for code in dict.fromkeys(check_lang(x) for x in langs):
        try:
            out[code] = token_id(tokenizer, f"<|{code}|>")
        except KeyError:
            raise LanguageError(f"the tokenizer has no language token <|{code}|>") from None
    if not out:
        raise LanguageError("no candidate languages for language identification")
    return out


@torch.no_grad()
def language_probs(handle, features: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """(B, L) posterior over `token_ids` (language tokens) from one decoder step after
    `<|startoftranscript|>`, for log-mel `features` (B, n_mels, T)."""
    model = handle.model
    param = next(model.parameters())
    enc = model.get_encoder()(features.to(param.device, param.dtype)).last_hidden_state
    sot = token_id(handle.tokenizer, SOT)
    start = torch.full((features.shape[0], 1), sot, dtype=torch.long, device=param.device)
    out = model.model.decoder(input_ids=start, encoder_hidden_states=enc, use_cache=False)
    logits = model.proj_out(out.last_hidden_state[:, -1]).float()
    ids = torch.tensor(list(token_ids), device=param.device)
    return torch.softmax(logits[:, ids], dim=-1).cpu()


def _groups(waves: list[tuple[int, np.ndarray]], options: RunnerOptions):
    """Batches of one input length, longest first, within the runner's seconds and size
    budgets."""

    def length(item: tuple[int, np.ndarray]) -> int:
        return input_samples(len(item[1]), options)

    order = sorted(waves, key=lambda item: -length(item))
    batch: list[tuple[int, np.ndarray]] = []
    for item in order:
        full = length(item) / SAMPLE_RATE * (len(batch) + 1) > options.batch_seconds
        full = full or len(batch) >= options.max_batch_size
        if batch and (length(item) != length(batch[0]) or full):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def detect_languages(
    handle,
    requests: Sequence[Request],
    options: RunnerOptions = RunnerOptions(),
    langs: Sequence[str] | None = None,
    adapter=None,
) -> list[Detection | None]:
    """Whisper's language prediction for each request (None where its audio cannot be read:
    decoding reports that), restricted to `langs` when given. An expert set (`adapter`) is
    switched off meanwhile: the base model identifies the language."""
    check_detectable(handle)
    table = language_token_ids(handle.tokenizer, langs)
    codes, ids = list(table), list(table.values())
    waves: list[tuple[int, np.ndarray]] = []
    for i, req in enumerate(requests):
        try:
            waves.append((i, load_audio(req.audio_filepath)[:N_SAMPLES]))
        except BabeloraError:
            continue
    out: list[Detection | None] = [None] * len(requests)
    with adapter.disabled() if adapter is not None else contextlib.nullcontext():
        for batch in _groups(waves, options):
            feats = features_for([w for _, w in batch], handle.n_mels, options)
            probs = language_probs(handle, feats, ids)
            for (i, _), row in zip(batch, probs.tolist()):
                best = int(np.argmax(row))
                out[i] = Detection(codes[best], row[best], dict(zip(codes, row)))
    return out


def posterior_over(detection: Detection, langs: Sequence[str]) -> tuple[float, ...]:
    """The detection's posterior renormalised over `langs` (an expert set's languages, in its
    order); uniform when none of them was a candidate."""
    mass = [detection.probs.get(code, 0.0) for code in langs]
    total = sum(mass)
    if total <= 0.0:
        return tuple(1.0 / len(langs) for _ in langs)
    return tuple(m / total for m in mass)


def apply_detections(
    requests: Sequence[Request],
    detections: Sequence[Detection | None],
    posterior_langs: Sequence[str] | None = None,
) -> list[Request]:
    """Requests decoded in the predicted language (`lang_source="predicted"`); with
    `posterior_langs` (an expert set's languages) also `lang_probs` to weight the experts.
    A request without a detection keeps an empty language (its audio failed to load)."""
    out = []
    for req, det in zip(requests, detections):
        if det is None:
            out.append(replace(req, lang="", lang_source="predicted", lang_probs=None))
            continue
        probs = posterior_over(det, posterior_langs) if posterior_langs else None
        out.append(replace(req, lang=det.lang, lang_source="predicted", lang_probs=probs))
    return out
