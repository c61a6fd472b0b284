"""Normalizer choice per language and Whisper's normalizer behaviour on known inputs."""

import pytest

from babelora.errors import LanguageError
from babelora.evaluate.normalize import (
    BASIC,
    ENGLISH,
    english_spelling_map,
    get_normalizer,
    normalize,
    normalizer_name,
)


@pytest.mark.parametrize(
    ("lang", "name"),
    [("en", ENGLISH), ("EN-us", ENGLISH), ("de", BASIC), ("zh", BASIC), ("yue", BASIC)],
)
def test_normalizer_choice(lang, name):
    assert normalizer_name(lang) == name
    assert type(get_normalizer(lang)).__name__ == (
        "EnglishTextNormalizer" if name == ENGLISH else "BasicTextNormalizer"
    )


def test_unknown_language_is_a_clear_error():
    with pytest.raises(LanguageError, match="xx"):
        normalizer_name("xx")


def test_spelling_map_is_whispers():
    mapping = english_spelling_map()
    assert len(mapping) == 1739
    assert mapping["colour"] == "color"
    assert mapping["theatre"] == "theater"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mr. Smith isn't here.", "mister smith is not here"),
        ("I have twenty five apples.", "i have 25 apples"),
        ("The colour of the theatre (laughs) is grey.", "the color of the theater is gray"),
        ("Um, hello [noise] world", "hello world"),
    ],
)
def test_english_normalizer(text, expected):
    assert normalize(text, "en") == expected


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        ("Das Wetter ist heute SCHÖN!", "de", "das wetter ist heute schön"),
        ("Ça va? [bruit] Oui (rires).", "fr", "ça va oui"),
        ("今天天气很好。", "zh", "今天天气很好"),
        ("The colour.", "de", "the colour"),  # no English spelling map outside English
    ],
)
def test_basic_normalizer(text, lang, expected):
    assert normalize(text, lang) == expected
