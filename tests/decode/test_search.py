"""Batched KV-cached greedy/beam search against slow full-prefix references."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from reference.naive_decode import naive_beam, naive_greedy

from babelora.decode.search import (
    DecodeOptions,
    DecodingTask,
    WhisperStepDecoder,
    generate,
    length_score,
    trailing_repeats,
)
from babelora.models.whisper import tiny_random_whisper

EOT = 50256
PROMPT = [50257, 50260, 50358, 50362]


@pytest.fixture(scope="module")
def model():
    """Tiny random Whisper with an EOT bias, so that rows end at different steps."""
    handle = tiny_random_whisper(seed=7)
    m = copy.deepcopy(handle.model)
    head = torch.nn.Linear(64, m.proj_out.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(m.proj_out.weight)
        head.bias.zero_()
        head.bias[EOT] = 0.72
    m.proj_out = head
    return m


def prompts(n):
    """Prompts of equal length with different language tokens (rows then differ)."""
    return [[50257, 50258 + i, 50358, 50362] for i in range(n)]


def _enc(model, batch, frames=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = 3 * torch.randn(batch, 80, frames, generator=g)
    with torch.no_grad():
        return model.get_encoder()(feats).last_hidden_state


def test_greedy_equals_full_prefix_reference(model):
    enc = _enc(model, 6)
    opts = DecodeOptions(max_new_tokens=15, repetition_guard=0)
    hyps = generate(model, enc, prompts(6), EOT, opts)
    lengths = set()
    for row, hyp in enumerate(hyps):
        assert hyp.tokens == naive_greedy(model, enc[row : row + 1], prompts(6)[row], EOT, opts)
        lengths.add(len(hyp.tokens))
    assert len(lengths) > 1, "rows should finish at different steps (compaction exercised)"


def test_batched_equals_one_at_a_time(model):
    enc = _enc(model, 4, seed=1)
    opts = DecodeOptions(max_new_tokens=12)
    batched = [h.tokens for h in generate(model, enc, prompts(4), EOT, opts)]
    single = [
        generate(model, enc[i : i + 1], [prompts(4)[i]], EOT, opts)[0].tokens for i in range(4)
    ]
    assert batched == single


@pytest.mark.parametrize("beam_size", [2, 4])
def test_beam_equals_reference(model, beam_size):
    enc = _enc(model, 3, seed=2)
    opts = DecodeOptions(beam_size=beam_size, max_new_tokens=8, repetition_guard=0)
    hyps = generate(model, enc, prompts(3), EOT, opts)
    for row, hyp in enumerate(hyps):
        assert hyp.tokens == naive_beam(model, enc[row : row + 1], prompts(3)[row], EOT, opts)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.5])
def test_beam_with_length_penalty_equals_reference(model, length_penalty):
    enc = _enc(model, 3, seed=3)
    opts = DecodeOptions(
        beam_size=3, max_new_tokens=10, repetition_guard=0, length_penalty=length_penalty
    )
    hyps = generate(model, enc, prompts(3), EOT, opts)
    for row, hyp in enumerate(hyps):
        assert hyp.tokens == naive_beam(model, enc[row : row + 1], prompts(3)[row], EOT, opts)


def test_length_score_is_whispers_rule():
    assert length_score(-6.0, 3, None) == pytest.approx(-2.0)  # mean log-prob per token
    assert length_score(-6.0, 7, 1.0) == pytest.approx(-6.0 / 2.0)  # ((5 + 7) / 6) ** 1
    assert length_score(-6.0, 7, 2.0) == pytest.approx(-6.0 / 4.0)
    assert length_score(-6.0, 7, 0.0) == -6.0  # no normalisation


def test_decoding_raises_no_deprecation_warning(model):
    """transformers deprecates `past_key_values` (a FutureWarning on every decoder call)."""
    enc = _enc(model, 2, seed=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        generate(model, enc, prompts(2), EOT, DecodeOptions(max_new_tokens=3))
        generate(model, enc, prompts(2), EOT, DecodeOptions(beam_size=2, max_new_tokens=3))


def test_row_hooks_follow_the_rows(model):
    """A hook that keeps per-row state sees every selection: it must end aligned with rows."""
    enc = _enc(model, 5, seed=4)
    state = {"rows": torch.arange(5)}
    calls = []

    def hook(rows):
        calls.append(len(rows))
        state["rows"] = state["rows"].index_select(0, rows)

    generate(model, enc, prompts(5), EOT, DecodeOptions(max_new_tokens=15), row_hooks=[hook])
    assert calls and all(c <= 5 for c in calls)
    state = {"rows": torch.arange(2)}
    generate(
        model,
        enc[:2],
        [PROMPT] * 2,
        EOT,
        DecodeOptions(beam_size=3, max_new_tokens=5),
        row_hooks=[hook],
    )
    assert calls[-1] == 6  # beams expanded: 2 utterances x 3 beams
    assert set(state["rows"].tolist()) <= {0, 1}


def test_special_tokens_never_emitted(model):
    enc = _enc(model, 2, seed=5)
    for hyp in generate(model, enc, [PROMPT] * 2, EOT, DecodeOptions(max_new_tokens=20)):
        assert all(t < EOT for t in hyp.tokens)


def test_repetition_guard_cuts_loops():
    assert trailing_repeats([1, 2, 3, 1, 2, 3, 1, 2, 3], 8) == (3, 3)
    assert trailing_repeats([5, 5, 5, 5], 8) == (1, 4)
    assert trailing_repeats([1, 2, 3], 8)[1] == 1
    from babelora.decode.search import _guard

    seq, fired = _guard([7, 1, 2, 1, 2, 1, 2, 1, 2], DecodeOptions(repetition_guard=3))
    assert fired and seq == [7, 1, 2]
    assert _guard([7, 1, 2, 1, 2], DecodeOptions(repetition_guard=3)) == ([7, 1, 2, 1, 2], False)


def test_no_repeat_ngram(model):
    enc = _enc(model, 2, seed=6)
    opts = DecodeOptions(max_new_tokens=30, no_repeat_ngram_size=2, repetition_guard=0)
    for hyp in generate(model, enc, [PROMPT] * 2, EOT, opts):
        grams = list(zip(hyp.tokens, hyp.tokens[1:]))
        assert len(grams) == len(set(grams))


def test_bad_calls(model):
    enc = _enc(model, 2)
    with pytest.raises(ValueError, match="same length"):
        generate(model, enc, [PROMPT, PROMPT[:2]], EOT)
    with pytest.raises(ValueError, match="prompts"):
        generate(model, enc, [PROMPT], EOT)
    with pytest.raises(ValueError, match="beam_size"):
        DecodeOptions(beam_size=0)
    with pytest.raises(ValueError, match="max_new must be >= 1"):
        DecodingTask(WhisperStepDecoder(model, enc[:1]), [PROMPT], EOT, max_new=0)
