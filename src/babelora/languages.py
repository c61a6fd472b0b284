"""Language codes: ISO 639-1 (as Whisper spells them) and their names.

Language is metadata in babelora: it routes experts and is rendered into each backbone's prompt.
The order below is Whisper's token order (the 99 first languages are the original vocabulary;
`yue` was added by large-v3), so `lang_token_offset(code)` gives the position of `<|code|>` after
`<|startoftranscript|>`.
"""

from __future__ import annotations

from babelora.errors import LanguageError

WHISPER_LANGUAGES: tuple[tuple[str, str], ...] = (
    ("en", "english"),
    ("zh", "chinese"),
    ("de", "german"),
    ("es", "spanish"),
    ("ru", "russian"),
    ("ko", "korean"),
    ("fr", "french"),
    ("ja", "japanese"),
    ("pt", "portuguese"),
    ("tr", "turkish"),
    ("pl", "polish"),
    ("ca", "catalan"),
    ("nl", "dutch"),
    ("ar", "arabic"),
    ("sv", "swedish"),
    ("it", "italian"),
    ("id", "indonesian"),
    ("hi", "hindi"),
    ("fi", "finnish"),
    ("vi", "vietnamese"),
    ("he", "hebrew"),
    ("uk", "ukrainian"),
    ("el", "greek"),
    ("ms", "malay"),
    ("cs", "czech"),
    ("ro", "romanian"),
    ("da", "danish"),
    ("hu", "hungarian"),
    ("ta", "tamil"),
    ("no", "norwegian"),
    ("th", "thai"),
    ("ur", "urdu"),
    ("hr", "croatian"),
    ("bg", "bulgarian"),
    ("lt", "lithuanian"),
    ("la", "latin"),
    ("mi", "maori"),
    ("ml", "malayalam"),
    ("cy", "welsh"),
    ("sk", "slovak"),
    ("te", "telugu"),
    ("fa", "persian"),
    ("lv", "latvian"),
    ("bn", "bengali"),
    ("sr", "serbian"),
    ("az", "azerbaijani"),
    ("sl", "slovenian"),
    ("kn", "kannada"),
    ("et", "estonian"),
    ("mk", "macedonian"),
    ("br", "breton"),
    ("eu", "basque"),
    ("is", "icelandic"),
    ("hy", "armenian"),
    ("ne", "nepali"),
    ("mn", "mongolian"),
    ("bs", "bosnian"),
    ("kk", "kazakh"),
    ("sq", "albanian"),
    ("sw", "swahili"),
    ("gl", "galician"),
    ("mr", "marathi"),
    ("pa", "punjabi"),
    ("si", "sinhala"),
    ("km", "khmer"),
    ("sn", "shona"),
    ("yo", "yoruba"),
    ("so", "somali"),
    ("af", "afrikaans"),
    ("oc", "occitan"),
    ("ka", "georgian"),
    ("be", "belarusian"),
    ("tg", "tajik"),
    ("sd", "sindhi"),
    ("gu", "gujarati"),
    ("am", "amharic"),
    ("yi", "yiddish"),
    ("lo", "lao"),
    ("uz", "uzbek"),
    ("fo", "faroese"),
    ("ht", "haitian creole"),
    ("ps", "pashto"),
    ("tk", "turkmen"),
    ("nn", "nynorsk"),
    ("mt", "maltese"),
    ("sa", "sanskrit"),
    ("lb", "luxembourgish"),
    ("my", "myanmar"),
    ("bo", "tibetan"),
    ("tl", "tagalog"),
    ("mg", "malagasy"),
    ("as", "assamese"),
    ("tt", "tatar"),
    ("haw", "hawaiian"),
    ("ln", "lingala"),
    ("ha", "hausa"),
    ("ba", "bashkir"),
    ("jw", "javanese"),
    ("su", "sundanese"),
    ("yue", "cantonese"),
)
LANG_NAMES: dict[str, str] = dict(WHISPER_LANGUAGES)
LANG_CODES: tuple[str, ...] = tuple(LANG_NAMES)
CER_LANGS = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
"""Languages scored by character error rate (no spaces between words)."""


def check_lang(code: str, allowed: tuple[str, ...] | list[str] | None = None) -> str:
    """Return `code` normalised (lower case, `_`/`-` region dropped) or raise LanguageError."""
    if not isinstance(code, str) or not code.strip():
        raise LanguageError(f"language code must be a non-empty string, got {code!r}")
    norm = code.strip().lower().replace("_", "-").split("-")[0]
    pool = tuple(allowed) if allowed is not None else LANG_CODES
    if norm not in pool:
        shown = ", ".join(sorted(pool)) if len(pool) <= 30 else f"{len(pool)} Whisper codes"
        raise LanguageError(f"unknown language code {code!r}; expected one of: {shown}")
    return norm


def lang_token_offset(code: str) -> int:
    """Index of `<|code|>` among Whisper's language tokens (0 for English)."""
    return LANG_CODES.index(check_lang(code))
