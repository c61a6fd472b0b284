"""WER/CER on hand-computed cases; BLEU/chrF equal sacrebleu called directly, with signatures."""

import logging

import pytest
import sacrebleu

from babelora.errors import DependencyError, LanguageError
from babelora.evaluate import metrics
from babelora.evaluate.metrics import bleu, cer, chrf, error_rate, language_confusion, wer


def test_wer_hand_computed():
    # "sit" for "sat" (1 substitution), "the" dropped (1 deletion): 2 errors / 6 words
    r = wer(["the cat sit on mat"], ["the cat sat on the mat"], "en")
    assert (r.substitutions, r.deletions, r.insertions, r.hits) == (1, 1, 0, 4)
    assert r.score == pytest.approx(100 * 2 / 6)
    assert (r.errors, r.ref_len, r.unit) == (2, 6, "word")


def test_wer_pools_errors_over_the_corpus():
    # utt 1: no error (4 words); utt 2: 1 sub + 1 ins (2 words) -> 2 / 6, not mean(0, 100)
    r = wer(["a b c d", "e g h"], ["a b c d", "e f"], "de")
    assert (r.substitutions, r.insertions) == (1, 1)
    assert r.score == pytest.approx(100 * 2 / 6)


def test_normalized_vs_orthographic_wer():
    hyps, refs = ["hello world"], ["Hello, World!"]
    assert wer(hyps, refs, "en").score == 0.0
    assert wer(hyps, refs, "en", normalize=False).score == 100.0  # both words differ raw


def test_english_normalizer_only_for_english():
    assert wer(["the color"], ["the colour"], "en").score == 0.0
    assert wer(["the color"], ["the colour"], "de").score == 50.0


def test_empty_references():
    assert wer([""], [""], "en").score == 0.0
    assert wer(["two words"], [""], "en").score == 200.0  # errors / max(N, 1)
    assert wer(["", "a"], ["x", "a"], "en").score == 50.0


def test_cer_hand_computed_for_unspaced_scripts():
    r = cer(["今天天汽很好"], ["今天天气很好。"], "zh")  # 1 substitution over 6 characters
    assert (r.substitutions, r.ref_len, r.unit) == (1, 6, "char")
    assert r.score == pytest.approx(100 / 6)
    assert cer(["今天 天气很好"], ["今天天气很好"], "zh").score == 0.0  # spaces dropped
    assert cer(["これはペンです"], ["これは、ペンです。"], "ja").score == 0.0


def test_cer_keeps_spaces_for_spaced_scripts():
    r = cer(["abcd"], ["abc d"], "en")  # the space is a character: 1 deletion over 5
    assert (r.deletions, r.ref_len) == (1, 5)
    assert r.score == pytest.approx(20.0)
    assert cer(["abcd"], ["abc d"], "en", keep_spaces=False).score == 0.0


@pytest.mark.parametrize(
    ("lang", "metric"),
    [
        ("zh", "cer"),
        ("ja", "cer"),
        ("th", "cer"),
        ("lo", "cer"),
        ("my", "cer"),
        ("yue", "cer"),
        ("en", "wer"),
        ("de", "wer"),
        ("ko", "wer"),
    ],
)
def test_error_rate_picks_cer_for_unspaced_languages(lang, metric):
    assert metrics.asr_metric(lang) == metric
    assert error_rate(["x"], ["x"], lang).unit == ("char" if metric == "cer" else "word")


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        wer(["a", "b"], ["a"], "en")
    with pytest.raises(TypeError):
        wer("a b", "a b", "en")
    with pytest.raises(LanguageError, match="xx"):
        cer(["a"], ["a"], "xx")


HYPS = ["The cat sat on the mat.", "It is raining today in Berlin!", "He reads a book."]
REFS = ["The cat sat on a mat.", "Today it is raining in Berlin!", "He is reading a book."]


def test_bleu_equals_sacrebleu_with_signature(capsys):
    ours = bleu(HYPS, REFS, lang="en")
    direct = sacrebleu.corpus_bleu(HYPS, [REFS])
    assert ours.score == pytest.approx(direct.score, abs=1e-12)
    assert ours.name == "BLEU"
    assert "tok:13a" in ours.signature and "case:mixed" in ours.signature
    print(f"BLEU {ours.score:.2f} {ours.signature}")
    assert "nrefs:1|case:mixed" in capsys.readouterr().out


def test_bleu_is_case_sensitive_and_not_normalized():
    ref = ["The cat sat on the mat today."]
    assert bleu(ref, ref).score == pytest.approx(100.0)
    assert bleu(["the cat sat on the mat today."], ref).score < 100.0
    assert bleu(["The cat sat on the mat today"], ref).score < 100.0


def test_bleu_chinese_target_uses_zh_tokenizer():
    hyps, refs = ["今天天气很好。"], ["今天天气不错。"]
    ours = bleu(hyps, refs, lang="zh")
    assert "tok:zh" in ours.signature
    assert ours.score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score)


@pytest.mark.parametrize("lang", ["th", "lo", "my"])
def test_bleu_unsegmented_targets_use_char(lang):
    assert metrics.bleu_tokenizer(lang) == "char"


def test_bleu_japanese(caplog):
    hyps, refs = ["これはペンです。"], ["これは鉛筆です。"]
    if metrics.mecab_available():
        ours = bleu(hyps, refs, lang="ja")
        assert "tok:ja-mecab" in ours.signature
        direct = sacrebleu.corpus_bleu(hyps, [refs], tokenize="ja-mecab")
        assert ours.score == pytest.approx(direct.score)
        return
    with caplog.at_level(logging.WARNING):
        ours = bleu(hyps, refs, lang="ja")
    assert "tok:char" in ours.signature and "MeCab" in caplog.text
    assert ours.score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="char").score)
    with pytest.raises(DependencyError, match=r"sacrebleu\[ja\]"):
        bleu(hyps, refs, tokenize="ja-mecab")
    with pytest.raises(DependencyError, match="MeCab"):
        metrics.bleu_tokenizer("ja", japanese_fallback=None)


def test_chrf_and_chrf_plus_plus_equal_sacrebleu():
    c = chrf(HYPS, REFS)
    assert c.score == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert c.name == "chrF" and "nw:0" in c.signature
    cpp = chrf(HYPS, REFS, word_order=2)
    assert cpp.score == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS], word_order=2).score)
    assert cpp.name == "chrF++" and "nw:2" in cpp.signature
    assert chrf(REFS, REFS).score == pytest.approx(100.0)


def test_language_confusion_rate():
    assert language_confusion([True, False, None, False]) == pytest.approx(100 / 3)
    assert language_confusion([None, None]) is None
    assert language_confusion([]) is None
