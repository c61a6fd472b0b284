"""Code-switched utterances: speech that changes language inside one utterance.

Patterns (all built from human translations of one split, so splits stay disjoint):
- `halves`: an X sentence followed by an English one (inter-sentential switch);
- `embedded`: an X list phrase (CLDR list pattern: "Montag, Tuesday und Freitag") with one item
  said in English (intra-sentential switch, X grammar around an English span);
- `xy`: an X sentence followed by a sentence in another language Y of the build.
The English translation target is composed from the English sides with the same inputs.

Audio: each span is spoken on its own by the same speaker (variant, rate, pitch) in its language's
voice, trimmed to its speech, and the spans are joined with a short pause. Segment boundaries sit
in the middle of the pauses, so the segments tile the audio from 0 to its end.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from babelora.data.audio import SAMPLE_RATE
from babelora.data.corpus.espeak import speech_bounds
from babelora.data.corpus.text_sources import TextPair, cldr_locale, norm

PATTERNS = ("halves", "embedded", "xy")
_LIST_FIELDS = ("day_name", "month_name", "territory_name", "language_name", "currency_name")
_END = (".", "!", "?", "…")
_SENTENCE_KINDS = ("gettext", "weblate", "fillets")  # sources of whole sentences and phrases


@dataclass(frozen=True)
class CodeSwitchItem:
    """A code-switched text: `spans` of (lang, text) in speaking order, the English target."""

    lang: str
    spans: tuple[tuple[str, str], ...]
    translation: str
    pattern: str
    pairs: tuple[TextPair, ...]

    @property
    def text(self) -> str:
        return " ".join(t for _, t in self.spans)

    def source(self) -> dict[str, Any]:
        return {
            "kind": "codeswitch",
            "pattern": self.pattern,
            "parts": [{"lang": p.lang, "pair": p.key, **p.source} for p in self.pairs],
        }


def _join(a: str, b: str) -> str:
    """Two sentences as one utterance: a comma unless the first one already ends a sentence."""
    return f"{a} {b}" if a.endswith(_END) else f"{a}, {b}"


def _sentence_pair(first: str, second: str) -> tuple[str, str]:
    return (first if first.endswith(_END) else first + ",", second)


def halves(lang: str, a: TextPair, b: TextPair) -> CodeSwitchItem:
    x, e = _sentence_pair(a.text, b.en)
    return CodeSwitchItem(lang, ((lang, x), ("en", e)), _join(a.en, b.en), "halves", (a, b))


def xy(lang: str, a: TextPair, b: TextPair) -> CodeSwitchItem:
    x, y = _sentence_pair(a.text, b.text)
    return CodeSwitchItem(lang, ((lang, x), (b.lang, y)), _join(a.en, b.en), "xy", (a, b))


def embedded(lang: str, items: Sequence[TextPair], english_at: int) -> CodeSwitchItem:
    """A CLDR list in `lang` whose item `english_at` is said in English."""
    from babel.lists import format_list

    marks = [f"\x00{i}\x00" for i in range(len(items))]
    frame = format_list(marks, locale=cldr_locale(lang))
    words = [p.en if i == english_at else p.text for i, p in enumerate(items)]
    before, after = frame.split(marks[english_at])
    for i, m in enumerate(marks):
        before, after = before.replace(m, words[i]), after.replace(m, words[i])
    after = after.strip()
    punct = len(after) - len(after.lstrip(",;:.、،，"))  # the list's comma goes with the item
    spans = [(lang, before.strip()), ("en", words[english_at] + after[:punct])]
    spans.append((lang, after[punct:].strip()))
    spans = [(lg, t) for lg, t in spans if any(c.isalnum() for c in t)]
    target = format_list([p.en for p in items], locale="en")
    return CodeSwitchItem(lang, tuple(spans), target, "embedded", tuple(items))


def _sentences(pool: Sequence[TextPair]) -> list[TextPair]:
    """Catalog or dialogue pairs of two words or more (sentences, phrases), else the pool."""
    multi = [p for p in pool if p.kind in _SENTENCE_KINDS and " " in p.en and " " in p.text]
    return multi or list(pool)


def make_items(
    lang: str,
    pool: Sequence[TextPair],
    others: Mapping[str, Sequence[TextPair]],
    n: int,
    rng: random.Random,
) -> list[CodeSwitchItem]:
    """`n` code-switched items with matrix language `lang`, patterns in turn, from `pool` (this
    split's pairs of `lang`) and `others` (this split's pairs of the other languages)."""
    pool = sorted(pool, key=lambda p: p.key)
    sentences = _sentences(pool)
    names: dict[str, list[TextPair]] = {}
    for p in pool:
        if p.kind == "cldr" and p.source.get("field") in _LIST_FIELDS:
            names.setdefault(p.source["field"], []).append(p)
    list_fields = sorted(f for f, v in names.items() if len(v) >= 3)
    ys = sorted(y for y, v in others.items() if v and y != lang)
    y_sentences: dict[str, list[TextPair]] = {}  # sorted and filtered once per language
    out: list[CodeSwitchItem] = []
    if len(sentences) < 2:
        return out
    seen: set[tuple[str, str]] = set()
    for _ in range(20 * n + 20):  # draws that repeat an earlier item are retried
        if len(out) == n:
            break
        pattern = PATTERNS[len(out) % len(PATTERNS)]
        if pattern == "embedded" and list_fields:
            group = names[rng.choice(list_fields)]
            chosen = rng.sample(group, min(len(group), rng.randint(3, 4)))
            differ = [k for k, p in enumerate(chosen) if norm(p.text) != norm(p.en)]
            item = embedded(lang, chosen, rng.choice(differ or list(range(len(chosen)))))
        elif pattern == "xy" and ys:
            y = rng.choice(ys)
            if y not in y_sentences:
                y_sentences[y] = _sentences(sorted(others[y], key=lambda p: p.key))
            item = xy(lang, rng.choice(sentences), rng.choice(y_sentences[y]))
        else:
            a, b = rng.sample(sentences, 2)
            item = halves(lang, a, b)
        if (item.text, item.translation) not in seen:
            seen.add((item.text, item.translation))
            out.append(item)
    return out


def join_spans(
    waves: Sequence[np.ndarray],
    langs: Sequence[str],
    pause: float = 0.12,
    margin: float = 0.03,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Trim each span to its speech (plus `margin` s), join them with `pause` s of silence and
    return the audio and its segments [{start, end, lang}] (seconds, tiling 0..duration)."""
    gap = np.zeros(int(round(pause * SAMPLE_RATE)), dtype=np.float32)
    pad = int(round(margin * SAMPLE_RATE))
    pieces, bounds = [gap[: len(gap) // 2]], []
    pos = len(pieces[0])
    for k, wave in enumerate(waves):
        lo, hi = speech_bounds(wave)
        piece = wave[max(0, lo - pad) : min(len(wave), hi + pad)]
        if k:
            pieces.append(gap)
            pos += len(gap)
        bounds.append((pos, pos + len(piece)))
        pieces.append(piece)
        pos += len(piece)
    pieces.append(gap[: len(gap) // 2])
    audio = np.concatenate(pieces).astype(np.float32)
    cuts = [0] + [(bounds[k][1] + bounds[k + 1][0]) // 2 for k in range(len(bounds) - 1)]
    cuts.append(len(audio))
    segments = []
    for k, lang in enumerate(langs):
        start, end = cuts[k] / SAMPLE_RATE, cuts[k + 1] / SAMPLE_RATE
        if segments and segments[-1]["lang"] == lang:  # adjacent spans in one language merge
            segments[-1]["end"] = round(end, 4)
        else:
            segments.append({"start": round(start, 4), "end": round(end, 4), "lang": lang})
    return audio, segments
