"""Fixtures for training tests: a fresh Accelerate state per test, tiny corpus and configs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # corpus.py, ddp_worker.py


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; each in-process run starts from a clean slate."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    from corpus import write_corpus

    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root)
    write_corpus(root, {"de": 2, "fr": 2}, seed=1, name="dev")
    return root
