"""Fish Fillets NG's dialogue scripts: parallel text, and the transcripts of its voice packs.

The game (Debian `fillets-ng-data`, GPL-2.0-or-later) keeps each level's lines in
`script/<level>/dialogs_<lang>.lua` (and `script/share/<kind>_dialogs_<lang>.lua`):

    dialogId("let-m-divna", "font_small", "What kind of strange ship is that?")
    dialogStr("Wat is dit voor raar schip?")

`dialogId` gives the line's id, its font (who says it: `font_small` the small fish,
`font_big` the big one) and the English text; `dialogStr` the translation. Voice packs
(`fillets-ng-data-nl`, `-cs`) hold `sound/<level>/<lang>/<id>.ogg` for the spoken lines.

Real-speech split: a line belongs to the human-speech *train* split when a hash of its English
text falls below `REAL_TRAIN_FRACTION`, else to *test*, in every language (`real_split`). The
text source (`fillets_pairs`) gives only train-split lines, so synthetic training text never
contains a line of the human-speech test set. Dialogue "..." (a spoken pause) becomes "…"
before the catalog filters, which reject "..." in UI strings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from babelora.data.corpus.debian import apt_hint, package_version
from babelora.data.corpus.pairs import TextPair, catalog_reject, norm
from babelora.data.corpus.po import PoEntry
from babelora.data.corpus.splits import unit_hash
from babelora.errors import DependencyError, ManifestError

DATA_ROOT = Path("/usr/share/games/fillets-ng")
PACKAGE = "fillets-ng-data"
REAL_TRAIN_FRACTION = 0.3
SPEAKERS = {"font_small": "small-fish", "font_big": "big-fish"}
_CALL = re.compile(r"(?m)^[ \t]*(dialogId|dialogStr)[ \t]*\(")
_ESC = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
_SCRIPT = re.compile(r"^(?:.*_)?dialogs_([a-z]{2}(?:_[A-Z]{2})?)\.lua$")


@dataclass(frozen=True)
class Dialog:
    """One scripted line: id, font (speaker), English text, translation, where it was read."""

    id: str
    font: str
    english: str
    text: str | None
    script: str  # relative to the data root: script/airplane/dialogs_nl.lua
    line: int

    @property
    def level(self) -> str:
        return Path(self.script).parent.name


def data_root(root: str | Path | None = None) -> Path:
    """The game's data folder: `root`, $BABELORA_FILLETS or Debian's; DependencyError when its
    scripts are not there."""
    where = Path(root or os.environ.get("BABELORA_FILLETS") or DATA_ROOT).expanduser()
    if not (where / "script").is_dir():
        raise DependencyError(
            f"Fish Fillets NG's dialogue scripts were not found under {where}/script; "
            + apt_hint([PACKAGE])
        )
    return where


def _skip_space(text: str, pos: int) -> int:
    """Past whitespace, commas and `--` comments (to the end of their line)."""
    while pos < len(text):
        if text[pos] in " \t\r\n,":
            pos += 1
        elif text.startswith("--", pos):
            end = text.find("\n", pos)
            pos = len(text) if end < 0 else end
        else:
            break
    return pos


def _string(text: str, pos: int, where: str) -> tuple[str, int]:
    """The Lua string literal at `pos` (escapes decoded) and the position after it."""
    quote, pos, out = text[pos], pos + 1, []
    while pos < len(text) and text[pos] != quote:
        if text[pos] == "\n":
            break
        if text[pos] == "\\" and pos + 1 < len(text):
            digits = re.match(r"\d{1,3}", text[pos + 1 : pos + 4])
            if digits:
                out.append(chr(int(digits.group())))
                pos += 1 + len(digits.group())
            else:
                out.append(_ESC.get(text[pos + 1], text[pos + 1]))
                pos += 2
            continue
        out.append(text[pos])
        pos += 1
    if pos >= len(text) or text[pos] != quote:
        raise ManifestError(f"{where}: unterminated string")
    return "".join(out), pos + 1


def _calls(text: str, name: str) -> Iterator[tuple[str, list[str], int]]:
    """(function, string arguments, line) of every dialogId/dialogStr call in a script; a call
    may span lines."""
    for m in _CALL.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        where = f"{name}:{line}"
        pos, args = m.end(), []
        while True:
            pos = _skip_space(text, pos)
            if pos < len(text) and text[pos] == ")":
                break
            if pos >= len(text) or text[pos] not in "\"'":
                got = text[pos : pos + 30].split("\n")[0]
                raise ManifestError(f"{where}: {m.group(1)}: expected a quoted string, got {got!r}")
            value, pos = _string(text, pos, where)
            args.append(value)
        yield m.group(1), args, line


def read_dialogs(path: str | Path, name: str | None = None) -> list[Dialog]:
    """Parse one `dialogs_<lang>.lua`; `name` is the script path recorded (default: `path`).
    ManifestError naming file and line for a call that does not parse or a `dialogStr` with no
    `dialogId` before it."""
    path = Path(path)
    name = name or str(path)
    out: list[Dialog] = []
    open_id: int | None = None  # index in `out` of a dialogId still waiting for its dialogStr
    text = path.read_text(encoding="utf-8")
    for func, args, line in _calls(text, str(path)):
        where = f"{path}:{line}"
        if func == "dialogId":
            if len(args) != 3:
                raise ManifestError(f"{where}: dialogId needs (id, font, text), got {args}")
            out.append(Dialog(args[0], args[1], args[2], None, name, line))
            open_id = len(out) - 1
        else:
            if len(args) != 1 or open_id is None:
                raise ManifestError(f"{where}: dialogStr without a dialogId before it")
            d = out[open_id]
            out[open_id] = Dialog(d.id, d.font, d.english, args[0], d.script, d.line)
            open_id = None
    return out


def scripts(lang: str, root: Path) -> list[Path]:
    """Every dialogue script of `lang` under `root/script`, in a stable order."""
    return sorted((root / "script").glob(f"**/*dialogs_{lang}.lua"))  # not dialogs_de_CH.lua


@lru_cache(maxsize=32)
def dialogs(lang: str, root: Path) -> tuple[Dialog, ...]:
    """All lines of `lang`'s scripts (with or without a translation)."""
    out: list[Dialog] = []
    for path in scripts(lang, root):
        out.extend(read_dialogs(path, path.relative_to(root).as_posix()))
    return tuple(out)


