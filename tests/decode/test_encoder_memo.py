"""The encoder memo (babelora.decode.encoder_memo): memoised states equal the live encoder's, each
distinct row is encoded once, the byte cap keeps nothing beyond it, forward hooks (MGRF) still
run, and it is used only when the LID and the decoding see the same encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from babelora.adapters import LoRAConfig, inject, language_experts
from babelora.decode.encoder_memo import EncoderMemo, memoised_encoder, serves_both_passes
from babelora.decode.runner import RunnerOptions, features_for
from babelora.models.whisper import tiny_random_whisper

OPTS = RunnerOptions(show_progress=False)


def clips(n: int, seed: int = 0) -> torch.Tensor:
    """n log-mel rows of one input length (different noise each)."""
    rng = np.random.default_rng(seed)
    waves = [0.1 * rng.standard_normal(16000).astype(np.float32) for _ in range(n)]
    return features_for(waves, 80, OPTS)


def counted(encoder: torch.nn.Module) -> list[int]:
    """Wrap the encoder's own forward to record how many rows each call encodes."""
    calls: list[int] = []
    original = encoder.forward

    def forward(input_features, *args, **kwargs):
        calls.append(int(input_features.shape[0]))
        return original(input_features, *args, **kwargs)

    encoder.forward = forward
    return calls


@torch.no_grad()
def test_memo_serves_the_live_encoders_states_and_encodes_each_row_once():
    handle = tiny_random_whisper(seed=0)
    encoder = handle.model.get_encoder()
    feats = clips(4)
    live = encoder(feats).last_hidden_state
    calls = counted(encoder)
    with memoised_encoder(handle.model) as memo:
        first = encoder(feats[[0, 1]]).last_hidden_state  # two new rows
        mixed = encoder(feats[[3, 1, 0, 2]]).last_hidden_state  # two seen, two new
        again = encoder(feats).last_hidden_state  # all seen
    assert calls == [2, 2]  # rows 3 and 2 were the only new ones in the second call
    assert (memo.hits, memo.misses) == (2 + 4, 4)
    torch.testing.assert_close(first, live[[0, 1]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed, live[[3, 1, 0, 2]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, live, rtol=1e-5, atol=1e-5)
    encoder(feats)  # after the block: the encoder's own forward again, no memo
    assert calls == [2, 2, 4]


@torch.no_grad()
def test_a_changed_input_is_a_new_row():
    """The key is the row's values: one changed value is encoded, not served stale."""
    handle = tiny_random_whisper(seed=0)
    encoder = handle.model.get_encoder()
    feats = clips(1)
    other = feats.clone()
    other[0, 3, 7] += 0.5
    with memoised_encoder(handle.model) as memo:
        a = encoder(feats).last_hidden_state
        b = encoder(other).last_hidden_state
        assert memo.misses == 2 and memo.hits == 0
    assert not torch.equal(a, b)
    torch.testing.assert_close(b, encoder(other).last_hidden_state, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_byte_cap_keeps_nothing_beyond_it():
    handle = tiny_random_whisper(seed=0)
    encoder = handle.model.get_encoder()
    feats = clips(3)
    live = encoder(feats).last_hidden_state
    one_row = live[0].numel() * live.element_size()
    with memoised_encoder(handle.model, max_bytes=one_row) as memo:
        encoder(feats)
        out = encoder(feats).last_hidden_state
        assert len(memo.states) == 1 and memo.stored_bytes == one_row
        assert (memo.hits, memo.misses) == (1, 5)
    torch.testing.assert_close(out, live, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_forward_hooks_still_run_on_memoised_states():
    """MGRF-style modules run by a forward hook on the encoder's output apply at every call."""
    handle = tiny_random_whisper(seed=0)
    encoder = handle.model.get_encoder()
    feats = clips(2)
    live = encoder(feats).last_hidden_state
    hook = encoder.register_forward_hook(lambda m, i, out: type(out)(out.last_hidden_state + 1))
    try:
        with memoised_encoder(handle.model) as memo:
            encoder(feats)
            out = encoder(feats).last_hidden_state
            assert memo.hits == 2
    finally:
        hook.remove()
    torch.testing.assert_close(out, live + 1, rtol=1e-5, atol=1e-5)


def test_plain_calls_only():
    """A call with more than the features (masks, hidden states) goes to the encoder itself."""
    handle = tiny_random_whisper(seed=0)
    encoder = handle.model.get_encoder()
    feats = clips(1)
    calls = counted(encoder)
    with torch.no_grad(), memoised_encoder(handle.model) as memo:
        encoder(feats, attention_mask=None)
        encoder(feats, attention_mask=None)
        assert calls == [1, 1] and memo.hits == memo.misses == 0


@pytest.mark.parametrize(
    ("targets", "serves"),
    [(("whisper-decoder",), True), (("whisper-all",), False), (("whisper-encoder",), False)],
)
def test_serves_both_passes_only_without_experts_in_the_encoder(targets, serves):
    """The LID switches an expert set off; experts inside the encoder would change its states
    between the two passes."""
    handle = tiny_random_whisper(seed=0)
    assert serves_both_passes(handle.model, None)
    cfg = language_experts(LoRAConfig(rank=2, alpha=4.0, targets=targets), ("de", "fr"))
    adapter = inject(handle.model, cfg)
    assert serves_both_passes(handle.model, adapter) is serves


def test_install_twice_wraps_once():
    handle = tiny_random_whisper(seed=0)
    encoder = handle.model.get_encoder()
    memo = EncoderMemo()
    memo.install(encoder)
    wrapped = encoder.forward
    memo.install(encoder)
    assert encoder.forward is wrapped
    EncoderMemo.uninstall(encoder)
    assert getattr(encoder.forward, "memo", None) is None
