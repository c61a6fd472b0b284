"""Fuzzing (hypothesis, bounded): readers fail only with their documented errors."""

from __future__ import annotations

import contextlib
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference.config_schema import Outer

from babelora.config import apply_overrides, build_dataclass, read_yaml
from babelora.data.audio import load_audio
from babelora.data.manifest import read_manifest
from babelora.errors import AudioError, ConfigError, ManifestError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
FIELDS = [
    "id",
    "audio_filepath",
    "duration",
    "lang",
    "task",
    "text",
    "translation",
    "target_lang",
    "segments",
    "wav",
    "key",
]


@FUZZ
@given(
    rows=st.lists(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8), max_size=4),
    junk=st.binary(max_size=40),
)
def test_manifest_reader(tmp_path_factory, rows, junk):
    path = tmp_path_factory.mktemp("m") / "m.jsonl"
    text = "\n".join(json.dumps(r) for r in rows) + "\n" + junk.decode("utf-8", "replace")
    path.write_text(text, encoding="utf-8")
    with contextlib.suppress(ManifestError):
        read_manifest(path)
    errors: list = []
    read_manifest(path, errors=errors)  # collecting mode never raises for bad lines
    assert all(isinstance(e, ManifestError) for e in errors)


@FUZZ
@given(data=st.binary(max_size=400), header=st.sampled_from([b"", b"RIFF", b"fLaC", b"OggS"]))
def test_audio_loader(tmp_path_factory, data, header):
    path = tmp_path_factory.mktemp("a") / "x.wav"
    path.write_bytes(header + data)
    try:
        wave = load_audio(path)
        assert wave.dtype == np.float32 and np.isfinite(wave).all() and wave.size > 0
    except AudioError:
        pass


@FUZZ
@given(text=st.text(max_size=200), overrides=st.lists(st.text(max_size=20), max_size=3))
def test_config_loader(tmp_path_factory, text, overrides):
    path = tmp_path_factory.mktemp("c") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        data = read_yaml(path)
        apply_overrides(data, overrides)
        build_dataclass(Outer, data)
    except ConfigError:
        pass
