"""Splits disjoint by sentence group across languages; deterministic sampling."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from babelora.data.corpus.splits import (
    SPLITS,
    SentenceGroups,
    assign_split,
    sample_pairs,
    split_pairs,
    unit_hash,
)
from babelora.data.corpus.text_sources import TextPair, norm, text_pairs


def _p(lang, en, text, kind="gettext"):
    return TextPair(lang, en, text, {"kind": kind})


def test_groups_join_translations_across_languages():
    pairs = [
        _p("de", "Delete", "Löschen"),
        _p("fr", "Delete", "Supprimer"),
        _p("de", "Remove", "löschen!"),  # shares the German text with "Delete"
        _p("fr", "Save", "Enregistrer"),
        _p("nl", "Bookmarklets", "Bookmarklets"),
    ]
    g = SentenceGroups(pairs)
    assert g.group("delete") == g.group("Supprimer") == g.group("Remove") == g.group("Löschen")
    assert g.group("Save") != g.group("Delete")
    assert g.group("Save") == g.group("Enregistrer") == min(norm("Save"), norm("Enregistrer"))
    assert g.of(pairs[4]) == "bookmarklets"
    # the group of a text does not depend on the order the pairs came in
    h = SentenceGroups(reversed(pairs))
    assert all(g.of(p) == h.of(p) for p in pairs)


def test_assign_split_is_deterministic_and_follows_fractions():
    names = [f"group {i}" for i in range(4000)]
    a = [assign_split(n, 0, (0.8, 0.1, 0.1)) for n in names]
    assert a == [assign_split(n, 0, (0.8, 0.1, 0.1)) for n in names]
    counts = Counter(a)
    assert counts["train"] / 4000 == pytest.approx(0.8, abs=0.03)
    assert counts["test"] / 4000 == pytest.approx(0.1, abs=0.02)
    b = [assign_split(n, 1, (0.8, 0.1, 0.1)) for n in names]
    assert a != b
    assert 0 <= unit_hash("x", 1) < 1 and unit_hash("x", 1) == unit_hash("x", 1)


def test_real_pairs_split_disjoint_in_every_language():
    pairs = {lang: text_pairs(lang) for lang in ("de", "fr", "es")}
    by_split = split_pairs(pairs, seed=3, fractions=(0.8, 0.1, 0.1))
    texts = {}
    for split in SPLITS:
        texts[split] = {
            norm(t) for ps in by_split[split].values() for p in ps for t in (p.en, p.text)
        }
        assert all(len(by_split[split][lang]) > 50 for lang in pairs)
    assert not texts["train"] & texts["dev"]
    assert not texts["train"] & texts["test"]
    assert not texts["dev"] & texts["test"]
    assert sum(len(by_split[s]["de"]) for s in SPLITS) == len(pairs["de"])
    # an English sentence lands in one split for every language
    where = {}
    for split in SPLITS:
        for ps in by_split[split].values():
            for p in ps:
                assert where.setdefault(norm(p.en), split) == split


def test_sample_pairs_weights_and_determinism():
    pool = [_p("de", f"g{i}", f"x{i}", "gettext") for i in range(50)]
    pool += [_p("de", f"c{i}", f"y{i}", "cldr") for i in range(50)]
    pool += [_p("de", f"n{i}", f"z{i}", "numbers") for i in range(3)]
    weights = {"gettext": 0.5, "cldr": 0.3, "numbers": 0.2}
    got = sample_pairs(pool, 20, weights, random.Random(0))
    assert len(got) == 20 and len({p.key for p in got}) == 20
    kinds = Counter(p.kind for p in got)
    assert kinds["numbers"] == 3  # short kind gives what it has
    assert kinds["gettext"] >= 10 and kinds["cldr"] >= 6
    again = sample_pairs(list(reversed(pool)), 20, weights, random.Random(0))
    assert [p.key for p in again] == [p.key for p in got]  # input order does not matter
    assert len(sample_pairs(pool, 500, weights, random.Random(0))) == len(pool)
    assert sample_pairs(pool, 0, weights, random.Random(0)) == []
