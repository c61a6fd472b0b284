"""Offline text language identification, for the language-confusion rate.

A multinomial naive Bayes classifier over character 1-4-grams of space-padded words (Cavnar &
Trenkle 1994 features), each class's n-gram distribution interpolated with the pooled one of all
classes (Jelinek-Mercer, weight `mix`) so that classes with little text do not win on unseen
n-grams. It is trained at first use on text that ships with installed packages: Django's gettext
catalogs (every translated `msgstr` of every Django app; the English `msgid`s as English) plus
Babel's CLDR display names (languages, territories, scripts, currencies, months, days) for the
classes whose catalogs are small. Training takes ~2 s; the model is cached under `cache_dir()`
(`$BABELORA_CACHE`, else `~/.cache/babelora`), keyed by the package versions and the settings.

Classes are Django's locales folded to Whisper's ISO 639-1 codes (89 languages, 73 of them
Whisper's): regional variants merge (`pt_BR` -> `pt`, `es_AR` -> `es`), Norwegian Bokmål `nb`
becomes Whisper's `no`, and a second script stays a class of its own that answers with its
language (`zh_Hant` -> `zh`, `sr_Latn` -> `sr`).

Measured (tests/evaluate/test_eval_langid.py): accuracy on the 20 % of catalog strings held out
of training is 0.968 on strings of >= 25 letters (2949 strings) and 0.90 on >= 10 letters (the
settings were chosen on these strings, so this is slightly optimistic); 52/52 on hand-written
everyday sentences in 26 languages (tests/evaluate/langid_texts.py). Close pairs (no/nn/da,
bs/hr/sr, ms/id, gl/es) make most errors, hence the `margin` of `LanguageIdentifier.check`: with
margin 0.2 and Whisper's languages as candidates (the scoring defaults), a correct-language
held-out string is flagged as wrong-language 1.1 % of the time at >= 25 letters (4.6 % at >= 10
letters), and a string checked against a random other language is missed 0.4 % of the time.
"""

from __future__ import annotations

import functools
import gettext
import hashlib
import json
import logging
import os
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata, util
from itertools import repeat
from pathlib import Path

import numpy as np
from scipy import sparse

from babelora.config import cache_dir  # the one place BABELORA_CACHE is read
from babelora.errors import ConfigError, DependencyError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SCRIPT_CLASSES = {"zh_Hans": "zh", "zh_Hant": "zh", "sr_Latn": "sr"}
"""Locales kept as classes of their own (a second script of a language) -> their language."""
LOCALE_ALIASES = {"nb": "no"}
"""Django locale -> Whisper's code where they differ."""

_PLACEHOLDER = re.compile(r"%\([^)]*\)[a-z]|%[a-z]|\{[^}]*\}|<[^>]*>|&[a-z]+;")


@dataclass(frozen=True)
class LangIdConfig:
    """Training settings of the n-gram model (all part of the cache key)."""

    max_order: int = 4  # n-grams of orders 1..max_order over words padded with spaces
    mix: float = 0.8  # weight of the class's own n-gram distribution against the pooled one
    min_count: int = 2  # n-grams seen fewer times overall are dropped (treated as unseen)
    heldout_every: int = 5  # every k-th catalog string (by a stable hash) is held out; 0 = none
    cldr_below_chars: int = 10000  # add CLDR display names where the catalogs have fewer chars

    def __post_init__(self) -> None:
        if self.max_order < 1 or not 0.0 < self.mix < 1.0 or self.min_count < 1:
            raise ConfigError(
                f"LangIdConfig needs max_order >= 1, 0 < mix < 1 and min_count >= 1, got {self}"
            )


