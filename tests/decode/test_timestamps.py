"""Whisper's timestamp rules and segment splitting against simple references.

The reference rules are openai/whisper's `ApplyTimestampRules.apply`, transcribed literally
(per row, on logits, log-softmax after masking); babelora's filter works on log-probs without
renormalising, which must give the same banned set and the same surviving values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from babelora.decode.search import DecodeOptions, DecodingTask, WhisperStepDecoder
from babelora.decode.timestamps import (
    RawSegment,
    TimestampRules,
    TimestampTokens,
    split_segments,
    suppress_mask_with_timestamps,
)

TOKENS = TimestampTokens(eot=10, no_timestamps=15, vocab=40)  # timestamps 16..39
BEGIN = TOKENS.timestamp_begin


def reference_rules(logits: torch.Tensor, seqs, max_initial_index: int | None) -> torch.Tensor:
    """openai/whisper ApplyTimestampRules.apply (sample_begin = 0: seqs hold no prompt)."""
    logits = logits.clone()
    logits[:, TOKENS.no_timestamps] = -np.inf
    for k, seq in enumerate(seqs):
        sampled = torch.tensor(seq, dtype=torch.long)
        last_was_timestamp = len(seq) >= 1 and seq[-1] >= BEGIN
        penultimate_was_timestamp = len(seq) < 2 or seq[-2] >= BEGIN
        if last_was_timestamp:
            if penultimate_was_timestamp:
                logits[k, BEGIN:] = -np.inf
            else:
                logits[k, : TOKENS.eot] = -np.inf
        timestamps = sampled[sampled.ge(BEGIN)]
        if timestamps.numel() > 0:
            if last_was_timestamp and not penultimate_was_timestamp:
                timestamp_last = timestamps[-1]
            else:
                timestamp_last = timestamps[-1] + 1
            logits[k, BEGIN:timestamp_last] = -np.inf
    for k, seq in enumerate(seqs):  # whisper checks the batch's length; rows here may differ
        if len(seq) == 0:
            logits[k, :BEGIN] = -np.inf
            if max_initial_index is not None:
                logits[k, BEGIN + max_initial_index + 1 :] = -np.inf
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    for k in range(len(seqs)):
        timestamp_logprob = logprobs[k, BEGIN:].logsumexp(dim=-1)
        max_text_token_logprob = logprobs[k, :BEGIN].max()
        if timestamp_logprob > max_text_token_logprob:
            logits[k, :BEGIN] = -np.inf
    return logits


def _random_seq(rng: np.random.Generator) -> list[int]:
    """A sequence obeying the rules so far: text, pairs, increasing timestamps."""
    length = int(rng.integers(0, 8))
    seq, last_stamp = [], BEGIN - 1
    for _ in range(length):
        if rng.random() < 0.4 and last_stamp < TOKENS.vocab - 2:
            last_stamp = int(rng.integers(last_stamp + 1, TOKENS.vocab - 1))
            seq.append(last_stamp)
        else:
            seq.append(int(rng.integers(0, TOKENS.eot)))
    return seq


@pytest.mark.parametrize("max_initial", [None, 0.02, 0.1])
def test_rules_match_openai_whisper(max_initial):
    rng = np.random.default_rng(0)
    rules = TimestampRules(TOKENS, max_initial)
    index = None if max_initial is None else int(round(max_initial / 0.02))
    forced = 0
    for trial in range(60):
        rows = 6
        scale = 4.0 if trial % 2 else 0.5  # peaked and flat distributions
        logits = torch.randn(rows, TOKENS.vocab, generator=torch.Generator().manual_seed(trial))
        logits = logits * scale
        if trial % 3 == 0:
            logits[:, BEGIN:] += 3.0  # timestamps likely: the sum rule fires
        seqs = [_random_seq(rng) for _ in range(rows)]
        seqs[0] = []
        want = reference_rules(logits, seqs, index)
        got = rules(torch.log_softmax(logits, dim=-1), seqs)
        assert torch.equal(torch.isinf(got), torch.isinf(want)), (trial, seqs)
        keep = ~torch.isinf(want)
        shift = torch.logsumexp(logits, dim=-1, keepdim=True)  # log_softmax's constant
        torch.testing.assert_close(got[keep], (want - shift)[keep])
        forced += int(torch.isinf(want[:, :BEGIN]).all(dim=-1).sum())
    assert forced > 15  # the timestamp-sum rule and the first-token rule were exercised


def test_rules_keep_timestamps_well_formed_in_a_real_search(tiny_handle):
    """Greedy decoding of a random model under the rules: first token a timestamp within the
    initial limit, timestamps in pairs and never decreasing, no <|notimestamps|>."""
    handle = tiny_handle
    stamps = TimestampTokens.of(handle)
    rules = TimestampRules(stamps, 1.0)
    enc = torch.randn(3, 40, 64, generator=torch.Generator().manual_seed(1))
    task = DecodingTask(
        decoder=WhisperStepDecoder(handle.model, enc),
        prompts=[[50257]] * 3,
        eot=stamps.eot,
        options=DecodeOptions(max_new_tokens=60, repetition_guard=0),
        suppress=suppress_mask_with_timestamps([], stamps),
        logit_filters=[rules],
    )
    with torch.no_grad():
        hyps = task.run()
    begin = stamps.timestamp_begin
    for hyp in hyps:
        seq = hyp.tokens
        assert seq and begin <= seq[0] <= begin + 50
        assert stamps.no_timestamps not in seq
        times = [t for t in seq if t >= begin]
        assert times == sorted(times)
        for i in range(1, len(seq)):
            if seq[i - 1] < begin <= seq[i] and i + 1 < len(seq):
                assert seq[i + 1] >= begin  # a closing timestamp is followed by an opening one
    assert any(len([t for t in h.tokens if t >= begin]) >= 2 for h in hyps)


def _t(seconds: float) -> int:
    return BEGIN + int(round(seconds / 0.02))


def test_split_complete_segments_and_seek_to_the_last_closing_timestamp():
    tokens = [_t(0), 1, 2, _t(0.2), _t(0.2), 3, _t(0.4), _t(0.4), 4]  # last one unfinished
    segments, seek = split_segments(tokens, TOKENS, seek=100, segment_frames=3000)
    assert segments == [
        RawSegment(1.0, 1.2, [_t(0), 1, 2, _t(0.2)]),
        RawSegment(1.2, 1.4, [_t(0.2), 3, _t(0.4)]),
    ]
    assert seek == 100 + 40  # 0.4 s = 20 timestamp steps = 40 mel frames


def test_split_single_timestamp_ending_moves_past_the_window():
    tokens = [_t(0), 1, _t(0.2), _t(0.3), 2, _t(0.4)]
    segments, seek = split_segments(tokens, TOKENS, seek=0, segment_frames=2500)
    assert [(s.start, s.end) for s in segments] == [(0.0, 0.2), (0.3, 0.4)]
    assert seek == 2500


def test_split_without_pairs_is_one_segment_of_the_window():
    segments, seek = split_segments([_t(0), 1, 2, _t(0.3)], TOKENS, seek=300, segment_frames=1000)
    assert segments == [RawSegment(3.0, 3.3, [_t(0), 1, 2, _t(0.3)])]
    assert seek == 1300
    segments, seek = split_segments([1, 2], TOKENS, seek=0, segment_frames=1000)
    assert segments == [RawSegment(0.0, 10.0, [1, 2])] and seek == 1000


def test_suppress_mask_allows_eot_and_timestamps_only_among_specials():
    mask = suppress_mask_with_timestamps([3, 99], TOKENS)
    assert mask[3] and not mask[4]
    assert not mask[TOKENS.eot] and mask[TOKENS.eot + 1 : BEGIN].all()
    assert not mask[BEGIN:].any()