def script_languages(root: Path) -> tuple[str, ...]:
    """babelora language codes with dialogue scripts under `root`."""
    from babelora.languages import LANG_CODES

    found = {m.group(1) for p in (root / "script").glob("**/*.lua") if (m := _SCRIPT.match(p.name))}
    return tuple(c for c in LANG_CODES if c in found and c != "en")


def real_split(english: str) -> str:
    """`train` or `test`: the human-speech split of a line, by its English text."""
    return "train" if unit_hash("fillets-real", norm(english)) < REAL_TRAIN_FRACTION else "test"


def speakable(text: str) -> str:
    """A dialogue line as it is spoken: "..." is a pause (…); whitespace tidied."""
    return " ".join(text.replace("...", "…").split())


def fillets_pairs(lang: str, root: str | Path | None = None) -> list[TextPair]:
    """(English, X) pairs from the dialogue scripts of `lang`, human-speech train lines only,
    through the catalog filters (placeholders, markup, length)."""
    base = data_root(root)
    version = package_version(PACKAGE) or "?"
    out = []
    for d in dialogs(lang, base):
        if d.text is None or real_split(d.english) != "train":
            continue
        en, text = speakable(d.english), speakable(d.text)
        if catalog_reject(PoEntry(en, text)) is None:
            source = {
                "kind": "fillets",
                "script": d.script,
                "line": d.line,
                "id": d.id,
                "package": f"{PACKAGE} {version}",
            }
            out.append(TextPair(lang, en, text, source))
    return out
