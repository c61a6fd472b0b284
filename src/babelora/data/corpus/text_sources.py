"""Human-made English <-> X sentence pairs from packages that ship offline.

Five sources (the first three by default), each pair keeps its provenance in `TextPair.source`:
- `gettext`: Django's translation catalogs (English msgid -> translated msgstr). Entries with
  placeholders, markup, URLs, plural forms, abbreviations or the fuzzy flag are dropped.
- `cldr`: Unicode CLDR data through Babel: language, territory and currency names, month and day
  names, full dates, units with counts, relative times and lists, each composed from the same
  inputs in both languages.
- `numbers`: cardinals, ordinals and years spelled out by num2words.
- `weblate`: Weblate's catalogs, read from its wheel (`weblate.py`), with Django's filters.
- `fillets`: Fish Fillets NG's dialogue scripts, English original + translation (`fillets.py`);
  only lines outside the human-speech test set of the game's voice packs.
On the command line `django` and `num2words` name `gettext` and `numbers`. `TextPair`, `norm`
and the catalog filters live in `pairs.py` (shared with the Weblate and Fish Fillets readers).
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from babelora.data.corpus.fillets import fillets_pairs
from babelora.data.corpus.pairs import LETTER, TextPair, catalog_reject, norm, tidy
from babelora.data.corpus.po import read_po
from babelora.data.corpus.weblate import weblate_pairs
from babelora.errors import LanguageError

SOURCES = ("gettext", "cldr", "numbers", "weblate", "fillets")
DEFAULT_SOURCES = ("gettext", "cldr", "numbers")
SOURCE_ALIASES = {"django": "gettext", "num2words": "numbers"}
_DJANGO_CODES = {"zh": "zh_Hans", "no": "nb"}
_CLDR_LOCALES = {"pt": "pt_PT", "zh": "zh_Hans", "no": "nb"}
_NUM2WORDS_CODES = {"no": "no"}


# --- gettext (Django) ---------------------------------------------------------------------------


def django_root() -> Path:
    import django

    return Path(django.__file__).parent


@lru_cache(maxsize=1)
def _catalog_index() -> dict[str, tuple[Path, ...]]:
    """{Django locale code: its `.po` files}, from one walk over the installed package."""
    index: dict[str, list[Path]] = {}
    for path in sorted(django_root().glob("**/locale/*/LC_MESSAGES/*.po")):
        index.setdefault(path.parent.parent.name, []).append(path)
    return {code: tuple(paths) for code, paths in index.items()}


def django_catalogs(lang: str) -> tuple[Path, ...]:
    """The `.po` files Django ships for `lang`, in a stable order."""
    return _catalog_index().get(_DJANGO_CODES.get(lang, lang), ())


def gettext_pairs(lang: str) -> list[TextPair]:
    """Usable (English, X) pairs from Django's catalogs for `lang`."""
    import django

    root = django_root().parent
    pairs = []
    for path in django_catalogs(lang):
        for entry in read_po(path):
            if catalog_reject(entry) is None:
                source = {
                    "kind": "gettext",
                    "catalog": str(path.relative_to(root)),
                    "line": entry.line,
                    "package": f"django {django.__version__}",
                }
                pairs.append(TextPair(lang, tidy(entry.msgid), tidy(entry.msgstr), source))
    return pairs


# --- CLDR (Babel) -------------------------------------------------------------------------------

_UNITS = (
    "length-kilometer", "length-meter", "length-centimeter", "mass-kilogram", "mass-gram",
    "duration-hour", "duration-minute", "duration-day", "duration-week", "duration-month",
    "duration-year", "volume-liter", "temperature-celsius", "speed-kilometer-per-hour",
)  # fmt: skip
_UNIT_VALUES = (1, 2, 3, 4, 5, 7, 8, 10, 12, 15, 20, 24, 30, 45, 60, 90)
_REL_UNITS = (("seconds", 1), ("minutes", 60), ("hours", 3600), ("days", 86400))
_REL_UNITS += (("weeks", 7 * 86400),)
_REL_VALUES = (1, 2, 3, 4, 5, 6, 10, 20)
_PSEUDO_TERRITORIES = ("ZZ", "XA", "XB", "EU", "EZ", "UN")  # unknown, pseudo-locales, unions


def cldr_locale(lang: str) -> str:
    return _CLDR_LOCALES.get(lang, lang)


