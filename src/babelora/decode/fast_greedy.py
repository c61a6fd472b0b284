"""Greedy search kept on the device: no host synchronisation inside the step loop.

`DecodingTask.greedy` reads every step's tokens on the host (per-row repetition guard, dropping
finished rows). Here tokens, scores, finished flags and the repetition guard live in device
tensors updated by the same captured step as the decoder (static_cache + graphs), and the host
looks only every `sync_every` steps: to stop when all rows are done and to compact the live rows
into a smaller bucket. Finished rows in between are masked (computed, never read).

The result equals `DecodingTask.greedy` token for token: same first-token blank suppression,
same special-token mask, the same repetition guard (`_guard`, see `guard_cut`) and the same
score (log-probs summed up to and including the end token or the guard's last token).
`on_device(task)` says whether the task allows it (beam 1, no n-gram ban, no extra logit
filters, which read tokens on the host); otherwise the task's own search runs over the static
decoder (search.generate decides).

Shapes: C capacity rows, b bucket rows, N = max_ngram, W = (guard + 1) * N, S = max_new.
"""

from __future__ import annotations

import torch
from torch import Tensor

from babelora.decode.static_cache import StaticWhisperDecoder, bucket_for

Row = tuple[list[int], float, bool]  # text tokens, summed log-prob, whether the guard fired

COMPACT_RATIO = 0.75  # compact when the live rows fit a bucket this much smaller or less


def guard_cut(tokens: Tensor, t: Tensor, guard: int, max_ngram: int) -> tuple[Tensor, Tensor]:
    """Device form of search._guard for rows whose token t (0-based) was just appended.

    tokens (b, S) long; t (1,) long. Returns (fired (b,) bool, cut length (b,) long): fired
    where the trailing n-gram (n <= max_ngram) now repeats guard + 1 times back-to-back; the cut
    keeps one copy. The guard fires as soon as that happens, so no n-gram ever repeats more
    often: the smallest such n is the one `trailing_repeats` picks.
    """
    b = tokens.shape[0]
    width = (guard + 1) * max_ngram
    offsets = torch.arange(width, device=tokens.device)
    idx = t - offsets  # position of window slot j: t - j
    win = tokens.gather(1, idx.clamp(min=0).expand(b, width))
    win = torch.where(idx >= 0, win, -1 - offsets)  # before the start: never equal to anything
    n = torch.arange(1, max_ngram + 1, device=tokens.device)
    shifted = win[:, (offsets[None, :] + n[:, None]).clamp(max=width - 1)]  # (b, N, W)
    need = offsets[None, :] < guard * n[:, None]  # (N, W): j < guard * n
    periodic = ((win[:, None, :] == shifted) | ~need).all(-1)  # (b, N)
    fired = periodic.any(-1)
    first = periodic.int().argmax(-1) + 1  # smallest period
    return fired, (t + 1) - guard * first


class GreedyState:
    """Per-row device state of the loop, capacity C rows, S steps: buffers of the decoder's
    engine (a captured step replays on them for every later batch of the same shape), reset."""

    def __init__(self, dec: StaticWhisperDecoder, capacity: int, steps: int, eot: int):
        buf = dec.engine.buffer
        self.tokens = buf("greedy.tokens", (capacity, steps), torch.long, fill=eot)
        self.scores = buf("greedy.scores", (capacity,), torch.float32)
        self.done = buf("greedy.done", (capacity,), torch.bool, fill=False)
        self.length = buf("greedy.length", (capacity,), torch.long)
        self.hit = buf("greedy.hit", (capacity,), torch.bool, fill=False)
        self.t = buf("greedy.t", (1,), torch.long)
        self.suppress: Tensor | None = None

    def tensors(self) -> list[Tensor]:
        return [self.tokens, self.scores, self.done, self.length, self.hit]

    def select(self, rows: Tensor, live: int) -> None:
        n = rows.shape[0]
        for x in self.tensors():
            x[:n] = x.index_select(0, rows)
        self.done[live:n] = True  # padding rows


