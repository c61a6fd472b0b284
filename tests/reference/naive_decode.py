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
    """Single-utterance Whisper beam search without a cache."""

    def next_logprobs(seq):
        lp = _logprobs(model, enc, list(prompt) + seq)
        return _filter(model, lp, not seq, eot, options)

    return beam_full_recompute(next_logprobs, eot, options)


def rank(score: float, tokens: list[int], length_penalty: float | None) -> float:
    """openai/whisper's ranking of a finished beam; its length counts the end token."""
    length = len(tokens) + 1
    if length_penalty is None:
        return score / length
    return score / ((5 + length) / 6) ** length_penalty


def beam_full_recompute(next_logprobs, eot, options):
    """Beam search for one utterance; `next_logprobs(tokens)` re-runs the whole sequence and
    returns the (filtered) log-probs of the next token. Keeps `options.beam_size` live beams,
    collects up to that many finished ones, returns the best by `rank`."""
    width = options.beam_size
    beams = [([], 0.0)]
    finished = []
    for _ in range(options.max_new_tokens):
        cands = []
        for seq, score in beams:
            top = torch.topk(next_logprobs(seq), 2 * width)
            for value, tok in zip(top.values.tolist(), top.indices.tolist()):
                cands.append((seq, tok, score + value))
        cands.sort(key=lambda c: -c[2])
        beams = []
        for seq, tok, score in cands:
            if len(beams) == width or score == float("-inf"):
                break
            if tok == eot:
                if len(finished) < width:
                    finished.append((seq, score))
                continue
            beams.append((seq + [tok], score))
        if len(finished) >= width:
            break
    pool = finished or beams
    return max(pool, key=lambda h: rank(h[1], h[0], options.length_penalty))[0]
