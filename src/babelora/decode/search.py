"""Batched greedy and beam search with a KV cache, for any model that decodes one step at a time.

The search drives a `StepDecoder`: `step(input_ids)` feeds new tokens per row and returns the
log-probs of the next token, `select(rows)` keeps/reorders the rows it holds (its KV cache and
any per-row input). `WhisperStepDecoder` is the Whisper encoder-decoder (self-attention and
cross-attention caches in transformers' `EncoderDecoderCache`); the speech-LLM's decoder-only LM
with a prefix of speech embeddings is another (babelora.methods.speech_llm.model).
Each step feeds only the newest token per row. Finished rows are dropped from the batch (greedy)
and beams are reordered (beam search) by selecting rows; anything else that holds per-row state
(e.g. the language of each row for language experts) follows through `row_hooks`, called with
the row indices kept. A batch to decode is one `DecodingTask`.

Shapes: B utterances, K beams, T' encoder frames, D model width, V vocabulary.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

RowHook = Callable[[Tensor], None]
LogitFilter = Callable[[Tensor, Sequence[Sequence[int]]], Tensor]
"""logit_filter(logprobs (rows, V), tokens emitted so far per row) -> logprobs, -inf = banned."""


@dataclass(frozen=True)
class DecodeOptions:
    """Search settings. Defaults follow Whisper's no-timestamp decoding."""

    beam_size: int = 1  # 1 = greedy
    max_new_tokens: int = 128  # also capped by the decoder's position table
    length_penalty: float | None = None  # how finished beams are ranked: see `length_score`
    repetition_guard: int = (
        3  # stop a row whose trailing n-gram repeats this many more times (0 off)
    )
    max_ngram: int = 24  # longest n-gram the repetition guard looks for
    no_repeat_ngram_size: int = 0  # forbid any repeated n-gram of this size (0 off)
    suppress_blank: bool = True  # no space or EOT as first token (Whisper's SuppressBlank)
    suppress_special: bool = True  # never emit special tokens (language, task, timestamps)
    kv_cache: str = "dynamic"  # or "static": preallocated cache, graph-ready (static_cache.py)
    graphs: str = "auto"  # static cache: off | auto (CUDA graphs on a GPU) | cuda | compile
    sync_every: int = 8  # static greedy: steps between host checks for finished rows

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.kv_cache not in ("dynamic", "static"):
            raise ValueError(f"kv_cache must be 'dynamic' or 'static', got {self.kv_cache!r}")
        if self.sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {self.sync_every}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Hypothesis:
    """One decoded row: text token ids (prompt and EOT removed) and their summed log-prob."""

    tokens: list[int]
    logprob: float
    hit_guard: bool = False


def length_score(logprob: float, length: int, length_penalty: float | None) -> float:
    """Rank of a beam with summed log-prob `logprob` over `length` tokens (the end token
    counts), openai/whisper's rule: `length_penalty` None = mean log-prob per token; a float
    alpha = logprob / ((5 + length) / 6) ** alpha (GNMT, Wu et al. 2016)."""
    if length_penalty is None:
        return logprob / length
    return logprob / (((5 + length) / 6) ** length_penalty)


def _rank(hyp: Hypothesis, length_penalty: float | None) -> float:
    return length_score(hyp.logprob, len(hyp.tokens) + 1, length_penalty)


# ---- transformers KV cache, across releases -----------------------------------------------


