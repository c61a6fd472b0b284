"""Batched greedy and beam search for Whisper with a KV cache.

Each step feeds only the newest token per row; self-attention keys/values of the prefix and the
cross-attention keys/values of the audio come from the cache (transformers' EncoderDecoderCache).
Finished rows are dropped from the batch (greedy) and beams are reordered (beam search) by
selecting cache rows; anything else that holds per-row state (e.g. the language of each row for
language experts) follows through `row_hooks`, called with the row indices kept.

Shapes: B utterances, K beams, T' encoder frames, D model width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

RowHook = Callable[[Tensor], None]


@dataclass(frozen=True)
class DecodeOptions:
    """Search settings. Defaults follow Whisper's no-timestamp decoding."""

    beam_size: int = 1  # 1 = greedy
    max_new_tokens: int = 128  # also capped by the decoder's position table
    length_penalty: float | None = None  # None: rank beams by mean log-prob (Whisper's default)
    repetition_guard: int = (
        3  # stop a row whose trailing n-gram repeats this many more times (0 off)
    )
    max_ngram: int = 24  # longest n-gram the repetition guard looks for
    no_repeat_ngram_size: int = 0  # forbid any repeated n-gram of this size (0 off)
    suppress_blank: bool = True  # no space or EOT as first token (Whisper's SuppressBlank)
    suppress_special: bool = True  # never emit special tokens (language, task, timestamps)

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Hypothesis:
    """One decoded row: text token ids (prompt and EOT removed) and their summed log-prob."""

    tokens: list[int]
    logprob: float
    hit_guard: bool = False


def _suppress_mask(model, vocab: int, eot: int, device) -> Tensor:
    """Boolean (V,) mask of tokens never to emit."""
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    ids = [t for t in (model.config.suppress_tokens or []) if 0 <= t < vocab]
    mask[ids] = True
    mask[eot + 1 :] = True  # specials: <|startoftranscript|>, languages, tasks, timestamps
    mask[eot] = False
    return mask


