"""Corpus-level ASR and ST metrics as pure functions, computed the way the papers do.

- WER / CER: jiwer edit distance, pooled over the corpus (100 * (S + D + I) / N, N = reference
  words or characters), after Whisper's normalizer for the language (`normalize.py`). With
  `normalize=False` the raw text is scored: the "orthographic" WER of SLAM-LLM and NeMo PnC.
  CER drops whitespace for languages written without spaces between words (`CER_LANGS`) and keeps
  it (as a character) otherwise, as jiwer does.
- BLEU / chrF / chrF++: sacrebleu on raw, detokenized, case-sensitive text; tokenizer `13a`,
  `zh` for Chinese targets, `ja-mecab` for Japanese, `char` for Thai, Lao and Burmese (unsegmented
  scripts, as SeamlessM4T does). Each score keeps sacrebleu's signature.
- Language confusion: the share of judged outputs that are in the wrong language.

Scores are percentages (0-100), as sacrebleu reports them. A corpus with no reference words but
some hypothesis words scores 100 * insertions (errors are divided by max(N, 1)).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import jiwer
from sacrebleu.metrics import BLEU, CHRF

from babelora.errors import DependencyError
from babelora.evaluate.normalize import normalize as normalize_text
from babelora.languages import CER_LANGS, check_lang

log = logging.getLogger(__name__)

BLEU_TOKENIZERS = {
    "zh": "zh",
    "yue": "zh",
    "ja": "ja-mecab",
    "th": "char",
    "lo": "char",
    "my": "char",
}
"""Target language -> sacrebleu tokenizer; every other language gets `13a`."""


@dataclass(frozen=True)
class ErrorRate:
    """An edit-distance rate over a corpus: score = 100 * (S + D + I) / max(N, 1)."""

    score: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    unit: str  # "word" or "char"

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def ref_len(self) -> int:
        """N: reference words (or characters)."""
        return self.substitutions + self.deletions + self.hits


@dataclass(frozen=True)
class CorpusScore:
    """A sacrebleu corpus score with the signature that makes it reproducible."""

    name: str  # "BLEU", "chrF" or "chrF++"
    score: float
    signature: str


def _check_pair(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if isinstance(hyps, str) or isinstance(refs, str):
        raise TypeError("hyps and refs must be sequences of strings, not one string")
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")


def _rate(out: jiwer.WordOutput | jiwer.CharacterOutput, unit: str) -> ErrorRate:
    s, d, i, h = out.substitutions, out.deletions, out.insertions, out.hits
    return ErrorRate(100.0 * (s + d + i) / max(s + d + h, 1), s, d, i, h, unit)


def wer(hyps: Sequence[str], refs: Sequence[str], lang: str, normalize: bool = True) -> ErrorRate:
    """Word error rate of `hyps` against `refs` in `lang`; `normalize=False`: orthographic."""
    _check_pair(hyps, refs)
    if normalize:
        hyps = [normalize_text(h, lang) for h in hyps]
        refs = [normalize_text(r, lang) for r in refs]
    # jiwer's default transform strips and splits on whitespace; empty strings are allowed
    return _rate(jiwer.process_words(list(refs), list(hyps)), "word")


def cer(
    hyps: Sequence[str],
    refs: Sequence[str],
    lang: str,
    normalize: bool = True,
    keep_spaces: bool | None = None,
) -> ErrorRate:
    """Character error rate; spaces are dropped for `CER_LANGS` unless `keep_spaces` says."""
    _check_pair(hyps, refs)
    lang = check_lang(lang)
    if normalize:
        hyps = [normalize_text(h, lang) for h in hyps]
        refs = [normalize_text(r, lang) for r in refs]
    if keep_spaces is None:
        keep_spaces = lang not in CER_LANGS
    if keep_spaces:
        hyps = [" ".join(h.split()) for h in hyps]
        refs = [" ".join(r.split()) for r in refs]
    else:
        hyps = ["".join(h.split()) for h in hyps]
        refs = ["".join(r.split()) for r in refs]
    return _rate(jiwer.process_characters(list(refs), list(hyps)), "char")


def asr_metric(lang: str) -> str:
    """'cer' for languages written without word spaces (zh, ja, th, lo, my, yue), else 'wer'."""
    return "cer" if check_lang(lang) in CER_LANGS else "wer"


def error_rate(
    hyps: Sequence[str], refs: Sequence[str], lang: str, normalize: bool = True
) -> ErrorRate:
    """WER or CER, whichever `asr_metric(lang)` names."""
    fn = cer if asr_metric(lang) == "cer" else wer
    return fn(hyps, refs, lang, normalize=normalize)


@functools.lru_cache(maxsize=1)
def mecab_available() -> bool:
    """Whether sacrebleu's `ja-mecab` tokenizer can run (`pip install sacrebleu[ja]`)."""
    from sacrebleu.tokenizers.tokenizer_ja_mecab import TokenizerJaMecab

    try:
        TokenizerJaMecab()
    except (ImportError, RuntimeError):
        return False
    return True


def bleu_tokenizer(lang: str | None, japanese_fallback: str | None = "char") -> str:
    """sacrebleu tokenizer for a target language (`13a` when `lang` is None or not listed).

    `ja-mecab` needs `sacrebleu[ja]`; without it Japanese falls back to `japanese_fallback`
    (default `char`, with a warning; the signature records it), or raises DependencyError when
    `japanese_fallback` is None."""
    tokenize = BLEU_TOKENIZERS.get(check_lang(lang), "13a") if lang else "13a"
    if tokenize == "ja-mecab" and not mecab_available():
        if japanese_fallback is None:
            raise DependencyError(
                "BLEU on Japanese targets uses sacrebleu's 'ja-mecab' tokenizer, which needs "
                "MeCab: `pip install 'sacrebleu[ja]'` (or score with tokenize='char')"
            )
        log.warning("MeCab is not installed: Japanese BLEU uses tok:%s", japanese_fallback)
        tokenize = japanese_fallback
    return tokenize


def bleu(
    hyps: Sequence[str],
    refs: Sequence[str],
    lang: str | None = None,
    tokenize: str | None = None,
) -> CorpusScore:
    """Corpus BLEU (sacrebleu) on raw detokenized text; `tokenize` defaults by target `lang`."""
    _check_pair(hyps, refs)
    if tokenize == "ja-mecab":
        tokenize = bleu_tokenizer("ja", japanese_fallback=None)
    metric = BLEU(tokenize=tokenize or bleu_tokenizer(lang))
    result = metric.corpus_score(list(hyps), [list(refs)])
    return CorpusScore("BLEU", result.score, str(metric.get_signature()))


def chrf(hyps: Sequence[str], refs: Sequence[str], word_order: int = 0) -> CorpusScore:
    """Corpus chrF (`word_order=0`) or chrF++ (`word_order=2`) with sacrebleu."""
    _check_pair(hyps, refs)
    metric = CHRF(word_order=word_order)
    result = metric.corpus_score(list(hyps), [list(refs)])
    name = "chrF++" if word_order == 2 else "chrF" if word_order == 0 else f"chrF+{word_order}"
    return CorpusScore(name, result.score, str(metric.get_signature()))


def language_confusion(wrong: Sequence[bool | None]) -> float | None:
    """Percentage of judged outputs (not None) in the wrong language; None if none was judged."""
    judged = [w for w in wrong if w is not None]
    return 100.0 * sum(judged) / len(judged) if judged else None
