"""Decode with language experts / MoLoRA: per-row routing, and language-agnostic LID.

Language-aware: each row of a mixed-language batch uses its own language's experts in one
batched forward (`adapter_batch_hook`). Language-agnostic: a LID head on the *base* encoder
(experts off) predicts each utterance's language first (`predict_languages`); the prediction
(or its posterior, to weight the experts) then routes as above, and every result says the
language was predicted.
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


def encoder_mask(feature_lens: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, frames // 2) valid encoder positions from valid mel frames (conv2 halves the rate)."""
    from babelora.models.lid import frame_mask

    return frame_mask(feature_lens, (frames + 1) // 2)


def adapter_batch_hook(adapter) -> BatchHook:
    """A `before_batch` hook for decode_requests: route each row by its Request's language (or
    `lang_probs` posterior when every row has one), cache per-utterance decisions over the
    decoding steps, and keep the routing rows aligned with beams and finished rows."""
    ctx = adapter.context

    def before(reqs: list[Request], feature_lens: torch.Tensor, frames: int) -> Sequence[RowHook]:
        masks = {"encoder": encoder_mask(feature_lens, frames)}
        if reqs and all(r.lang_probs is not None for r in reqs):
            probs = torch.tensor([r.lang_probs for r in reqs], dtype=torch.float32)
            adapter.set_routing(
                lang_probs=probs.to(feature_lens.device), masks=masks, decoding=True
            )
        else:
            langs = [r.lang if r.lang in ctx.languages else None for r in reqs]
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
