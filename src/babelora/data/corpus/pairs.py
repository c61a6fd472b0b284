"""A sentence pair and the checks every text source shares: normalising for deduplication and
splits (`norm`), and the filters that keep only speakable catalog strings (`catalog_reject`)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from babelora.data.corpus.po import PoEntry

MAX_CHARS = 160
"""Longest text kept (about 10 s of espeak speech): longer catalog strings are help texts."""

_BAD = re.compile(r"[%{}<>&\\|_@#/=\n\t]|https?:|www\.|\.\.\.|\d{3,}")
LETTER = re.compile(r"[^\W\d_]")
_SKIP_CONTEXT = ("abbrev", "one letter", "ordinal")


@dataclass(frozen=True)
class TextPair:
    """An English sentence and its human translation into `lang`, with provenance."""

    lang: str
    en: str
    text: str
    source: dict[str, Any] = field(compare=False, hash=False)

    @property
    def kind(self) -> str:
        return self.source["kind"]

    @cached_property
    def key(self) -> str:
        """A short stable id of the pair (hash of language and both texts)."""
        raw = f"{self.lang}\x00{self.en}\x00{self.text}".encode()
        return hashlib.sha1(raw).hexdigest()[:10]


def norm(text: str) -> str:
    """Case- and punctuation-insensitive form used for deduplication and split grouping."""
    return " ".join(re.sub(r"[\W_]+", " ", text.casefold()).split())


def tidy(text: str) -> str:
    return " ".join(text.split())


def catalog_reject(entry: PoEntry) -> str | None:
    """Why a catalog entry is unusable as a spoken sentence pair, or None if it is fine."""
    if entry.fuzzy:
        return "fuzzy"
    if entry.msgid_plural is not None:
        return "plural"
    if entry.msgctxt and any(s in entry.msgctxt for s in _SKIP_CONTEXT):
        return "context"
    en, text = tidy(entry.msgid), tidy(entry.msgstr)
    if not text:
        return "untranslated"
    for s in (en, text):
        if _BAD.search(s):
            return "placeholder/markup"
        if len(LETTER.findall(s)) < 4 or len(s) > MAX_CHARS:  # < 4: "jan", "Mär", "and"
            return "length"
    return None