def _fixed_dates(n: int = 60) -> list[datetime.date]:
    rng = random.Random(20240101)  # fixed: the pool of inputs must not depend on the build seed
    start = datetime.date(1950, 1, 1).toordinal()
    return [datetime.date.fromordinal(start + rng.randrange(0, 365 * 80)) for _ in range(n)]


def cldr_pairs(lang: str) -> list[TextPair]:
    """Names, dates, units, relative times and lists, rendered from the same inputs in `lang` and
    English by Babel's CLDR data."""
    from babel import Locale, UnknownLocaleError
    from babel.dates import format_date, format_timedelta
    from babel.numbers import get_territory_currencies
    from babel.units import format_unit

    from babelora.languages import LANG_CODES

    try:
        loc = Locale.parse(cldr_locale(lang))
    except (UnknownLocaleError, ValueError):
        return []
    eng = Locale.parse("en")
    ver = __import__("babel").__version__
    out: list[TextPair] = []

    def add(kind: str, key: Any, render: Callable[[Any], str]) -> None:
        try:
            en, text = tidy(render(eng)), tidy(render(loc))
        except (KeyError, ValueError, TypeError, AttributeError):
            return
        if en and text and len(LETTER.findall(text)) >= 2:
            source = {"kind": "cldr", "field": kind, "input": key, "package": f"babel {ver}"}
            out.append(TextPair(lang, en, text, source))

    for code in LANG_CODES:
        if code in loc.languages and code in eng.languages:
            add("language_name", code, lambda lc, c=code: lc.languages[c])
    for code in sorted(eng.territories):
        real = code.isalpha() and len(code) == 2 and code not in _PSEUDO_TERRITORIES
        if real and code in loc.territories:
            add("territory_name", code, lambda lc, c=code: lc.territories[c])
    day = datetime.date(2024, 1, 1)
    currencies = sorted({c for t in eng.territories for c in get_territory_currencies(t, day)})
    for code in currencies:
        if code in loc.currencies and code in eng.currencies:
            add("currency_name", code, lambda lc, c=code: lc.currencies[c])
    for m in range(1, 13):
        add("month_name", m, lambda lc, m=m: lc.months["format"]["wide"][m])
    for d in range(7):
        add("day_name", d, lambda lc, d=d: lc.days["format"]["wide"][d])
    for date in _fixed_dates():
        add("date_full", date.isoformat(), lambda lc, d=date: format_date(d, "full", locale=lc))
    for unit in _UNITS:
        for value in _UNIT_VALUES:
            add(
                "unit",
                f"{value} {unit}",
                lambda lc, u=unit, v=value: format_unit(v, u, "long", locale=lc),
            )
    for name, seconds in _REL_UNITS:
        for value in _REL_VALUES:
            for sign in (-1, 1):
                delta = datetime.timedelta(seconds=sign * value * seconds)
                add(
                    "relative_time",
                    f"{sign * value} {name}",
                    lambda lc, d=delta, n=name: format_timedelta(
                        d, granularity=n[:-1], threshold=100, add_direction=True, locale=lc
                    ),
                )
    _cldr_lists(add)
    return out


def _cldr_lists(add: Callable[[str, Any, Callable[[Any], str]], None]) -> None:
    """Lists of 2-4 day, month or territory names joined by CLDR's 'and'/'or' patterns."""
    from babel.lists import format_list

    rng = random.Random(7)  # fixed inputs, independent of the build seed
    pools = {
        "days": [("day", d) for d in range(7)],
        "months": [("month", m) for m in range(1, 13)],
        "territories": [("territory", t) for t in ("DE", "FR", "ES", "IT", "NL", "PT", "GB", "US")],
    }

    def name(lc: Any, item: tuple[str, Any]) -> str:
        what, key = item
        if what == "day":
            return lc.days["format"]["wide"][key]
        if what == "month":
            return lc.months["format"]["wide"][key]
        return lc.territories[key]

    for i in range(120):
        pool = pools[("days", "months", "territories")[i % 3]]
        items = rng.sample(pool, rng.randint(2, 4))
        style = "or" if i % 4 == 3 else "standard"
        key = {"style": style, "items": [f"{w}:{k}" for w, k in items]}
        add(
            "list",
            key,
            lambda lc, it=items, st=style: format_list([name(lc, x) for x in it], st, lc),
        )


# --- numbers (num2words) -------------------------------------------------------------------------


