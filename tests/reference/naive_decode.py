"""Slow, obviously-correct decoders: the full prefix is re-run every step, one utterance at a
time. babelora.decode.search must give the same tokens."""

from __future__ import annotations

import torch

from babelora.decode.search import DecodeOptions, _guard, _suppress_mask


@torch.no_grad()
def _logprobs(model, enc, tokens):
    out = model(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([tokens]))
    return torch.log_softmax(out.logits[0, -1].float(), -1)


def _filter(model, lp, first, eot, options, blank=(220,)):
    lp = lp.masked_fill(_suppress_mask(model, lp.numel(), eot, lp.device), float("-inf"))
    if first and options.suppress_blank:
        lp[[*blank, eot]] = float("-inf")
    return lp


def naive_greedy(model, enc, prompt, eot, options=DecodeOptions()):
    """enc: (1, T', D). Returns text tokens."""
    seq: list[int] = []
    for step in range(options.max_new_tokens):
        lp = _filter(model, _logprobs(model, enc, list(prompt) + seq), step == 0, eot, options)
        tok = int(lp.argmax())
        if tok == eot:
            break
        seq.append(tok)
        seq, fired = _guard(seq, options)
        if fired:
            break
    return seq


def naive_beam(model, enc, prompt, eot, options):
    """Single-utterance beam search without a cache; ranks by mean log-prob like search.py."""
    beams = [([], 0.0)]
    finished = []
    for step in range(options.max_new_tokens):
        cands = []
        for seq, score in beams:
            lp = _filter(model, _logprobs(model, enc, list(prompt) + seq), step == 0, eot, options)
            top = torch.topk(lp, 2 * options.beam_size)
            for value, tok in zip(top.values.tolist(), top.indices.tolist()):
                cands.append((seq, tok, score + value))
        cands.sort(key=lambda c: -c[2])
        beams = []
        for seq, tok, score in cands:
            if len(beams) == options.beam_size:
                break
            if tok == eot:
                if len(finished) < options.beam_size:
                    finished.append((seq, score))
                continue
            beams.append((seq + [tok], score))
        if len(finished) >= options.beam_size:
            break
    pool = finished or beams
    return max(pool, key=lambda h: h[1] / (len(h[0]) + 1))[0]