def trailing_repeats(tokens: Sequence[int], max_ngram: int) -> tuple[int, int]:
    """(n, copies): the n-gram at the end of `tokens` repeated the most times back-to-back."""
    best = (0, 1)
    length = len(tokens)
    for n in range(1, min(max_ngram, length // 2) + 1):
        tail = list(tokens[length - n :])
        copies = 1
        while (
            length - (copies + 1) * n >= 0
            and list(tokens[length - (copies + 1) * n : length - copies * n]) == tail
        ):
            copies += 1
        if copies > best[1]:
            best = (n, copies)
    return best


def _banned_ngram_tokens(tokens: Sequence[int], size: int) -> list[int]:
    if size <= 0 or len(tokens) < size:
        return []
    prefix = tuple(tokens[len(tokens) - size + 1 :])
    return [
        tokens[i + size - 1]
        for i in range(len(tokens) - size + 1)
        if tuple(tokens[i : i + size - 1]) == prefix
    ]


class _Decoder:
    """Holds the cache and runs one decoder step for the current rows."""

    def __init__(self, model, encoder_states: Tensor):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        self.model = model
        self.decoder = model.get_decoder()
        self.enc = encoder_states
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())

    def step(self, input_ids: Tensor) -> Tensor:
        out = self.decoder(
            input_ids=input_ids,
            encoder_hidden_states=self.enc,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        hidden = out.last_hidden_state[:, -1]
        return torch.log_softmax(self.model.proj_out(hidden).float(), dim=-1)  # (rows, V)

    def select(self, rows: Tensor, same_audio: bool = False) -> None:
        """Keep/reorder cache rows. `same_audio`: each row keeps its utterance (beam reordering
        within an utterance), so the cross-attention cache is left as it is."""
        if same_audio:
            self.cache.self_attention_cache.reorder_cache(rows)
            return
        self.cache.reorder_cache(rows)
        self.enc = self.enc.index_select(0, rows)


def _apply_filters(
    logprobs: Tensor,
    seqs: list[list[int]],
    first: bool,
    suppress: Tensor,
    eot: int,
    options: DecodeOptions,
    blank_ids: list[int],
) -> Tensor:
    logprobs = logprobs.masked_fill(suppress, float("-inf"))
    if first and options.suppress_blank:
        logprobs[:, blank_ids] = float("-inf")
    if options.no_repeat_ngram_size > 0:
        for row, seq in enumerate(seqs):
            banned = _banned_ngram_tokens(seq, options.no_repeat_ngram_size)
            if banned:
                logprobs[row, banned] = float("-inf")
    return logprobs


def _guard(seq: list[int], options: DecodeOptions) -> tuple[list[int], bool]:
    """Cut a runaway repetition down to one copy; True when the guard fired."""
    if options.repetition_guard <= 0 or len(seq) < 2:
        return seq, False
    n, copies = trailing_repeats(seq, options.max_ngram)
    if copies > options.repetition_guard:
        return seq[: len(seq) - (copies - 1) * n], True
    return seq, False


@torch.no_grad()
def generate(
    model,
    encoder_states: Tensor,
    prompts: Sequence[Sequence[int]],
    eot_id: int,
    options: DecodeOptions = DecodeOptions(),
    row_hooks: Sequence[RowHook] = (),
    blank_ids: Sequence[int] = (220,),
) -> list[Hypothesis]:
    """Decode a batch from encoder states (B, T', D) and equal-length prompts.

    Returns one Hypothesis per row: the best beam (or the greedy path), text tokens only.
    """
    if len({len(p) for p in prompts}) != 1:
        raise ValueError("all prompts in a batch must have the same length; group rows by prompt")
    if encoder_states.shape[0] != len(prompts):
        raise ValueError(f"{encoder_states.shape[0]} audio rows but {len(prompts)} prompts")
    vocab = model.proj_out.out_features
    limit = model.config.max_target_positions - len(prompts[0])
    max_new = max(1, min(options.max_new_tokens, limit))
    suppress = _suppress_mask(model, vocab, eot_id, encoder_states.device)
    blank = [*blank_ids, eot_id]
    if options.beam_size == 1:
        return _greedy(
            model, encoder_states, prompts, eot_id, options, row_hooks, max_new, suppress, blank
        )
    return _beam(
        model, encoder_states, prompts, eot_id, options, row_hooks, max_new, suppress, blank
    )


def _greedy(model, enc, prompts, eot, options, row_hooks, max_new, suppress, blank):
    device = enc.device
    batch = len(prompts)
    dec = _Decoder(model, enc)
    results: list[Hypothesis | None] = [None] * batch
    seqs: list[list[int]] = [[] for _ in range(batch)]
    scores = [0.0] * batch
    alive = list(range(batch))  # original row index of each current row
    inputs = torch.tensor([list(p) for p in prompts], device=device)
    for step in range(max_new):
        logprobs = dec.step(inputs)
        logprobs = _apply_filters(
            logprobs, [seqs[i] for i in alive], step == 0, suppress, eot, options, blank
        )
        best = logprobs.argmax(dim=-1)
        best_lp = logprobs.gather(1, best[:, None])[:, 0].tolist()
        keep = []
        for row, (orig, tok) in enumerate(zip(alive, best.tolist())):
            scores[orig] += best_lp[row]
            if tok == eot:
                results[orig] = Hypothesis(seqs[orig], scores[orig])
                continue
            seqs[orig].append(tok)
            seqs[orig], fired = _guard(seqs[orig], options)
            if fired:
                results[orig] = Hypothesis(seqs[orig], scores[orig], hit_guard=True)
                continue
            keep.append(row)
        if not keep:
            break
        if len(keep) < len(alive):
            rows = torch.tensor(keep, device=device)
            dec.select(rows)
            for hook in row_hooks:
                hook(rows)
            best = best[rows]
            alive = [alive[r] for r in keep]
        inputs = best[:, None]
    for orig in range(batch):
        if results[orig] is None:
            results[orig] = Hypothesis(seqs[orig], scores[orig])
    return results  # type: ignore[return-value]


def _rank(hyp: Hypothesis, length_penalty: float | None) -> float:
    length = len(hyp.tokens) + 1
    if length_penalty is None:
        return hyp.logprob / length
    return hyp.logprob / (((5 + length) / 6) ** length_penalty)  # Wu et al. 2016 (GNMT)


def _beam(model, enc, prompts, eot, options, row_hooks, max_new, suppress, blank):
    device = enc.device
    batch, beams = len(prompts), options.beam_size
    expand = torch.arange(batch, device=device).repeat_interleave(beams)
    dec = _Decoder(model, enc.index_select(0, expand))
    for hook in row_hooks:
        hook(expand)
    seqs: list[list[int]] = [[] for _ in range(batch * beams)]
    scores = torch.zeros(batch * beams, device=device)
    scores.view(batch, beams)[:, 1:] = float("-inf")  # all beams start as copies of one
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    done = [False] * batch
    inputs = torch.tensor([list(prompts[i // beams]) for i in range(batch * beams)], device=device)
    for step in range(max_new):
        logprobs = dec.step(inputs)
        logprobs = _apply_filters(logprobs, seqs, step == 0, suppress, eot, options, blank)
        total = (scores[:, None] + logprobs).view(batch, beams * logprobs.shape[-1])
        top_scores, top_ids = total.topk(2 * beams, dim=-1)  # room for beams that end
        vocab = logprobs.shape[-1]
        new_rows, new_tokens, new_scores, new_seqs = [], [], [], []
        for b in range(batch):
            chosen = 0
            for score, flat in zip(top_scores[b].tolist(), top_ids[b].tolist()):
                if chosen == beams:
                    break
                src, tok = b * beams + flat // vocab, flat % vocab
                if score == float("-inf"):
                    break
                if tok == eot:
                    if not done[b] and len(finished[b]) < beams:
                        finished[b].append(Hypothesis(list(seqs[src]), score))
                    continue
                seq, fired = _guard(seqs[src] + [tok], options)
                if fired:
                    if not done[b] and len(finished[b]) < beams:
                        finished[b].append(Hypothesis(seq, score, hit_guard=True))
                    continue
                new_rows.append(src)
                new_tokens.append(tok)
                new_scores.append(score)
                new_seqs.append(seq)
                chosen += 1
            while chosen < beams:  # pad with dead beams so the batch keeps its shape
                new_rows.append(b * beams)
                new_tokens.append(eot)
                new_scores.append(float("-inf"))
                new_seqs.append(list(seqs[b * beams]))
                chosen += 1
            if len(finished[b]) >= beams:
                done[b] = True
        if all(done):
            break
        rows = torch.tensor(new_rows, device=device)
        dec.select(rows, same_audio=True)
        for hook in row_hooks:
            hook(rows)
        seqs = new_seqs
        scores = torch.tensor(new_scores, device=device)
        for b in range(batch):
            if done[b]:
                scores[b * beams : (b + 1) * beams] = float("-inf")
        inputs = torch.tensor(new_tokens, device=device)[:, None]
    results = []
    for b in range(batch):
        pool = finished[b] or [
            Hypothesis(seqs[b * beams + k], float(scores[b * beams + k]))
            for k in range(beams)
            if scores[b * beams + k] > float("-inf")
        ]
        if not pool:
            pool = [Hypothesis(seqs[b * beams], float("-inf"))]
        results.append(max(pool, key=lambda h: _rank(h, options.length_penalty)))
    return results
