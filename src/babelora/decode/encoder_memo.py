"""Encoder states by input, so that a clip's encoder runs once where two passes read it.

Language-agnostic decoding reads every clip twice: Whisper's LID (encoder + one decoder step)
and then the decoding in the predicted language. Both feed the encoder the same log-mel rows
(`runner.features_for`, one input policy), and on a CPU the encoder is most of the work of a
short clip. `EncoderMemo` wraps an encoder's `forward`: each row is keyed by a digest of its
log-mel values (shape, dtype and bytes), rows seen before are served from the memo and the rest
run through the encoder as one sub-batch. A key names the input only, so the memo is valid
only while the encoder's function does not change: `serves_both_passes` says when an expert set
(which the LID switches off) leaves the encoder alone. Forward hooks on the encoder (MGRF) still
run on every call, on the memoised states.

States are kept on the CPU up to `max_bytes` (then later rows are encoded but not kept).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB: ~2,000 base-sized 10 s clips, ~270 large-v3 30 s clips


@dataclass
class EncoderOutput:
    """What WhisperModel.forward reads of an encoder output (`[0]`, hidden states, attentions)."""

    last_hidden_state: torch.Tensor
    hidden_states: None = None
    attentions: None = None

    def __getitem__(self, i: int) -> torch.Tensor:
        return (self.last_hidden_state,)[i]


def row_key(row: torch.Tensor) -> bytes:
    """Digest of one input row: its shape, dtype and values."""
    row = row.detach().cpu().contiguous()
    head = f"{tuple(row.shape)}|{row.dtype}".encode()
    return hashlib.blake2b(head + row.view(torch.uint8).numpy().tobytes(), digest_size=16).digest()


class EncoderMemo:
    """Encoder states per input row, shared by every call while installed (see module doc)."""

    def __init__(self, max_bytes: int | None = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.states: dict[bytes, torch.Tensor] = {}
        self.stored_bytes = 0
        self.hits = self.misses = 0

    def clear(self) -> None:
        self.states.clear()
        self.stored_bytes = 0

    def encode(self, original, input_features: torch.Tensor) -> EncoderOutput:
        """`original`'s last hidden states for `input_features`, memoised row by row."""
        keys = [row_key(r) for r in input_features]
        todo = [i for i, k in enumerate(keys) if k not in self.states]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        fresh: dict[int, torch.Tensor] = {}
        if todo:
            out = original(input_features[todo]).last_hidden_state
            for i, state in zip(todo, out):
                fresh[i] = state
                self._keep(keys[i], state)
        device = input_features.device
        rows = [fresh[i] if i in fresh else self.states[k].to(device) for i, k in enumerate(keys)]
        return EncoderOutput(torch.stack(rows))

    def _keep(self, key: bytes, state: torch.Tensor) -> None:
        size = state.numel() * state.element_size()
        if self.max_bytes is not None and self.stored_bytes + size > self.max_bytes:
            return
        self.states[key] = state.detach().to("cpu", copy=True)
        self.stored_bytes += size

    def install(self, encoder: torch.nn.Module) -> None:
        """Serve `encoder`'s plain calls (`encoder(input_features)`) from this memo."""
        if getattr(encoder.forward, "memo", None) is self:
            return
        original = encoder.forward
        memo = self

        def forward(input_features: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if args or kwargs:  # masks, attentions, hidden states: not what the memo holds
                return original(input_features, *args, **kwargs)
            return memo.encode(original, input_features)

        forward.memo = memo  # type: ignore[attr-defined]
        forward.original = original  # type: ignore[attr-defined]
        encoder.forward = forward

    @staticmethod
    def uninstall(encoder: torch.nn.Module) -> None:
        """Give `encoder` its own forward back (no-op when no memo is installed)."""
        original = getattr(encoder.forward, "original", None)
        if original is not None:
            encoder.forward = original


@contextmanager
def memoised_encoder(
    model: torch.nn.Module, max_bytes: int | None = DEFAULT_MAX_BYTES
) -> Iterator[EncoderMemo]:
    """Inside the block, `model`'s encoder runs once per distinct input row."""
    encoder = model.get_encoder()
    memo = EncoderMemo(max_bytes)
    memo.install(encoder)
    try:
        yield memo
    finally:
        EncoderMemo.uninstall(encoder)


def serves_both_passes(model: torch.nn.Module, adapter=None) -> bool:
    """Whether the encoder computes the same function for the LID (expert set switched off) and
    for decoding (switched on): true unless an expert layer lives inside the encoder."""
    if adapter is None:
        return True
    inside = {id(m) for m in model.get_encoder().modules()}
    return not any(id(layer) in inside for layer in adapter.layers.values())
