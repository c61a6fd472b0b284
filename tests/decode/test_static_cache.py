"""The static-cache decoding path (static_cache, graphs, fast_greedy) equals the dynamic one
token for token: greedy and beam, rows ending by EOT / repetition guard / token limit, compacted
buckets, and mixed-language expert batches routed per row."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from babelora.adapters import LoRAConfig, inject, language_experts
from babelora.decode.fast_greedy import greedy_on_device, guard_cut
from babelora.decode.search import (
    DecodeOptions,
    DecodingTask,
    Hypothesis,
    _guard,
    _suppress_mask,
    generate,
)
from babelora.decode.static_cache import StaticWhisperDecoder
from babelora.models.whisper import tiny_random_whisper

PROMPT = [50257, 50260, 50359, 50363]  # <|startoftranscript|><|xx|><|transcribe|><|notimestamps|>
LANGS = ("de", "fr")


def varied_model(seed: int = 0):
    """A tiny random Whisper whose rows end in all three ways within ~30 tokens: EOT (its
    embedding row, the padding row, is zero at init: give it weight), the repetition guard
    (small init: runaway repeats) and the token limit."""
    handle = tiny_random_whisper(seed=seed, init_std=0.1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        handle.model.proj_out.weight[handle.eot_id] = torch.randn(64, generator=g) * 0.4
    return handle


def experts_model(seed: int = 0):
    handle = varied_model(seed)
    adapter = inject(handle.model, language_experts(LoRAConfig(rank=4, alpha=8.0), LANGS))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handle.model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return handle, adapter


@pytest.fixture(scope="module")
def varied():
    return varied_model()


@pytest.fixture(scope="module")
def experts():
    return experts_model()


def encoder_states(rows: int, frames: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, frames, 64, generator=torch.Generator().manual_seed(seed))


def same(a, b) -> None:
    assert [h.tokens for h in a] == [h.tokens for h in b]
    assert [h.hit_guard for h in a] == [h.hit_guard for h in b]
    assert [h.logprob for h in a] == pytest.approx([h.logprob for h in b], abs=1e-3)


def ends(hyps, limit) -> set[str]:
    return {"guard" if h.hit_guard else "limit" if len(h.tokens) == limit else "eot" for h in hyps}


@pytest.mark.parametrize("sync_every", [1, 3, 8])
def test_static_greedy_equals_dynamic(varied, sync_every):
    handle = varied
    enc = encoder_states(16)
    opts = DecodeOptions(max_new_tokens=6)
    with torch.no_grad():
        dynamic = generate(handle.model, enc, [PROMPT] * 16, handle.eot_id, opts)
        static = generate(
            handle.model,
            enc,
            [PROMPT] * 16,
            handle.eot_id,
            replace(opts, kv_cache="static", sync_every=sync_every),
        )
    assert ends(dynamic, 6) == {"eot", "guard", "limit"}  # every way a row can end
    same(dynamic, static)


@pytest.mark.parametrize("beam_size", [2, 4])
def test_static_beam_equals_dynamic(varied, beam_size):
    handle = varied
    enc = encoder_states(5)
    opts = DecodeOptions(beam_size=beam_size, max_new_tokens=20)
    with torch.no_grad():
        dynamic = generate(handle.model, enc, [PROMPT] * 5, handle.eot_id, opts)
        static = generate(
            handle.model, enc, [PROMPT] * 5, handle.eot_id, replace(opts, kv_cache="static")
        )
    same(dynamic, static)


def test_host_greedy_over_static_decoder_equals_dynamic(varied):
    """An n-gram ban reads tokens on the host: the task's own greedy runs over the static
    decoder (rows leave through select), still equal."""
    handle = varied
    enc = encoder_states(8)
    opts = DecodeOptions(max_new_tokens=25, no_repeat_ngram_size=2)
    with torch.no_grad():
        dynamic = generate(handle.model, enc, [PROMPT] * 8, handle.eot_id, opts)
        static = generate(
            handle.model, enc, [PROMPT] * 8, handle.eot_id, replace(opts, kv_cache="static")
        )
    same(dynamic, static)


def _task(handle, decoder, rows, options, hooks=()):
    vocab = handle.model.proj_out.out_features
    return DecodingTask(
        decoder=decoder,
        prompts=[PROMPT] * rows,
        eot=handle.eot_id,
        options=options,
        row_hooks=hooks,
        max_new=options.max_new_tokens,
        suppress=_suppress_mask(handle.model, vocab, handle.eot_id, torch.device("cpu")),
        blank=[220, handle.eot_id],
    )


def _bucketed(handle, enc, options, sync_every=2, hooks=()):
    """Greedy on the device with buckets (as graphs use them): finished rows compacted into
    smaller, padded buckets, the padding rows run but never read."""
    rows = enc.shape[0]
    decoder = StaticWhisperDecoder(
        handle.model, enc, len(PROMPT) + options.max_new_tokens, buckets=(2, 4, 8)
    )
    task = _task(handle, decoder, rows, options, hooks)
    return [Hypothesis(*row) for row in greedy_on_device(task, sync_every)], decoder


def test_compacted_buckets_equal_dynamic(varied):
    handle = varied
    enc = encoder_states(12)
    opts = DecodeOptions(max_new_tokens=30)
    with torch.no_grad():
        dynamic = generate(handle.model, enc, [PROMPT] * 12, handle.eot_id, opts)
        static, decoder = _bucketed(handle, enc, opts)
    assert decoder.bucket < 12  # it did compact
    same(dynamic, static)


def _mixed(handle, adapter, enc, opts, bucketed=False):
    langs = [LANGS[i % 2] for i in range(enc.shape[0])]
    langs[-1] = None  # a row without language experts (base) in the same batch
    adapter.set_routing(langs=langs, decoding=True)
    hooks = [adapter.context.reorder]
    with torch.no_grad():
        if bucketed:
            return _bucketed(handle, enc, opts, hooks=hooks)[0]
        prompts = [PROMPT] * enc.shape[0]
        return generate(handle.model, enc, prompts, handle.eot_id, opts, hooks)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_mixed_language_experts_static_equals_dynamic(experts, beam_size):
    handle, adapter = experts
    enc = encoder_states(7)
    opts = DecodeOptions(beam_size=beam_size, max_new_tokens=12)
    dynamic = _mixed(handle, adapter, enc, opts)
    static = _mixed(handle, adapter, enc, replace(opts, kv_cache="static", sync_every=2))
    same(dynamic, static)
    adapter.context.clear()
    with torch.no_grad(), adapter.disabled():  # the experts act: the bare base differs
        base = generate(handle.model, enc, [PROMPT] * 7, handle.eot_id, opts)
    assert [h.tokens for h in base] != [h.tokens for h in dynamic]
    if beam_size == 1:
        bucketed = _mixed(handle, adapter, enc, opts, bucketed=True)
        same(dynamic, bucketed)  # routing rows padded and compacted with the cache rows


def test_guard_cut_equals_host_guard():
    """The device repetition guard fires at the same token and cuts the same length as
    search._guard, on random sequences with planted repeats."""
    rnd = random.Random(0)
    options = DecodeOptions(repetition_guard=2, max_ngram=5)
    for _ in range(200):
        seq: list[int] = []
        fired_at = None
        while len(seq) < 40 and fired_at is None:
            if rnd.random() < 0.3 and seq:
                n = rnd.randint(1, 6)
                seq.extend(seq[-n:] * rnd.randint(1, 3))
            else:
                seq.append(rnd.randint(0, 3))
            seq = seq[:40]
            for t in range(1, len(seq) + 1):
                cut, fired = _guard(seq[:t], options)
                if fired:
                    fired_at, want = t, len(cut)
                    break
        tokens = torch.tensor([seq + [-5] * (40 - len(seq))])
        for t in range(len(seq) if fired_at is None else fired_at):
            got, length = guard_cut(tokens, torch.tensor([t]), 2, 5)
            if fired_at is not None and t == fired_at - 1:
                assert bool(got[0]) and int(length[0]) == want
            else:
                assert not bool(got[0]), (seq, t)


@pytest.mark.slow
def test_compiled_step_equals_dynamic():
    handle = varied_model()
    enc = encoder_states(4)
    opts = DecodeOptions(max_new_tokens=12)
    with torch.no_grad():
        dynamic = generate(handle.model, enc, [PROMPT] * 4, handle.eot_id, opts)
        static = generate(
            handle.model,
            enc,
            [PROMPT] * 4,
            handle.eot_id,
            replace(opts, kv_cache="static", graphs="compile"),
        )
    same(dynamic, static)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_captured_steps_replay_for_the_next_batch_of_that_shape(experts, monkeypatch, beam_size):
    """A captured step replays for every later batch of its shape, so it must read and write
    only what outlives the batch that captured it. CPU stand-in for a CUDA graph: "capture"
    keeps the capturing batch's closure and a replay calls it (a stale reference to that
    batch's state then decodes the next batch wrongly, as a stale address does on a GPU)."""
    from babelora.decode import graphs, static_cache

    monkeypatch.setattr(static_cache, "resolve_graphs", lambda mode, device: "cuda")
    monkeypatch.setattr(graphs.GraphRunner, "_capture", lambda self, fn, mode, restore: fn)
    handle, adapter = experts
    static_cache._POOLS.pop(handle.model, None)
    opts = DecodeOptions(beam_size=beam_size, max_new_tokens=20)
    for seed in (1, 2, 3):  # three batches of one shape, different audio
        enc = encoder_states(9, seed=seed)
        dynamic = _mixed(handle, adapter, enc, opts)
        static = _mixed(handle, adapter, enc, replace(opts, kv_cache="static", graphs="cuda"))
        same(dynamic, static)
    runners = [e.runner for e in static_cache._POOLS[handle.model].values()]
    assert sum(r.captures for r in runners) >= 1 and not any(r.failed for r in runners)
    static_cache._POOLS.pop(handle.model, None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("beam_size", [1, 3])
def test_cuda_graphs_equal_dynamic(beam_size):
    handle, adapter = experts_model()
    handle.model.cuda()
    enc = encoder_states(9).cuda()
    opts = DecodeOptions(beam_size=beam_size, max_new_tokens=20)
    dynamic = _mixed(handle, adapter, enc, opts)
    static = _mixed(handle, adapter, enc, replace(opts, kv_cache="static", graphs="cuda"))
    same(dynamic, static)
    again = _mixed(handle, adapter, enc, replace(opts, kv_cache="static", graphs="cuda"))
    same(dynamic, again)  # graphs captured by the first batch replay for the second
    other = encoder_states(9, seed=2).cuda()  # and for a batch of other audio
    want = _mixed(handle, adapter, other, opts)
    same(want, _mixed(handle, adapter, other, replace(opts, kv_cache="static", graphs="cuda")))