def _number_inputs() -> list[tuple[str, int]]:
    rng = random.Random(11)  # fixed inputs, independent of the build seed
    cardinals = (
        list(range(0, 31)) + list(range(40, 101, 10)) + sorted(rng.sample(range(101, 100000), 200))
    )
    ordinals = list(range(1, 32)) + [40, 50, 100]
    years = list(range(1900, 2031))
    items = [("cardinal", n) for n in cardinals] + [("ordinal", n) for n in ordinals]
    return items + [("year", n) for n in years]


def number_pairs(lang: str) -> list[TextPair]:
    """Numbers, ordinals and years spelled out in `lang` and English."""
    from num2words import CONVERTER_CLASSES, num2words

    code = _NUM2WORDS_CODES.get(lang, lang)
    if code not in CONVERTER_CLASSES:
        return []
    out = []
    for to, value in _number_inputs():
        try:
            en, text = num2words(value, lang="en", to=to), num2words(value, lang=code, to=to)
        except (NotImplementedError, OverflowError, TypeError, ValueError, AttributeError):
            continue
        source = {"kind": "numbers", "to": to, "value": value, "package": "num2words"}
        out.append(TextPair(lang, tidy(en), tidy(text), source))
    return out


# --- all sources ---------------------------------------------------------------------------------


def _weblate(lang: str, options: tuple) -> list[TextPair]:
    return weblate_pairs(lang, dict(options).get("weblate"))


def _fillets(lang: str, options: tuple) -> list[TextPair]:
    return fillets_pairs(lang, dict(options).get("fillets"))


_BUILDERS: dict[str, Callable[[str, tuple], list[TextPair]]] = {
    "gettext": lambda lang, _: gettext_pairs(lang),
    "cldr": lambda lang, _: cldr_pairs(lang),
    "numbers": lambda lang, _: number_pairs(lang),
    "weblate": _weblate,
    "fillets": _fillets,
}


def source_names(names: Iterable[str]) -> tuple[str, ...]:
    """Source kinds from names (`django` and `num2words` accepted); LanguageError if unknown."""
    out: list[str] = []
    for name in names:
        kind = SOURCE_ALIASES.get(name, name)
        if kind not in _BUILDERS:
            raise LanguageError(
                f"unknown text source {name!r}; expected one of {SOURCES} "
                f"(or {', '.join(SOURCE_ALIASES)})"
            )
        if kind not in out:
            out.append(kind)
    return tuple(out)


def dedupe(pairs: Iterable[TextPair]) -> list[TextPair]:
    """Keep the first pair for each English text and each X text (compared with `norm`), so that
    no sentence has two different references."""
    seen_en: set[str] = set()
    seen_x: set[str] = set()
    out = []
    for p in pairs:
        a, b = norm(p.en), norm(p.text)
        if not a or not b or a in seen_en or b in seen_x:
            continue
        seen_en.add(a)
        seen_x.add(b)
        out.append(p)
    return out


@lru_cache(maxsize=64)
def _cached_pairs(lang: str, sources: tuple[str, ...], options: tuple) -> tuple[TextPair, ...]:
    pairs: list[TextPair] = []
    for name in sources:
        pairs.extend(_BUILDERS[name](lang, options))
    return tuple(dedupe(pairs))


def text_pairs(
    lang: str,
    sources: Iterable[str] = DEFAULT_SOURCES,
    weblate: str | None = None,
    fillets: str | None = None,
) -> list[TextPair]:
    """Deduplicated (English, X) pairs for `lang` from `sources` (in that order: the first
    source with a text keeps it). `weblate`/`fillets`: where those sources are (default: the
    cache / Debian's folder). LanguageError if Django has no catalog for `lang` while `gettext`
    is asked for (the catalogs carry the sentences; CLDR and numbers only add phrases), or if no
    source has any text for it; DependencyError when a source's data is not installed."""
    sources = source_names(sources)
    if lang == "en":
        raise LanguageError("English is the pivot side of every pair; ask for another language")
    if "gettext" in sources and not django_catalogs(lang):
        raise LanguageError(
            f"no translated text for language {lang!r} in Django's catalogs; languages with text: "
            + ", ".join(text_languages())
        )
    options = (("fillets", fillets), ("weblate", weblate))
    pairs = list(_cached_pairs(lang, sources, options))
    if not pairs:
        raise LanguageError(f"no text for language {lang!r} in the sources {', '.join(sources)}")
    return pairs


@lru_cache(maxsize=1)
def text_languages() -> tuple[str, ...]:
    """babelora language codes (ISO 639-1, Whisper's list) that Django's catalogs translate."""
    from babelora.languages import LANG_CODES

    return tuple(c for c in LANG_CODES if c != "en" and django_catalogs(c))