def _update(
    task,
    dec: StaticWhisperDecoder,
    st: GreedyState,
    logp: Tensor,
    b: int,
    first: bool,
) -> None:
    """Pick each row's token from logp (b, V) and advance the state (all on the device)."""
    options = task.options
    if st.suppress is not None:
        logp = logp.masked_fill(st.suppress, float("-inf"))
    if first and options.suppress_blank:
        logp[:, list(task.blank)] = float("-inf")
    best = logp.argmax(-1)
    lp = logp.gather(1, best[:, None])[:, 0]
    alive = ~st.done[:b]
    st.scores[:b] += torch.where(alive, lp, torch.zeros_like(lp))
    keep = alive & (best != task.eot)
    st.tokens[:b].scatter_(1, st.t.expand(b, 1), torch.where(keep, best, task.eot)[:, None])
    st.length[:b] = torch.where(keep, st.t + 1, st.length[:b])
    finished = alive & ~keep
    if options.repetition_guard > 0:
        fired, cut = guard_cut(st.tokens[:b], st.t, options.repetition_guard, options.max_ngram)
        fired = fired & keep
        st.length[:b] = torch.where(fired, cut, st.length[:b])
        st.hit[:b] |= fired
        finished = finished | fired
    st.done[:b] |= finished
    dec.last[:b, 0] = best


def _harvest(
    st: GreedyState, rows: list[int], results: list[Row | None], b: int, only_done: bool
) -> None:
    """Copy rows' results to the host: the finished ones (`only_done`), or all (the end)."""
    tokens, scores = st.tokens[:b].tolist(), st.scores[:b].tolist()
    length, hit, done = st.length[:b].tolist(), st.hit[:b].tolist(), st.done[:b].tolist()
    for i, orig in enumerate(rows):
        if orig >= 0 and results[orig] is None and (done[i] or not only_done):
            results[orig] = (tokens[i][: length[i]], scores[i], hit[i])


def greedy_on_device(task, sync_every: int = 8) -> list[Row]:
    """`task.greedy()` (a search.DecodingTask over a StaticWhisperDecoder) with the loop on
    the device; one (tokens, logprob, hit_guard) per row."""
    dec: StaticWhisperDecoder = task.decoder  # type: ignore[assignment]
    batch = len(task.prompts)
    results: list[Row | None] = [None] * batch
    rows = list(range(batch))  # original row of each decoder row (-1: padding)
    logp = dec.prefill(task._prompt_inputs(range(batch)))  # allocates the engine
    st = GreedyState(dec, batch, task.max_new, task.eot)
    if task.suppress is not None:
        st.suppress = dec.engine.buffer("greedy.suppress", tuple(task.suppress.shape), torch.bool)
        st.suppress.copy_(task.suppress)
    _update(task, dec, st, logp, batch, first=True)
    options = task.options  # what the captured step bakes in besides its buffers
    signature = (
        task.eot,
        task.max_new,
        st.suppress is not None,
        options.repetition_guard,
        options.max_ngram,
    )

    def make_fn(b: int, filled: int | None):
        step = dec._step_fn(b, filled)

        def fn() -> Tensor:
            _update(task, dec, st, step(), b, first=False)
            return st.done

        return fn

    for t in range(1, task.max_new):
        if t % sync_every == 0:
            b = dec.bucket
            live_rows = (~st.done[:b]).nonzero()[:, 0]
            live = live_rows.shape[0]
            if live == 0:
                break
            target = min(dec.kv.capacity, bucket_for(live, dec.buckets))
            if target <= COMPACT_RATIO * b:
                _harvest(st, rows, results, b, only_done=True)
                pad = live_rows[:1].expand(target - live)
                index = torch.cat([live_rows, pad])
                kept = live_rows.tolist()
                rows = [rows[i] for i in kept] + [-1] * (target - live)
                st.select(index, live)
                dec.select(index, live=live)
                for hook in task.row_hooks:
                    hook(index)
        st.t.fill_(t)
        dec.run_captured("greedy", make_fn, restore=st.tensors() + [dec.last], signature=signature)
    _harvest(st, rows, results, dec.bucket, only_done=False)
    return results  # type: ignore[return-value]


def on_device(task) -> bool:
    """Whether nothing in `task` needs the host per step (then `greedy_on_device` runs it)."""
    return (
        task.options.beam_size == 1
        and task.options.no_repeat_ngram_size == 0
        and not getattr(task, "logit_filters", ())
    )
