"""A small reader for gettext `.po` catalogs (the human translations shipped inside Django).

Only what the corpus needs: `msgctxt`, `msgid`, `msgid_plural`, `msgstr`/`msgstr[n]`, the
`fuzzy` flag and the line of each `msgid`. Obsolete entries (`#~`) are skipped. We read the
`.po` text rather than the compiled `.mo` so that fuzzy entries and contexts stay visible.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from babelora.errors import ManifestError

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
_KEYWORD = re.compile(r"^(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s+(\".*\")\s*$")


@dataclass
class PoEntry:
    """One catalog entry; `msgstr_plural` holds the plural forms (empty for singular entries)."""

    msgid: str
    msgstr: str = ""
    msgctxt: str | None = None
    msgid_plural: str | None = None
    msgstr_plural: list[str] = field(default_factory=list)
    fuzzy: bool = False
    line: int = 0


def _unquote(raw: str, where: str) -> str:
    raw = raw.strip()
    if len(raw) < 2 or raw[0] != '"' or raw[-1] != '"':
        raise ManifestError(f"{where}: expected a quoted string, got {raw[:40]!r}")
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), raw[1:-1])


def read_po(path: str | Path) -> list[PoEntry]:
    """Parse a `.po` file into entries (the header entry with an empty msgid is dropped)."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        return parse_po(f, str(path))


def parse_po(lines: Iterable[str], name: str) -> list[PoEntry]:
    """Parse the lines of a `.po` catalog (e.g. one read from inside a wheel); `name` is the
    file named in error messages."""
    entries: list[PoEntry] = []
    cur: dict = {}
    key: str | int | None = None
    last_word = ""
    flags: set[str] = set()

    def flush() -> None:
        nonlocal cur, key, flags, last_word
        if "msgid" in cur and cur["msgid"]:
            plural = [cur[k] for k in sorted(k for k in cur if isinstance(k, int))]
            entries.append(
                PoEntry(
                    msgid=cur["msgid"],
                    msgstr=cur.get("msgstr", plural[0] if plural else ""),
                    msgctxt=cur.get("msgctxt"),
                    msgid_plural=cur.get("msgid_plural"),
                    msgstr_plural=plural,
                    fuzzy="fuzzy" in flags,
                    line=cur["line"],
                )
            )
        cur, key, flags, last_word = {}, None, set(), ""

    for lineno, text in enumerate(lines, 1):
        line = text.strip()
        where = f"{name}:{lineno}"
        if not line:
            flush()
            continue
        if line.startswith("#"):
            if line.startswith("#~"):
                continue
            if "msgid" in cur:  # a comment after an entry starts the next one
                flush()
            if line.startswith("#,"):
                flags |= {f.strip() for f in line[2:].split(",")}
            continue
        if line.startswith('"'):
            if key is None:
                raise ManifestError(f"{where}: string continuation outside an entry")
            cur[key] += _unquote(line, where)
            continue
        m = _KEYWORD.match(line)
        if not m:
            raise ManifestError(f"{where}: cannot parse {line[:60]!r}")
        word, index, value = m.group(1), m.group(2), _unquote(m.group(3), where)
        if word in ("msgctxt", "msgid") and last_word.startswith("msgstr"):
            flush()  # no blank line between two entries
        key = int(index) if index is not None else word
        last_word = word
        cur[key] = value
        if word == "msgid":
            cur["line"] = lineno
    flush()
    return entries
