"""How the decode runner batches utterances and feeds them to the encoder (`RunnerOptions`).

Its own module, free of torch, so that the command line can show these defaults without
importing the decoder (babelora.decode.runner re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunnerOptions:
    """How utterances are batched and fed to the encoder."""

    batch_seconds: float = 120.0  # input seconds per batch (after padding)
    max_batch_size: int = 32
    pad_to_30s: bool = False  # exact original Whisper input (slow for short audio)
    min_input_seconds: float = 10.0  # pad shorter clips with silence up to this length
    tail_seconds: float = 0.5  # silence appended after each clip
    length_bucket_seconds: float = 2.0  # input lengths are rounded up to a multiple of this
    max_chunks: int = 20  # refuse audio longer than this many 30 s windows
    show_progress: bool = True
