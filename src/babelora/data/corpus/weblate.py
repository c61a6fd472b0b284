"""Weblate's own translation catalogs as a text source (`weblate/locale/<code>/LC_MESSAGES/
django.po`: about 3,500 messages, ~2,900 usable per language, GPL-3.0-or-later).

Weblate is not installed (its dependency tree is huge): the corpus reads the `.po` files
straight out of its wheel. Where the wheel comes from, in order:
- `--weblate PATH` (`CorpusConfig.weblate`): a wheel, a folder holding wheels, or an unpacked
  package (a folder with `weblate/locale/` or `locale/`);
- `<cache>/weblate/weblate-*.whl` (cache: $BABELORA_CACHE or ~/.cache/babelora), where
  `scripts/install_system_deps.sh` puts it with `pip download --no-deps weblate==VERSION`.
The newest wheel found wins; its name gives the version recorded in each pair's provenance.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from babelora.config import cache_dir
from babelora.data.corpus.pairs import TextPair, catalog_reject, tidy
from babelora.data.corpus.po import PoEntry, parse_po
from babelora.errors import DependencyError

VERSION = "5.14.3"
"""The version the install script downloads (the corpus reads any version it is given)."""
CODES = {"zh": "zh_Hans", "no": "nb"}
_WHEEL = re.compile(r"^weblate-(\d[^-]*)-.*\.whl$")


def install_hint() -> str:
    folder = cache_dir() / "weblate"
    return (
        f"download its wheel with `python -m pip download --no-deps weblate=={VERSION} -d "
        f"{folder}` (or run `bash scripts/install_system_deps.sh`), or pass --weblate PATH "
        "(a weblate wheel or unpacked package)"
    )


def _version_key(path: Path) -> tuple:
    m = _WHEEL.match(path.name)
    parts = re.split(r"[.+]", m.group(1)) if m else []
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


@dataclass(frozen=True)
class WeblateSource:
    """A located Weblate: a wheel (zip) or a folder whose `locale/` holds the catalogs."""

    path: Path
    version: str
    locale: str  # prefix of the locale folder: "weblate/locale" in a wheel

    def catalog(self, lang: str) -> str:
        code = CODES.get(lang, lang)
        return f"{self.locale}/{code}/LC_MESSAGES/django.po"

    @contextmanager
    def _open(self, name: str) -> Iterator[io.TextIOBase | None]:
        if self.path.is_file():
            with zipfile.ZipFile(self.path) as z:
                if name not in z.namelist():
                    yield None
                    return
                with z.open(name) as raw:
                    yield io.TextIOWrapper(raw, encoding="utf-8")
            return
        file = self.path / name
        if not file.is_file():
            yield None
            return
        with open(file, encoding="utf-8") as f:
            yield f

    def entries(self, lang: str) -> list[PoEntry]:
        """The catalog entries for `lang` (empty when Weblate has no catalog for it)."""
        name = self.catalog(lang)
        with self._open(name) as f:
            return [] if f is None else parse_po(f, f"{self.path}:{name}")


def find_weblate(path: str | Path | None = None) -> WeblateSource:
    """Locate Weblate's catalogs (see the module docstring); DependencyError saying how to get
    them when there are none."""
    where = Path(path).expanduser() if path else cache_dir() / "weblate"
    if where.is_file():
        if not zipfile.is_zipfile(where):
            raise DependencyError(f"--weblate {where}: not a wheel (zip) file; " + install_hint())
        m = _WHEEL.match(where.name)
        with zipfile.ZipFile(where) as z:
            if not any(n.startswith("weblate/locale/") for n in z.namelist()):
                raise DependencyError(f"{where}: no weblate/locale/ inside; " + install_hint())
        return WeblateSource(where, m.group(1) if m else "?", "weblate/locale")
    if where.is_dir():
        for locale in ("weblate/locale", "locale"):
            if (where / locale).is_dir():
                return WeblateSource(where, _folder_version(where), locale)
        wheels = sorted(where.glob("weblate-*.whl"), key=_version_key)
        if wheels:
            return find_weblate(wheels[-1])
    raise DependencyError(f"Weblate's catalogs were not found at {where}; " + install_hint())


def _folder_version(folder: Path) -> str:
    for info in sorted(folder.glob("weblate-*.dist-info")) + sorted(
        folder.parent.glob("weblate-*.dist-info")
    ):
        return info.name.removeprefix("weblate-").removesuffix(".dist-info")
    return "?"


def weblate_pairs(lang: str, path: str | Path | None = None) -> list[TextPair]:
    """Usable (English, X) pairs from Weblate's catalog for `lang`, through the same filters as
    Django's (`catalog_reject`); empty when Weblate has no catalog for `lang`."""
    src = find_weblate(path)
    pairs = []
    for entry in src.entries(lang):
        if catalog_reject(entry) is None:
            source = {
                "kind": "weblate",
                "catalog": src.catalog(lang),
                "line": entry.line,
                "package": f"weblate {src.version}",
            }
            pairs.append(TextPair(lang, tidy(entry.msgid), tidy(entry.msgstr), source))
    return pairs
