"""Text sources of the offline corpus: .po parsing, catalog filters, CLDR, num2words, dedup."""

from __future__ import annotations

import pytest

from babelora.data.corpus.po import PoEntry, read_po
from babelora.data.corpus.text_sources import (
    TextPair,
    catalog_reject,
    cldr_pairs,
    dedupe,
    django_catalogs,
    gettext_pairs,
    norm,
    number_pairs,
    text_languages,
    text_pairs,
)
from babelora.errors import LanguageError, ManifestError

PO = r"""# header comment
msgid ""
msgstr ""
"Language: de\n"

#: a.py:1
msgid "Change password"
msgstr "Passwort ändern"

#, fuzzy
msgid "Log out"
msgstr "Abmelden"

msgctxt "abbrev. month"
msgid "Jan."
msgstr "Jan."

msgid "one item"
msgid_plural "%(n)s items"
msgstr[0] "ein Eintrag"
msgstr[1] "%(n)s Einträge"

msgid ""
"A long line "
"split in two with a \"quote\""
msgstr "Eine lange Zeile mit einem \"Zitat\""
msgid "No blank line before me"
msgstr "Keine Leerzeile davor"

#~ msgid "Obsolete"
#~ msgstr "Veraltet"
"""


def test_read_po_entries_flags_and_continuations(tmp_path):
    path = tmp_path / "django.po"
    path.write_text(PO, encoding="utf-8")
    entries = read_po(path)
    assert [e.msgid for e in entries] == [
        "Change password",
        "Log out",
        "Jan.",
        "one item",
        'A long line split in two with a "quote"',
        "No blank line before me",
    ]
    assert entries[0].msgstr == "Passwort ändern" and entries[0].line == 7
    assert entries[1].fuzzy and not entries[0].fuzzy
    assert entries[2].msgctxt == "abbrev. month"
    assert entries[3].msgid_plural == "%(n)s items"
    assert entries[3].msgstr_plural == ["ein Eintrag", "%(n)s Einträge"]
    assert entries[4].msgstr == 'Eine lange Zeile mit einem "Zitat"'
    assert entries[5].msgstr == "Keine Leerzeile davor"


def test_read_po_names_file_and_line_on_garbage(tmp_path):
    path = tmp_path / "bad.po"
    path.write_text('msgid "ok"\nmsgstr "ok"\n\nthis is not po\n', encoding="utf-8")
    with pytest.raises(ManifestError, match=r"bad\.po:4"):
        read_po(path)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (PoEntry("Change password", "Passwort ändern"), None),
        (PoEntry("Log out", "Abmelden", fuzzy=True), "fuzzy"),
        (PoEntry("one item", "ein Eintrag", msgid_plural="items"), "plural"),
        (PoEntry("January", "Jan.", msgctxt="abbrev. month"), "context"),
        (PoEntry("Hello %(name)s", "Hallo %(name)s"), "placeholder/markup"),
        (PoEntry("Hello {}", "Hallo {}"), "placeholder/markup"),
        (PoEntry("<b>Bold</b> text", "<b>Fett</b>"), "placeholder/markup"),
        (PoEntry("See https://example.org", "Siehe https://example.org"), "placeholder/markup"),
        (PoEntry("Untranslated thing", ""), "untranslated"),
        (PoEntry("jan", "Jan"), "length"),
    ],
)
def test_catalog_filters(entry, reason):
    assert catalog_reject(entry) == reason


def test_gettext_pairs_come_from_django_with_provenance():
    assert django_catalogs("de"), "Django ships German catalogs"
    pairs = gettext_pairs("de")
    assert len(pairs) > 300
    by_en = {p.en: p for p in pairs}
    assert by_en["Change password"].text == "Passwort ändern"
    src = by_en["Change password"].source
    assert src["kind"] == "gettext" and src["catalog"].endswith(".po") and src["line"] > 0
    assert src["catalog"].startswith("django/") and "/de/LC_MESSAGES/" in src["catalog"]
    for p in pairs:
        assert catalog_reject(PoEntry(p.en, p.text)) is None


def test_cldr_pairs_render_the_same_inputs_in_both_languages():
    pairs = cldr_pairs("de")
    fields = {p.source["field"] for p in pairs}
    assert {"language_name", "territory_name", "currency_name", "month_name", "day_name"} <= fields
    assert {"date_full", "unit", "relative_time", "list"} <= fields
    found = {(p.source["field"], str(p.source["input"])): p for p in pairs}
    assert found[("territory_name", "FR")].text == "Frankreich"
    assert found[("territory_name", "FR")].en == "France"
    assert found[("month_name", "3")].text == "März"
    assert found[("day_name", "0")].en == "Monday"
    rel = [
        p for p in pairs if p.source["field"] == "relative_time" and p.source["input"] == "-3 days"
    ]
    assert rel and rel[0].en == "3 days ago" and rel[0].text == "vor 3 Tagen"


def test_portuguese_uses_european_cldr():
    found = {str(p.source["input"]): p for p in cldr_pairs("pt") if p.source["field"] == "unit"}
    assert "quilómetros" in found["3 length-kilometer"].text  # pt_PT, not Brazilian "quilômetros"


def test_number_pairs():
    pairs = {(p.source["to"], p.source["value"]): p for p in number_pairs("de")}
    assert pairs[("year", 1984)].text == "neunzehnhundertvierundachtzig"
    assert pairs[("year", 1984)].en == "nineteen eighty-four"
    assert pairs[("ordinal", 21)].en == "twenty-first"
    assert number_pairs("xx") == []


def test_dedupe_keeps_one_reference_per_text():
    src = {"kind": "gettext"}
    pairs = [
        TextPair("de", "Delete", "Löschen", src),
        TextPair("de", "delete!", "Entfernen", src),  # same English after norm
        TextPair("de", "Remove", "löschen", src),  # same German after norm
        TextPair("de", "Save", "Sichern", src),
    ]
    assert [p.en for p in dedupe(pairs)] == ["Delete", "Save"]
    assert norm("  Hello,  World! ") == "hello world"


def test_text_pairs_mix_sources_and_are_deduplicated():
    pairs = text_pairs("fr")
    kinds = {p.kind for p in pairs}
    assert kinds == {"gettext", "cldr", "numbers"}
    assert len({norm(p.en) for p in pairs}) == len(pairs)
    assert len({norm(p.text) for p in pairs}) == len(pairs)
    assert len({p.key for p in pairs}) == len(pairs)


def test_text_pairs_errors():
    assert "de" in text_languages() and "en" not in text_languages()
    with pytest.raises(LanguageError, match="languages with text: .*de"):
        text_pairs("haw")
    with pytest.raises(LanguageError, match="pivot"):
        text_pairs("en")
    with pytest.raises(LanguageError, match="unknown text source"):
        text_pairs("de", ["wiki"])
