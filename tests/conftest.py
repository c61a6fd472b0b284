"""Shared fixtures: tiny random Whisper, the real tiny.en (session-cached), speech files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/reference importable
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_handle():
    """A tiny random-weight Whisper with the tiny.en tokenizer (shared: do not modify)."""
    from babelora.models.whisper import tiny_random_whisper

    return tiny_random_whisper(seed=0)


@pytest.fixture(scope="session")
def real_handle():
    """The real offline Whisper tiny.en, named (the default, base, is slower; do not modify)."""
    from babelora.models.whisper import load_whisper

    return load_whisper("tiny.en")


@pytest.fixture
def tone_wav(tmp_path):
    """Factory: write a short sine/noise WAV and return its path."""
    import soundfile as sf

    def make(seconds: float = 1.0, sr: int = 16000, channels: int = 1, name: str = "a.wav"):
        rng = np.random.default_rng(0)
        t = np.arange(int(seconds * sr)) / sr
        wave = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)
        data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
        path = tmp_path / name
        sf.write(str(path), data.astype(np.float32), sr)
        return path

    return make


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; each in-process run starts from a clean slate."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """A tiny two-language train/dev corpus (tests/reference/corpus.py)."""
    from reference.corpus import write_corpus

    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root)
    write_corpus(root, {"de": 2, "fr": 2}, seed=1, name="dev")
    return root


CACHE_KEY = pytest.StashKey[tuple]()  # (BABELORA_CACHE before the session, the session's folder)


def pytest_configure(config):
    """Point babelora's cache (`BABELORA_CACHE`: the language-id model, ...) at a temporary
    folder for the session, before any test module is imported (some build a subprocess
    environment from os.environ at import), so tests never write to ~/.cache/babelora."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="babelora-cache-")
    config.stash[CACHE_KEY] = (os.environ.get("BABELORA_CACHE"), folder)
    os.environ["BABELORA_CACHE"] = folder


def pytest_unconfigure(config):
    import shutil

    if CACHE_KEY not in config.stash:
        return
    before, folder = config.stash[CACHE_KEY]
    shutil.rmtree(folder, ignore_errors=True)
    if before is None:
        os.environ.pop("BABELORA_CACHE", None)
    else:
        os.environ["BABELORA_CACHE"] = before
