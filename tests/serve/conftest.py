"""Fixtures of the server tests: a tiny expert set (six languages), six 1 s clips, and each clip's
expected transcript (decoded alone, on a model of its own)."""

from __future__ import annotations

from pathlib import Path

import pytest
from reference.serving import KINDS, LANGS, make_engine, write_clip


@pytest.fixture(scope="session")
def expert_set(tmp_path_factory) -> Path:
    from reference.expert_sets import make_expert_set

    return make_expert_set(tmp_path_factory.mktemp("set") / "set", langs=LANGS, scale=0.5)


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("clips")
    return [write_clip(root / f"{kind}.wav", kind) for kind in KINDS]


@pytest.fixture(scope="session")
def expected(expert_set):
    """expected(clip, lang, task): the clip decoded alone with decode_requests, on a model of
    its own (the server's model is never touched), with the server's settings."""
    from babelora.decode.routing import adapter_batch_hook
    from babelora.decode.runner import Request, decode_requests

    engine = make_engine(expert_set)
    cache: dict[tuple, str] = {}

    def get(clip: Path, lang: str, task: str = "asr") -> str:
        key = (str(clip), lang, task)
        if key not in cache:
            req = Request("x", str(clip), lang, task, "en" if task == "st" else None)
            hook = adapter_batch_hook(engine.adapter)
            res = decode_requests(
                engine.handle, [req], engine.decode_options, engine.runner_options, hook
            )[0]
            assert res.error is None, res.error
            cache[key] = res.hypothesis
        return cache[key]

    return get


@pytest.fixture(scope="session")
def expected_segments(expert_set):
    """expected_segments(clip, lang): the clip decoded alone long-form with timestamps (what
    srt, vtt and verbose_json report), on a model of its own, with the server's settings."""
    from babelora.decode.longform import transcribe_long
    from babelora.decode.routing import adapter_batch_hook
    from babelora.decode.runner import Request

    engine = make_engine(expert_set)

    def get(clip: Path, lang: str) -> list[dict]:
        res = transcribe_long(
            engine.handle,
            [Request("x", str(clip), lang)],
            engine.decode_options,
            engine.runner_options,
            engine.longform_options,
            adapter_batch_hook(engine.adapter),
        )[0]
        assert res.error is None, res.error
        return res.extra["segments"]

    return get
