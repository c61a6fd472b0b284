"""Train/dev/test splits that are disjoint by text, in every language at once.

Every text (English side and translation, compared with `norm`) is a node; each pair joins its
two texts. A connected component is a *sentence group*: the English sentence, its translations
into all languages, and anything that shares one of those strings. A whole group goes to one
split, chosen by a hash of (seed, group), so no sentence in any language appears in two splits,
and a group's split does not depend on the order in which pairs were read.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence

from babelora.data.corpus.pairs import TextPair, norm

SPLITS = ("train", "dev", "test")


class SentenceGroups:
    """Union-find over normalised texts; `group(text)` is the smallest text of its component."""

    def __init__(self, pairs: Iterable[TextPair] = ()) -> None:
        self._parent: dict[str, str] = {}
        for p in pairs:
            self.join(norm(p.en), norm(p.text))

    def _find(self, a: str) -> str:
        parent = self._parent
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def join(self, a: str, b: str) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:  # the smaller root wins, so a root is always its component's minimum
            self._parent[max(ra, rb)] = min(ra, rb)

    def group(self, text: str) -> str:
        return self._find(norm(text))

    def of(self, pair: TextPair) -> str:
        return self._find(norm(pair.en))


def unit_hash(*parts: object) -> float:
    """A deterministic number in [0, 1) from `parts` (sha256; independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(group: str, seed: int, fractions: Sequence[float]) -> str:
    """The split of a sentence group: train/dev/test with probabilities `fractions`."""
    u = unit_hash("split", seed, group) * sum(fractions)
    acc = 0.0
    for name, frac in zip(SPLITS, fractions):
        acc += frac
        if u < acc:
            return name
    return SPLITS[-1]


def split_pairs(
    pairs_by_lang: Mapping[str, Sequence[TextPair]], seed: int, fractions: Sequence[float]
) -> dict[str, dict[str, list[TextPair]]]:
    """{split: {lang: pairs}}: every pair placed by its sentence group."""
    groups = SentenceGroups(p for pairs in pairs_by_lang.values() for p in pairs)
    out: dict[str, dict[str, list[TextPair]]] = {s: {} for s in SPLITS}
    for lang, pairs in pairs_by_lang.items():
        for s in SPLITS:
            out[s][lang] = []
        for p in pairs:
            out[assign_split(groups.of(p), seed, fractions)][lang].append(p)
    return out


def sample_pairs(
    pairs: Sequence[TextPair], n: int, weights: Mapping[str, float], rng: random.Random
) -> list[TextPair]:
    """`n` pairs drawn without replacement, `weights` giving the share of each source kind; a
    kind short of items leaves its share to the others. Order: by kind, then shuffled."""
    by_kind: dict[str, list[TextPair]] = {}
    for p in sorted(pairs, key=lambda p: p.key):
        by_kind.setdefault(p.kind, []).append(p)
    for items in by_kind.values():
        rng.shuffle(items)
    kinds = [k for k in sorted(weights) if weights[k] > 0 and k in by_kind]
    total = sum(weights[k] for k in kinds) or 1.0
    want = {k: int(round(n * weights[k] / total)) for k in kinds}
    taken = {k: min(want[k], len(by_kind[k])) for k in kinds}
    short = n - sum(taken.values())
    for k in kinds:  # hand the remainder to kinds that still have items
        extra = min(short, len(by_kind[k]) - taken[k])
        taken[k] += max(extra, 0)
        short -= max(extra, 0)
    while sum(taken.values()) > n:  # rounding overshoot
        k = max(kinds, key=lambda k: taken[k])
        taken[k] -= 1
    return [p for k in kinds for p in by_kind[k][: taken[k]]]
