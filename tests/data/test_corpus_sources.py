"""The Weblate and Fish Fillets text sources on fixtures written in their real formats (a wheel
holding `weblate/locale/<code>/LC_MESSAGES/django.po`; `dialogs_<lang>.lua` scripts), and the
five sources together."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from babelora.data.corpus import fillets, weblate
from babelora.data.corpus.fillets import fillets_pairs, read_dialogs, real_split, script_languages
from babelora.data.corpus.splits import SPLITS, split_pairs
from babelora.data.corpus.text_sources import norm, source_names, text_pairs
from babelora.errors import DependencyError, LanguageError, ManifestError

WEBLATE_PO = r"""# German translation of Weblate.
msgid ""
msgstr ""
"Project-Id-Version: Weblate 5.14\n"
"Language: de\n"
"Plural-Forms: nplurals=2; plural=n != 1;\n"

#: weblate/accounts/forms.py:95
msgid "User avatar"
msgstr "Benutzer-Avatar"

#: weblate/accounts/forms.py:120
msgid "This username is already taken. Please pick something else."
msgstr "Dieser Benutzername ist bereits vergeben. Bitte wählen Sie einen anderen."

#: weblate/accounts/forms.py:130
#, python-format
msgid "Could not find user %(user)s"
msgstr "Benutzer %(user)s nicht gefunden"

#: weblate/trans/models.py:9
#, fuzzy
msgid "Translation memory"
msgstr "Übersetzungsspeicher"

#: weblate/trans/models.py:12
msgid "%(count)s string"
msgid_plural "%(count)s strings"
msgstr[0] "%(count)s Zeichenkette"
msgstr[1] "%(count)s Zeichenketten"

#: weblate/trans/views.py:40
msgctxt "Component"
msgid "Repository "
"maintenance"
msgstr "Wartung des "
"Repositorys"
"""


def _wheel(folder: Path, version: str = "5.14.3", langs: tuple[str, ...] = ("de",)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"weblate-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("weblate/__init__.py", "")
        for lang in langs:
            z.writestr(f"weblate/locale/{lang}/LC_MESSAGES/django.po", WEBLATE_PO)
            z.writestr(f"weblate/locale/{lang}/LC_MESSAGES/djangojs.po", 'msgid ""\nmsgstr ""\n')
    return path


def test_weblate_pairs_from_a_wheel_keep_filters_and_provenance(tmp_path):
    wheel = _wheel(tmp_path / "w")
    pairs = weblate.weblate_pairs("de", wheel)
    assert [(p.en, p.text) for p in pairs] == [
        ("User avatar", "Benutzer-Avatar"),
        (
            "This username is already taken. Please pick something else.",
            "Dieser Benutzername ist bereits vergeben. Bitte wählen Sie einen anderen.",
        ),
        ("Repository maintenance", "Wartung des Repositorys"),
    ]  # placeholder, fuzzy and plural entries are dropped
    assert pairs[0].source == {
        "kind": "weblate",
        "catalog": "weblate/locale/de/LC_MESSAGES/django.po",
        "line": 9,
        "package": "weblate 5.14.3",
    }
    assert weblate.weblate_pairs("fr", wheel) == []  # no catalog for that language


def test_weblate_is_found_in_a_folder_of_wheels_or_an_unpacked_package(tmp_path, monkeypatch):
    _wheel(tmp_path / "cache" / "weblate", "5.9")
    _wheel(tmp_path / "cache" / "weblate", "5.14.3")
    monkeypatch.setenv("BABELORA_CACHE", str(tmp_path / "cache"))
    found = weblate.find_weblate()
    assert found.version == "5.14.3"  # the newest wheel, compared as numbers
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(found.path) as z:
        z.extractall(unpacked)
    (unpacked / "weblate-5.14.3.dist-info").mkdir()
    src = weblate.find_weblate(unpacked)
    assert src.locale == "weblate/locale" and src.version == "5.14.3"
    assert len(weblate.weblate_pairs("de", unpacked)) == 3
    assert weblate.find_weblate(unpacked / "weblate").locale == "locale"


def test_missing_or_bad_weblate_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("BABELORA_CACHE", str(tmp_path / "empty"))
    with pytest.raises(DependencyError, match=r"pip download --no-deps weblate==5\.14\.3 -d "):
        weblate.find_weblate()
    with pytest.raises(DependencyError, match="install_system_deps.sh"):
        text_pairs("de", ["weblate"])
    bad = tmp_path / "weblate-1.0-py3-none-any.whl"
    bad.write_text("not a zip")
    with pytest.raises(DependencyError, match="not a wheel"):
        weblate.find_weblate(bad)


LUA_NL = """
-- airplane: a level script, format as shipped in fillets-ng-data
dialogId("let-m-divna", "font_small", "What kind of strange ship is that?")
dialogStr("Wat is dit voor raar schip?")


dialogId("let-v-oko", "font_big", "Can you see that eye? The silent witness...")
dialogStr("Zie je dat oog? De stille getuige...") -- FIXME


dialogId("m-uvedomit", "font_small",
"You need to realize that the steel cylinder surrounding us")
dialogStr("Je moet beseffen dat de stalen cilinder om ons heen")

dialogId("v-quote", "font_big", "We call them \\"shell-less\\".")
dialogStr('Wij noemen ze \\"schaallozen\\".')

dialogId("x-noise", "font_white", "")
dialogStr("")