def clean_text(text: str) -> str:
    """Lower-cased letters only, words separated by one space and padded by spaces at both ends.

    Format placeholders (`%(name)s`, `{0}`, HTML tags), digits, punctuation and symbols are
    removed; combining marks are kept (they carry much of the signal in Indic scripts).
    """
    text = _PLACEHOLDER.sub(" ", unicodedata.normalize("NFC", text)).lower()
    kept = [c if unicodedata.category(c)[0] in "LM" else " " for c in text]
    return " " + " ".join("".join(kept).split()) + " "


def ngrams(text: str, max_order: int) -> Counter[str]:
    """Counts of the character n-grams (orders 1..max_order) of an already cleaned text."""
    out: Counter[str] = Counter(text)
    for n in range(2, max_order + 1):
        out.update(map("".join, zip(*(text[i:] for i in range(n)))))  # the n-grams, at C speed
    del out[" "]  # the padding space alone says nothing
    return out


def _package_root(name: str) -> Path:
    spec = util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError(
            f"language identification needs the '{name}' package for its training text; "
            f"install it with `pip install {name}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _class_of_locale(locale: str) -> str:
    if locale in SCRIPT_CLASSES:
        return locale
    lang = locale.split("_")[0]
    return LOCALE_ALIASES.get(lang, lang)


def _is_heldout(text: str, every: int) -> bool:
    return every > 0 and zlib.crc32(text.encode("utf-8")) % every == 0


@functools.lru_cache(maxsize=1)
def catalog_texts() -> dict[str, tuple[str, ...]]:
    """Every translated string of Django's gettext catalogs, by class (English: the msgids)."""
    texts: dict[str, set[str]] = {}
    for mo in sorted(_package_root("django").glob("**/locale/*/LC_MESSAGES/*.mo")):
        lang = _class_of_locale(mo.parent.parent.name)
        with open(mo, "rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
        for key, value in catalog.items():
            msgid = key[0] if isinstance(key, tuple) else key
            if not msgid:  # the header entry
                continue
            texts.setdefault("en", set()).add(msgid)
            if value and value != msgid:  # identical = untranslated or a loanword
                texts.setdefault(lang, set()).add(value)
    return {lang: tuple(sorted(strings)) for lang, strings in sorted(texts.items())}


def cldr_texts(lang: str) -> list[str]:
    """CLDR display names in `lang` (Babel); empty when Babel has no such locale."""
    from babel import Locale, UnknownLocaleError

    try:
        loc = Locale.parse({"no": "nb"}.get(lang, lang))
    except (UnknownLocaleError, ValueError):
        return []
    names: list[str] = []
    for table in (loc.languages, loc.territories, loc.scripts, loc.currencies):
        names.extend(table.values())
    names.extend(loc.months["format"]["wide"].values())
    names.extend(loc.days["format"]["wide"].values())
    return names


def training_split(cfg: LangIdConfig) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(train, heldout) texts by language; CLDR names only ever go to train."""
    train: dict[str, list[str]] = {}
    heldout: dict[str, list[str]] = {}
    for lang, strings in catalog_texts().items():
        train[lang] = [s for s in strings if not _is_heldout(s, cfg.heldout_every)]
        heldout[lang] = [s for s in strings if _is_heldout(s, cfg.heldout_every)]
        if sum(map(len, train[lang])) < cfg.cldr_below_chars:
            train[lang].extend(cldr_texts(lang))
    return train, heldout


@dataclass(frozen=True)
class LangCheck:
    """The language found in one text and whether it is the wrong one (None: not judged)."""

    detected: str | None
    wrong: bool | None


class LanguageIdentifier:
    """Naive Bayes over character n-grams with a uniform prior over classes.

    Shapes: V n-gram vocabulary, C classes (languages, some split by script).
    `delta` (V, C) sparse: log P(g|c) - log((1 - mix) P_pooled(g)), non-zero only where c saw g;
    the subtracted term is the same for every class, so it drops out of every comparison.
    """

    def __init__(
        self,
        classes: Sequence[str],
        vocab: Sequence[str],
        delta: sparse.csr_matrix,
        config: LangIdConfig,
    ) -> None:
        self.classes = tuple(classes)
        self.class_langs = tuple(SCRIPT_CLASSES.get(c, c) for c in self.classes)
        self.langs = tuple(sorted(set(self.class_langs)))
        self.index = {g: i for i, g in enumerate(vocab)}
        self.vocab = list(vocab)
        self.delta = delta.tocsr()
        self.config = config

    @classmethod
    def train(cls, texts: dict[str, list[str]], config: LangIdConfig) -> LanguageIdentifier:
        """Fit the model on texts by class (a language, or a locale in SCRIPT_CLASSES)."""
        classes = sorted(texts)
        counts = [ngrams(clean_text("\n".join(texts[c])), config.max_order) for c in classes]
        pooled: Counter[str] = Counter()
        for c in counts:
            pooled.update(c)
        vocab = sorted(g for g, k in pooled.items() if k >= config.min_count)
        index = {g: i for i, g in enumerate(vocab)}
        pooled_count = np.array([pooled[g] for g in vocab], dtype=np.float64)
        pooled_order = np.array([len(g) for g in vocab])
        pooled_total = np.zeros(config.max_order + 1)
        for g, k in pooled.items():
            pooled_total[len(g)] += k
        pooled_prob = pooled_count / pooled_total[pooled_order]  # (V,)
        odds = config.mix / (1.0 - config.mix)
        rows, cols, vals = [], [], []
        for j, c in enumerate(counts):
            idx = np.fromiter(map(index.get, c, repeat(-1)), dtype=np.int64, count=len(c))
            k = np.fromiter(c.values(), dtype=np.float64, count=len(c))
            order = np.fromiter(map(len, c), dtype=np.int64, count=len(c))
            own_prob = k / np.bincount(order, k, config.max_order + 1)[order]
            kept = idx >= 0
            # log P(g|c) - log((1-mix) P_pooled(g)), P(g|c) = mix P_ml(g|c) + (1-mix) P_pooled(g)
            rows.append(idx[kept])
            cols.append(np.full(kept.sum(), j))
            vals.append(np.log1p(odds * own_prob[kept] / pooled_prob[idx[kept]]))
        rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        delta = sparse.csr_matrix((vals, (rows, cols)), shape=(len(vocab), len(classes)))
        return cls(classes, vocab, delta, config)

    def scores(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Log-likelihood ratio of each text, each class against the pooled background (N, C),
        and the text's n-gram count (N,)."""
        data, rows, cols = [], [], []
        order_counts = np.zeros((len(texts), self.config.max_order))
        for r, text in enumerate(texts):
            for g, k in ngrams(clean_text(text), self.config.max_order).items():
                order_counts[r, len(g) - 1] += k
                i = self.index.get(g)
                if i is not None:
                    rows.append(r)
                    cols.append(i)
                    data.append(k)
        features = sparse.csr_matrix((data, (rows, cols)), shape=(len(texts), len(self.vocab)))
        return (features @ self.delta).toarray(), order_counts.sum(axis=1)

    def _allowed(self, candidates: Iterable[str] | None) -> np.ndarray:
        if candidates is None:
            return np.ones(len(self.classes), dtype=bool)
        wanted = set(candidates)
        return np.array([lang in wanted for lang in self.class_langs])

    def predict(
        self, texts: Sequence[str], candidates: Iterable[str] | None = None, min_letters: int = 10
    ) -> list[str | None]:
        """The most likely language of each text; None for texts under `min_letters` letters.

        `candidates` restricts the choice to those languages (unknown codes are ignored)."""
        return [c.detected for c in self.check(texts, [None] * len(texts), candidates, min_letters)]

    def check(
        self,
        texts: Sequence[str],
        expected: Sequence[str | None],
        candidates: Iterable[str] | None = None,
        min_letters: int = 10,
        margin: float = 0.1,
    ) -> list[LangCheck]:
        """Detect each text's language and judge whether it is not the `expected` one.

        A text is in the wrong language when the best candidate beats the expected language by
        more than `margin` nats per character n-gram, so near-ties between close languages
        (no/da/nn, bs/hr/sr, ms/id, gl/es) are not counted. Texts with fewer than `min_letters`
        letters, and expected languages the model does not know, are not judged (`wrong=None`).
        """
        if len(texts) != len(expected):
            raise ValueError(f"{len(texts)} texts but {len(expected)} expected languages")
        if not texts:
            return []
        allowed = self._allowed(candidates)
        if not allowed.any():
            return [LangCheck(None, None) for _ in texts]
        loglik, counts = self.scores(texts)
        best = np.where(allowed, loglik, -np.inf).argmax(axis=1)
        out = []
        for r, text in enumerate(texts):
            if len(clean_text(text).replace(" ", "")) < min_letters:
                out.append(LangCheck(None, None))
                continue
            detected = self.class_langs[best[r]]
            want = expected[r]
            own = [j for j, lang in enumerate(self.class_langs) if lang == want]
            if not own:
                out.append(LangCheck(detected, None))
                continue
            gap = (loglik[r, best[r]] - loglik[r, own].max()) / max(counts[r], 1.0)
            out.append(LangCheck(detected, bool(detected != want and gap > margin)))
        return out

    def save(self, path: Path) -> None:
        """Write the model to one .npz file (atomically)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez_compressed(
            tmp,
            classes=np.array(self.classes),
            vocab=np.array(self.vocab),
            data=self.delta.data,
            indices=self.delta.indices,
            indptr=self.delta.indptr,
            shape=np.array(self.delta.shape),
            config=np.array(json.dumps(asdict(self.config))),
        )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> LanguageIdentifier:
        """Read a model written by `save`."""
        with np.load(path, allow_pickle=False) as z:
            delta = sparse.csr_matrix(
                (z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"])
            )
            config = LangIdConfig(**json.loads(str(z["config"])))
            classes = [str(c) for c in z["classes"]]
            return cls(classes, [str(g) for g in z["vocab"]], delta, config)


def _cache_path(config: LangIdConfig) -> Path:
    key = {
        "format": FORMAT_VERSION,
        "config": asdict(config),
        "django": metadata.version("django"),
        "babel": metadata.version("babel"),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"langid-{digest}.npz"


@functools.lru_cache(maxsize=4)
def get_identifier(config: LangIdConfig = LangIdConfig()) -> LanguageIdentifier:
    """The cached identifier: loaded from `cache_dir()`, or trained and saved there first."""
    path = _cache_path(config)
    if path.is_file():
        try:
            return LanguageIdentifier.load(path)
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring unreadable language-id cache %s (%s); retraining", path, err)
    log.info("training the n-gram language identifier (once; cached at %s)", path)
    model = LanguageIdentifier.train(training_split(config)[0], config)
    try:
        model.save(path)
    except OSError as err:
        log.warning("could not cache the language identifier at %s: %s", path, err)
    return model


def heldout_accuracy(
    model: LanguageIdentifier | None = None, min_letters: int = 25
) -> tuple[float, int]:
    """(accuracy, count) of `model` on the catalog strings held out of its training, counting
    only strings with at least `min_letters` letters (short UI strings such as "Save" are not
    what ASR/ST outputs look like)."""
    model = model or get_identifier()
    texts, gold = [], []
    for cls_name, strings in training_split(model.config)[1].items():
        for text in strings:
            if len(clean_text(text).replace(" ", "")) >= min_letters:
                texts.append(text)
                gold.append(SCRIPT_CLASSES.get(cls_name, cls_name))
    if not texts:
        raise ValueError("no held-out strings: the model was trained with heldout_every=0")
    pred = model.predict(texts, min_letters=min_letters)
    return sum(p == g for p, g in zip(pred, gold)) / len(gold), len(gold)