def cache_keyword(forward: Callable[..., Any]) -> str:
    """Keyword under which a transformers `forward` takes its KV cache: `cache` in recent
    releases (where `past_key_values` is deprecated and warns on every call), else
    `past_key_values`."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def returned_cache(output: Mapping[str, Any]) -> Any:
    """The KV cache a transformers forward returned, read without the deprecated alias."""
    for key in ("cache", "past_key_values"):
        if key in output:
            return output[key]
    return None


# ---- the step interface -------------------------------------------------------------------


class StepDecoder(Protocol):
    """A model the search can drive one step at a time; it holds one KV cache row per row."""

    device: torch.device

    def step(self, input_ids: Tensor) -> Tensor:
        """Feed (rows, n) new tokens (the prompts at the first step, n may be 0 there); return
        the log-probs (rows, V) of the next token."""
        ...

    def select(self, rows: Tensor, same_source: bool = False) -> None:
        """Keep/reorder rows (also before the first step: beam expansion). `same_source`: every
        row keeps its utterance (beam reordering within an utterance)."""
        ...


class WhisperStepDecoder:
    """StepDecoder for a Whisper encoder-decoder over encoder states (B, T', D)."""

    def __init__(self, model, encoder_states: Tensor):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        self.model = model
        self.decoder = model.get_decoder()
        self.enc = encoder_states
        self.device = encoder_states.device
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        self._cache_kw = cache_keyword(self.decoder.forward)
        self._started = False

    def step(self, input_ids: Tensor) -> Tensor:
        out = self.decoder(
            input_ids=input_ids,
            encoder_hidden_states=self.enc,
            use_cache=True,
            **{self._cache_kw: self.cache},
        )
        self.cache = returned_cache(out)
        self._started = True
        hidden = out.last_hidden_state[:, -1]
        return torch.log_softmax(self.model.proj_out(hidden).float(), dim=-1)  # (rows, V)

    def select(self, rows: Tensor, same_source: bool = False) -> None:
        """Beam reordering (`same_source`) leaves the cross-attention cache as it is: all beams
        of an utterance share it."""
        if not self._started:
            self.enc = self.enc.index_select(0, rows)
        elif same_source:
            self.cache.self_attention_cache.reorder_cache(rows)
        else:
            self.cache.reorder_cache(rows)
            self.enc = self.enc.index_select(0, rows)


# ---- filters and guards -------------------------------------------------------------------


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


def _guard(seq: list[int], options: DecodeOptions) -> tuple[list[int], bool]:
    """Cut a runaway repetition down to one copy; True when the guard fired."""
    if options.repetition_guard <= 0 or len(seq) < 2:
        return seq, False
    n, copies = trailing_repeats(seq, options.max_ngram)
    if copies > options.repetition_guard:
        return seq[: len(seq) - (copies - 1) * n], True
    return seq, False


# ---- the search ---------------------------------------------------------------------------


@dataclass
class DecodingTask:
    """One batch to decode: the step decoder (B rows), equal-length prompts and the settings.

    `max_new` caps the new tokens below `options.max_new_tokens` (e.g. by the position table;
    None: the option); `suppress` is a (V,) bool mask of tokens never emitted (None: none);
    `blank` are the tokens banned as the first token when `options.suppress_blank`;
    `logit_filters` run after the built-in filters at every step, in order (e.g. Whisper's
    timestamp rules, babelora.decode.timestamps).
    """

    decoder: StepDecoder
    prompts: Sequence[Sequence[int]]
    eot: int
    options: DecodeOptions = DecodeOptions()
    row_hooks: Sequence[RowHook] = ()
    max_new: int | None = None
    suppress: Tensor | None = None
    blank: Sequence[int] = ()
    logit_filters: Sequence[LogitFilter] = ()

    def __post_init__(self) -> None:
        if len({len(p) for p in self.prompts}) > 1:
            raise ValueError(
                "all prompts in a batch must have the same length; group rows by prompt"
            )
        if self.max_new is None:
            self.max_new = self.options.max_new_tokens
        if self.max_new < 1:
            raise ValueError(f"max_new must be >= 1, got {self.max_new}")

    def run(self) -> list[Hypothesis]:
        """One Hypothesis per row: the greedy path (beam_size 1) or the best beam."""
        return self.greedy() if self.options.beam_size == 1 else self.beam()

    def _filter(self, logprobs: Tensor, seqs: list[list[int]], first: bool) -> Tensor:
        if self.suppress is not None:
            logprobs = logprobs.masked_fill(self.suppress, float("-inf"))
        if first and self.options.suppress_blank:
            logprobs[:, list(self.blank)] = float("-inf")
        size = self.options.no_repeat_ngram_size
        if size > 0:
            for row, seq in enumerate(seqs):
                banned = _banned_ngram_tokens(seq, size)
                if banned:
                    logprobs[row, banned] = float("-inf")
        for logit_filter in self.logit_filters:
            logprobs = logit_filter(logprobs, seqs)
        return logprobs

    def _select(self, rows: Tensor, same_source: bool = False) -> None:
        self.decoder.select(rows, same_source)
        for hook in self.row_hooks:
            hook(rows)

    def _prompt_inputs(self, rows: Sequence[int]) -> Tensor:
        ids = [list(self.prompts[r]) for r in rows]
        return torch.tensor(ids, dtype=torch.long, device=self.decoder.device)

    def greedy(self) -> list[Hypothesis]:
        """Argmax path per row; a finished row leaves the batch."""
        eot, options, device = self.eot, self.options, self.decoder.device
        batch = len(self.prompts)
        results: list[Hypothesis | None] = [None] * batch
        seqs: list[list[int]] = [[] for _ in range(batch)]
        scores = [0.0] * batch
        alive = list(range(batch))  # original row index of each current row
        inputs = self._prompt_inputs(range(batch))
        for step in range(self.max_new):
            logprobs = self.decoder.step(inputs)
            logprobs = self._filter(logprobs, [seqs[i] for i in alive], step == 0)
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
                self._select(rows)
                best = best[rows]
                alive = [alive[r] for r in keep]
            inputs = best[:, None]
        for orig in range(batch):
            if results[orig] is None:
                results[orig] = Hypothesis(seqs[orig], scores[orig])
        return results  # type: ignore[return-value]

    def beam(self) -> list[Hypothesis]:
        """K beams per row over B*K decoder rows; the best finished beam by `length_score`."""
        eot, options, device = self.eot, self.options, self.decoder.device
        batch, beams = len(self.prompts), options.beam_size
        expand = torch.arange(batch, device=device).repeat_interleave(beams)
        self._select(expand)
        seqs: list[list[int]] = [[] for _ in range(batch * beams)]
        scores = torch.zeros(batch * beams, device=device)
        scores.view(batch, beams)[:, 1:] = float("-inf")  # all beams start as copies of one
        finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
        done = [False] * batch
        inputs = self._prompt_inputs(expand.tolist())
        for step in range(self.max_new):
            logprobs = self.decoder.step(inputs)
            logprobs = self._filter(logprobs, seqs, step == 0)
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
            self._select(torch.tensor(new_rows, device=device), same_source=True)
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
    """Decode a batch with a Whisper from encoder states (B, T', D) and equal-length prompts.

    Returns one Hypothesis per row: the best beam (or the greedy path), text tokens only.
    """
    if len({len(p) for p in prompts}) != 1:
        raise ValueError("all prompts in a batch must have the same length; group rows by prompt")
    if encoder_states.shape[0] != len(prompts):
        raise ValueError(f"{encoder_states.shape[0]} audio rows but {len(prompts)} prompts")
    vocab = model.proj_out.out_features
    limit = model.config.max_target_positions - len(prompts[0])
    max_new = max(1, min(options.max_new_tokens, limit))
    if options.kv_cache == "static":
        from babelora.decode.static_cache import StaticWhisperDecoder

        decoder = StaticWhisperDecoder(
            model, encoder_states, len(prompts[0]) + max_new, graphs=options.graphs
        )
    else:
        decoder = WhisperStepDecoder(model, encoder_states)
    task = DecodingTask(
        decoder=decoder,
        prompts=prompts,
        eot=eot_id,
        options=options,
        row_hooks=row_hooks,
        max_new=max_new,
        suppress=_suppress_mask(model, vocab, eot_id, encoder_states.device),
        blank=[*blank_ids, eot_id],
    )
    if options.kv_cache == "static":
        from babelora.decode.fast_greedy import greedy_on_device, on_device

        if on_device(task):
            return [Hypothesis(*row) for row in greedy_on_device(task, options.sync_every)]
    return task.run()
