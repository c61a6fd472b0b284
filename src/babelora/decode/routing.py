"""Decode with language experts / MoLoRA: per-row routing, and language-agnostic LID.

Language-aware: each row of a mixed-language batch uses its own language's experts in one
batched forward (`adapter_batch_hook`). Language-agnostic: a LID head on the *base* encoder
(experts off) predicts each utterance's language first (`predict_languages`); the prediction
(or its posterior, to weight the experts) then routes as above, and every result says the
language was predicted.

A language without experts is an error unless the caller says what to do (`missing`): "base"
decodes it without language experts (the bare base, or only MoLoRA's always-on shared experts;
the hybrid router without its language prior), a language code decodes it with that language's
experts. `expert_label` names what decoded each row, for the hypotheses and the report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace

import torch

from babelora.decode.runner import (
    BatchHook,
    Request,
    RunnerOptions,
    _batches,
    _chunks,
    _Piece,
    features_for,
)
from babelora.decode.search import RowHook
from babelora.errors import LanguageError
from babelora.languages import check_lang

MISSING_CHOICES = ("error", "base")  # or a language code that has experts
LANGUAGE_ROUTERS = ("language", "hybrid")  # routers that route by the row's language
SHOW_IDS = 3


def encoder_mask(feature_lens: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, frames // 2) valid encoder positions from valid mel frames (conv2 halves the rate)."""
    from babelora.models.lid import frame_mask

    return frame_mask(feature_lens, (frames + 1) // 2)


def uses_language(adapter) -> bool:
    """Whether the set routes rows by their language (else the language does not matter)."""
    return adapter.config.router in LANGUAGE_ROUTERS


def check_missing_policy(adapter, missing: str) -> str:
    """`missing` checked: "error", "base", or a language (code) that has experts."""
    if missing in MISSING_CHOICES:
        return missing
    lang = check_lang(missing)
    known = adapter.context.languages
    if uses_language(adapter) and lang not in known:
        raise LanguageError(
            f"--missing-expert {lang}: the expert set has no {lang!r} experts "
            f"(experts: {', '.join(known) or 'none'})"
        )
    return lang


def route_lang(adapter, lang: str, missing: str = "error") -> str | None:
    """The language whose experts decode a row of language `lang` (None: no language experts)."""
    known = adapter.context.languages
    if lang in known:
        return lang
    if not uses_language(adapter) or missing == "base":
        return None
    if missing == "error":
        raise LanguageError(
            f"no experts for language {lang!r} (experts: {', '.join(known) or 'none'}); "
            "pass --missing-expert base to decode it without language experts, or "
            "--missing-expert LANG to use another language's experts"
        )
    return missing


def check_expert_languages(adapter, requests: Sequence[Request], missing: str = "error") -> None:
    """Raise LanguageError before decoding when a request's language has no experts and
    `missing` is "error": names the language, how many utterances, and the experts there are."""
    missing = check_missing_policy(adapter, missing)
    if missing != "error" or not uses_language(adapter):
        return
    known = adapter.context.languages
    orphans: dict[str, list[str]] = {}
    for req in requests:
        if req.lang_probs is None and req.lang not in known:
            orphans.setdefault(req.lang, []).append(req.id)
    if orphans:
        lang, ids = next(iter(orphans.items()))
        shown = ", ".join(repr(i) for i in ids[:SHOW_IDS]) + (
            ", ..." if len(ids) > SHOW_IDS else ""
        )
        also = f"; also {', '.join(repr(x) for x in list(orphans)[1:])}" if len(orphans) > 1 else ""
        raise LanguageError(
            f"no experts for language {lang!r} ({len(ids)} utterances: {shown}{also}); the expert "
            f"set has {', '.join(known) or 'none'}: pass --missing-expert base to decode them "
            "without language experts, or --missing-expert LANG to use another language's experts"
        )


def expert_label(adapter, request: Request, missing: str = "error") -> str:
    """What decoded `request`: a language's experts (its code), "posterior" (experts weighted by
    the LID posterior), "shared" (only MoLoRA's always-on shared experts), "base" (no expert at
    all), or the router ("learned", "weights") when the language does not choose the experts."""
    cfg = adapter.config
    if request.lang_probs is not None:
        return "posterior"
    if cfg.router in LANGUAGE_ROUTERS:
        lang = route_lang(adapter, request.lang, missing)
        if lang is not None:
            return lang
        if cfg.router == "hybrid":
            return "learned"
    elif cfg.router in ("learned", "weights"):
        return cfg.router
    return "shared" if cfg.num_shared else "base"


def posterior_row(adapter, request: Request, missing: str = "error") -> tuple[float, ...]:
    """The expert weights of one row in a posterior-weighted batch: its `lang_probs`, or, for a
    row whose language was given (a manifest that gives some rows' languages and not others'),
    one-hot on the experts of that language. A given row routed to no expert cannot share a
    posterior batch: LanguageError."""
    if request.lang_probs is not None:
        return tuple(float(p) for p in request.lang_probs)
    known = list(adapter.context.languages)
    lang = route_lang(adapter, request.lang, missing)
    if lang is None or lang not in known:
        raise LanguageError(
            f"{request.id}: language {request.lang!r} is given but has no experts, and the other "
            "utterances are weighted by the LID posterior; use --lid-mode argmax, or give or "
            "leave out the language of every utterance"
        )
    return tuple(1.0 if code == lang else 0.0 for code in known)


def adapter_batch_hook(adapter, missing: str = "error") -> BatchHook:
    """A `before_batch` hook for decode_requests: route each row by its Request's language (or
    by `lang_probs` posteriors when a row has one: see `posterior_row`), cache per-utterance
    decisions over the decoding steps, and keep the routing rows aligned with beams and finished
    rows.

    A language without experts raises LanguageError unless `missing` says what to do ("base":
    no language experts; a language code: its experts)."""
    ctx = adapter.context
    missing = check_missing_policy(adapter, missing)

    def before(reqs: list[Request], feature_lens: torch.Tensor, frames: int) -> Sequence[RowHook]:
        masks = {"encoder": encoder_mask(feature_lens, frames)}
        if any(r.lang_probs is not None for r in reqs):
            probs = torch.tensor([posterior_row(adapter, r, missing) for r in reqs])
            adapter.set_routing(
                lang_probs=probs.to(feature_lens.device), masks=masks, decoding=True
            )
        else:
            langs = [route_lang(adapter, r.lang, missing) for r in reqs]
            adapter.set_routing(langs=langs, masks=masks, decoding=True)
        return [ctx.reorder]

    return before


@torch.no_grad()
def predict_languages(
    handle,
    lid_head,
    requests: Sequence[Request],
    options: RunnerOptions = RunnerOptions(),
    adapter=None,
    posterior: bool = False,
) -> list[Request]:
    """Requests with `lang` replaced by the LID head's prediction (`lang_source="predicted"`).

    The base encoder runs with experts disabled. With `posterior`, `lang_probs` carries the
    posterior for weighting experts. Unreadable audio is left as it is (decode reports it).
    """
    from babelora.data.audio import load_audio
    from babelora.errors import BabeloraError

    model = handle.model
    device = next(model.parameters()).device
    pieces, out = [], list(requests)
    for i, req in enumerate(requests):
        try:
            wave = _chunks(load_audio(req.audio_filepath), options.max_chunks, req.audio_filepath)[
                0
            ]
        except BabeloraError:
            continue
        pieces.append(_Piece(i, 0, wave, ()))
    with adapter.disabled() if adapter is not None else contextlib.nullcontext():
        for batch in _batches(pieces, options):
            feats = features_for([p.wave for p in batch], handle.n_mels, options).to(device)
            lens = torch.tensor([len(p.wave) // 160 for p in batch], device=device)
            states = model.get_encoder()(feats.to(next(model.parameters()).dtype)).last_hidden_state
            mask = encoder_mask(lens, feats.shape[-1])[:, : states.shape[1]]
            probs = torch.softmax(lid_head(states.float(), mask), dim=-1).cpu()
            for piece, row in zip(batch, probs):
                lang = lid_head.languages[int(row.argmax())]
                out[piece.req] = replace(
                    requests[piece.req],
                    lang=lang,
                    lang_source="predicted",
                    lang_probs=tuple(row.tolist()) if posterior else None,
                )
    return out