dialogId("m-untranslated", "font_small", "Nobody translated this line yet.")
"""


def _fillets_root(root: Path, extra: dict[str, str] | None = None) -> Path:
    files = {"script/airplane/dialogs_nl.lua": LUA_NL}
    files["script/airplane/dialogs_en.lua"] = 'dialogId("let-m-divna", "font_small", "What?")\n'
    files.update(extra or {})
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def test_lua_dialogs_parse_like_the_game_writes_them(tmp_path):
    root = _fillets_root(tmp_path / "game")
    got = read_dialogs(root / "script/airplane/dialogs_nl.lua", "script/airplane/dialogs_nl.lua")
    assert [(d.id, d.font, d.english, d.text, d.line) for d in got] == [
        ("let-m-divna", "font_small", "What kind of strange ship is that?",
         "Wat is dit voor raar schip?", 3),
        ("let-v-oko", "font_big", "Can you see that eye? The silent witness...",
         "Zie je dat oog? De stille getuige...", 7),
        ("m-uvedomit", "font_small", "You need to realize that the steel cylinder surrounding us",
         "Je moet beseffen dat de stalen cilinder om ons heen", 11),
        ("v-quote", "font_big", 'We call them "shell-less".', 'Wij noemen ze "schaallozen".', 15),
        ("x-noise", "font_white", "", "", 18),
        ("m-untranslated", "font_small", "Nobody translated this line yet.", None, 21),
    ]  # fmt: skip
    assert got[0].level == "airplane" and got[0].script == "script/airplane/dialogs_nl.lua"
    assert script_languages(root) == ("nl",)


@pytest.mark.parametrize(
    ("text", "where", "match"),
    [
        ('dialogStr("Hallo")\n', ":1", "dialogStr without a dialogId"),
        ('dialogId("a", "font_small", "Hi")\ndialogStr(Hallo)\n', ":2", "expected a quoted"),
        ('dialogId("a", "font_small", "Hi)\n', ":1", "unterminated string"),
        ('dialogId("a", "Hi")\n', ":1", r"dialogId needs \(id, font, text\)"),
    ],
)
def test_lua_errors_name_file_and_line(tmp_path, text, where, match):
    path = tmp_path / "dialogs_nl.lua"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError, match=f"dialogs_nl.lua{where}: .*{match}"):
        read_dialogs(path)


def test_fillets_pairs_hold_only_lines_outside_the_human_speech_test_set(tmp_path):
    lines = [f"The fish number {i} swims home today." for i in range(40)]
    body = "".join(
        f'dialogId("id-{i}", "font_big", "{en}")\ndialogStr("De vis nummer {i} zwemt vandaag '
        f'naar huis...")\n'
        for i, en in enumerate(lines)
    )
    root = _fillets_root(tmp_path / "game", {"script/share/bore_dialogs_nl.lua": body})
    pairs = fillets_pairs("nl", root)
    train = {en for en in lines if real_split(en) == "train"}
    assert 0 < len(train) < len(lines)  # both splits occur among 40 lines
    assert {p.en for p in pairs} >= train
    assert not {p.en for p in pairs} & {en for en in lines if real_split(en) == "test"}
    p = next(p for p in pairs if p.source["id"].startswith("id-"))
    assert p.text.endswith("naar huis…")  # a spoken pause, not the UI ellipsis the filter drops
    assert (
        p.source["kind"] == "fillets" and p.source["script"] == "script/share/bore_dialogs_nl.lua"
    )
    assert p.source["package"].startswith("fillets-ng-data ")
    assert len(text_pairs("nl", ["fillets"], fillets=str(root))) == len(pairs)


def test_missing_fillets_data_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.delenv("BABELORA_FILLETS", raising=False)
    with pytest.raises(DependencyError, match="apt-get install -y fillets-ng-data"):
        fillets.data_root(tmp_path / "nothing")


def test_source_names_and_aliases():
    assert source_names(["django", "cldr", "num2words", "weblate", "fillets", "gettext"]) == (
        "gettext",
        "cldr",
        "numbers",
        "weblate",
        "fillets",
    )
    with pytest.raises(LanguageError, match="unknown text source 'wiki'"):
        source_names(["wiki"])


def user_weblate() -> str:
    """The Weblate wheel folder of the user's cache (the tests' own cache is a temporary one)."""
    return str(Path.home() / ".cache" / "babelora" / "weblate")


def test_all_five_sources_dedupe_and_split_disjoint_by_text():
    try:
        weblate.find_weblate(user_weblate())
        fillets.data_root()
    except DependencyError as err:
        pytest.skip(f"Weblate or Fish Fillets not installed here: {err}")
    five = ("gettext", "cldr", "numbers", "weblate", "fillets")
    pairs = {lang: text_pairs(lang, five, weblate=user_weblate()) for lang in ("de", "nl")}
    for lang, ps in pairs.items():
        kinds = {p.kind for p in ps}
        assert kinds == set(five), lang
        assert len(ps) > 4000, (lang, len(ps))
        assert len({norm(p.en) for p in ps}) == len(ps) == len({norm(p.text) for p in ps})
    by_split = split_pairs(pairs, seed=0, fractions=(0.8, 0.1, 0.1))
    texts = {
        s: {norm(t) for ps in by_split[s].values() for p in ps for t in (p.en, p.text)}
        for s in SPLITS
    }
    assert not texts["train"] & texts["dev"] and not texts["train"] & texts["test"]
    assert not texts["dev"] & texts["test"]
