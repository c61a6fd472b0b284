"""The offline n-gram language identifier: held-out accuracy, known texts, checks, caching."""

from pathlib import Path

import pytest
from reference.langid_texts import KNOWN_TEXTS

from babelora.errors import ConfigError
from babelora.evaluate import langid
from babelora.languages import LANG_CODES

# Measured with the default LangIdConfig (Django 5.2, Babel 2.18): 0.968 on 2949 held-out catalog
# strings of >= 25 letters, 0.901 on 7399 of >= 10 letters; thresholds leave a small margin for
# other Django/Babel versions, whose catalogs differ a little.
HELDOUT_ACC_25 = 0.95
HELDOUT_ACC_10 = 0.87


@pytest.fixture(scope="module")
def model():
    return langid.get_identifier()


def test_covers_djangos_languages(model):
    django_locales = {p.name for p in (langid._package_root("django") / "conf/locale").iterdir()}
    expected = {langid._class_of_locale(loc) for loc in django_locales if not loc.startswith("_")}
    expected = {langid.SCRIPT_CLASSES.get(c, c) for c in expected}
    assert expected <= set(model.langs)
    assert len(model.langs) >= 85
    assert {"zh", "sr", "no", "nn", "en"} <= set(model.langs)


def test_heldout_accuracy(model):
    acc, n = langid.heldout_accuracy(model, min_letters=25)
    print(f"held-out accuracy (>= 25 letters): {acc:.4f} on {n} strings")
    assert n > 2000
    assert acc >= HELDOUT_ACC_25
    acc10, n10 = langid.heldout_accuracy(model, min_letters=10)
    print(f"held-out accuracy (>= 10 letters): {acc10:.4f} on {n10} strings")
    assert acc10 >= HELDOUT_ACC_10


def test_known_everyday_sentences(model):
    texts = [t for ts in KNOWN_TEXTS.values() for t in ts]
    gold = [lang for lang, ts in KNOWN_TEXTS.items() for _ in ts]
    pred = model.predict(texts, candidates=LANG_CODES)
    wrong = [(g, p) for g, p in zip(gold, pred) if g != p]
    assert len(wrong) <= 1, wrong  # measured: 0 of 52 (id/ms is the likeliest slip)


def test_check_flags_wrong_language_only(model):
    texts = KNOWN_TEXTS["de"] + KNOWN_TEXTS["en"] + KNOWN_TEXTS["fr"]
    right = model.check(texts, ["de", "de", "en", "en", "fr", "fr"], LANG_CODES, margin=0.2)
    assert [c.wrong for c in right] == [False] * 6
    wrong = model.check(texts, ["en", "fr", "de", "fr", "de", "en"], LANG_CODES, margin=0.2)
    assert [c.wrong for c in wrong] == [True] * 6
    assert [c.detected for c in wrong] == ["de", "de", "en", "en", "fr", "fr"]


def test_short_and_unsupported_are_not_judged(model):
    checks = model.check(["ok", "", "Das Wetter ist heute schön."], ["de", "de", "haw"])
    assert checks[0] == langid.LangCheck(None, None)
    assert checks[1] == langid.LangCheck(None, None)
    assert checks[2].detected == "de" and checks[2].wrong is None  # no Hawaiian class
    assert model.predict(["Hallo"], min_letters=10) == [None]
    assert model.check([], []) == []
    with pytest.raises(ValueError, match="2 texts but 1 expected"):
        model.check(["a", "b"], ["de"])


def test_candidates_restrict_the_answer(model):
    text = KNOWN_TEXTS["es"][0]
    assert model.predict([text], candidates=["es", "pt"]) == ["es"]
    assert model.predict([text], candidates=["pt", "it"])[0] in ("pt", "it")
    assert model.predict([text], candidates=["xx"]) == [None]


def test_both_scripts_answer_with_their_language(model):
    assert model.predict(
        ["Добар дан, како сте данас?", "Dobar dan, kako ste danas?"], candidates=["sr", "ru", "en"]
    ) == ["sr", "sr"]
    assert model.predict(["今天天氣很好，我們去公園散步吧。"], candidates=LANG_CODES) == ["zh"]


def test_clean_text_drops_placeholders_digits_and_punctuation():
    assert langid.clean_text("Hello, %(name)s! You have {count} <b>2</b> items.") == (
        " hello you have items "
    )
    assert langid.clean_text("नमस्ते") == " नमस्ते "  # combining marks stay


def test_config_is_validated():
    with pytest.raises(ConfigError, match="mix"):
        langid.LangIdConfig(mix=1.0)


def test_train_save_load_roundtrip(tmp_path):
    cfg = langid.LangIdConfig(max_order=3, min_count=1)
    texts = {
        "en": ["the cat sat on the mat", "hello world"],
        "de": ["die katze sitzt auf der matte", "hallo welt"],
    }
    model = langid.LanguageIdentifier.train(texts, cfg)
    assert model.predict(["the mat and the cat", "die matte der katze"], min_letters=1) == [
        "en",
        "de",
    ]
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = langid.LanguageIdentifier.load(path)
    assert loaded.classes == model.classes and loaded.config == cfg
    assert (loaded.scores(["hello cat"])[0] == model.scores(["hello cat"])[0]).all()


def test_get_identifier_trains_once_then_loads_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BABELORA_CACHE", str(tmp_path))
    tiny = {"en": ["the cat sat on the mat"], "de": ["die katze sitzt auf der matte"]}
    calls = []

    def fake_split(cfg):
        calls.append(cfg)
        return tiny, {}

    monkeypatch.setattr(langid, "training_split", fake_split)
    cfg = langid.LangIdConfig(max_order=2, min_count=1, heldout_every=0)
    langid.get_identifier.cache_clear()
    try:
        first = langid.get_identifier(cfg)
        assert len(calls) == 1 and len(list(tmp_path.glob("langid-*.npz"))) == 1
        langid.get_identifier.cache_clear()
        second = langid.get_identifier(cfg)
        assert len(calls) == 1  # loaded, not retrained
        assert second.classes == first.classes
        # a corrupt cache file is ignored and rebuilt
        next(tmp_path.glob("langid-*.npz")).write_bytes(b"not a zip")
        langid.get_identifier.cache_clear()
        langid.get_identifier(cfg)
        assert len(calls) == 2
    finally:
        langid.get_identifier.cache_clear()


def test_default_model_is_cached_and_reused(model, monkeypatch):
    """The default identifier is saved in the cache folder (the test session's, see conftest)
    and a later call loads it from there instead of training again."""
    path = langid._cache_path(langid.LangIdConfig())
    assert path.is_file() and path.parent == langid.cache_dir()

    def no_training(cfg):
        raise AssertionError("retrained although the cache file exists")

    monkeypatch.setattr(langid, "training_split", no_training)
    langid.get_identifier.cache_clear()
    try:
        again = langid.get_identifier()
    finally:
        langid.get_identifier.cache_clear()
    texts = KNOWN_TEXTS["de"] + KNOWN_TEXTS["ja"]
    assert again.classes == model.classes
    assert (again.scores(texts)[0] == model.scores(texts)[0]).all()


def test_tests_do_not_write_to_the_home_cache():
    """conftest points `BABELORA_CACHE` at a temporary folder for the whole session."""
    assert langid.cache_dir().resolve() != (Path.home() / ".cache" / "babelora").resolve()
