"""score(): per-language rows, macro averages, language confusion, ids, JSON and Markdown."""

import json

import pytest
import sacrebleu
from reference.langid_texts import KNOWN_TEXTS

from babelora.data.manifest import Utterance
from babelora.decode.runner import Result
from babelora.errors import ConfigError, ManifestError
from babelora.evaluate import ScoreConfig, score
from babelora.evaluate.hypotheses import Hypothesis
from babelora.evaluate.report import Report, score_results, write_report

EN, DE, FR = KNOWN_TEXTS["en"], KNOWN_TEXTS["de"], KNOWN_TEXTS["fr"]


def refs():
    return [
        {"id": "en1", "lang": "en", "text": "The cat sat on the mat."},
        {"id": "en2", "lang": "en", "text": "Hello world."},
        {"id": "de1", "lang": "de", "text": "Das Wetter ist heute schön."},
        {"id": "de2", "lang": "de", "text": "Wir gehen morgen in den Park."},
        {"id": "zh1", "lang": "zh", "text": "今天天气很好。"},
        {
            "id": "st1",
            "lang": "de",
            "task": "st",
            "text": DE[0],
            "translation": EN[0],
            "target_lang": "en",
        },
        {
            "id": "st2",
            "lang": "de",
            "task": "st",
            "text": DE[1],
            "translation": EN[1],
            "target_lang": "en",
        },
        {
            "id": "st3",
            "lang": "en",
            "task": "st",
            "text": EN[1],
            "translation": FR[1],
            "target_lang": "fr",
        },
    ]


HYPS = {
    "en1": "the cat sat on a mat",  # 1 substitution / 6 words
    "en2": "Hello world!",  # 0 after normalization
    "de1": "Das Wetter ist heute schön.",  # 0
    "de2": "Wir gehen morgen in Park.",  # 1 deletion / 6 words
    "zh1": "今天天气不好",  # 1 substitution / 6 characters
    "st1": "The weather is lovely today, let's go for a walk in the park.",
    "st2": DE[1],  # German "translation": the wrong language
    "st3": FR[1],
}


def rows_by_name(report):
    return {r.name: r for r in report.rows}


def test_per_language_table_and_macro_average():
    report = score(HYPS, refs())
    rows = rows_by_name(report)
    assert list(rows) == ["de", "en", "zh", "de-en", "en-fr"]
    assert rows["en"].score == pytest.approx(100 / 8)  # pooled: 1 error / 8 words
    assert rows["de"].score == pytest.approx(100 / 11)
    assert (rows["zh"].metric, rows["zh"].score) == ("cer", pytest.approx(100 / 6))
    assert rows["en"].normalizer == "whisper_english" and rows["de"].normalizer == "whisper_basic"
    assert rows["en"].ortho > rows["en"].score  # case and punctuation count when unnormalized
    asr = report.averages["asr"]
    assert asr["wer"] == pytest.approx((100 / 8 + 100 / 11) / 2)  # macro, not pooled
    assert asr["cer"] == pytest.approx(100 / 6)
    assert asr["error_rate"] == pytest.approx((100 / 8 + 100 / 11 + 100 / 6) / 3)
    assert (asr["languages"], asr["n"]) == (3, 5)


def test_st_rows_equal_sacrebleu_per_direction():
    report = score(HYPS, refs())
    row = rows_by_name(report)["de-en"]
    hyps, ref = [HYPS["st1"], HYPS["st2"]], [EN[0], EN[1]]
    assert row.score == pytest.approx(sacrebleu.corpus_bleu(hyps, [ref]).score)
    assert row.chrf == pytest.approx(sacrebleu.corpus_chrf(hyps, [ref]).score)
    assert row.chrf_pp == pytest.approx(sacrebleu.corpus_chrf(hyps, [ref], word_order=2).score)
    assert "tok:13a" in row.bleu_signature
    fr = rows_by_name(report)["en-fr"]
    assert fr.score == pytest.approx(100.0)
    st = report.averages["st"]
    assert st["bleu"] == pytest.approx((row.score + fr.score) / 2)
    md = report.to_markdown()
    assert row.bleu_signature in md and "| de-en | 2 |" in md


def test_language_confusion_on_known_language_outputs():
    report = score(HYPS, refs())
    rows = rows_by_name(report)
    assert rows["de-en"].lid_judged == 2 and rows["de-en"].lid_wrong == 1
    assert rows["de-en"].confusion == pytest.approx(50.0)
    assert rows["de-en"].wrong_langs == {"de": 1}
    assert rows["en-fr"].confusion == 0.0
    assert rows["de"].confusion == 0.0
    assert rows["en"].lid_judged == 2
    assert rows["zh"].lid_judged == 0 and rows["zh"].confusion is None  # under 10 letters
    lc = report.averages["language_confusion"]
    assert lc["wrong"] == 1 and lc["micro"] == pytest.approx(100 / lc["judged"])


def test_all_wrong_language():
    refs_de = [{"id": f"d{i}", "lang": "de", "text": t} for i, t in enumerate(DE)]
    report = score({f"d{i}": t for i, t in enumerate(EN)}, refs_de)
    assert report.rows[0].confusion == 100.0
    assert report.rows[0].wrong_langs == {"en": 2}
    off = score({f"d{i}": t for i, t in enumerate(EN)}, refs_de, ScoreConfig(langid=False))
    assert off.rows[0].confusion is None and off.averages["language_confusion"]["judged"] == 0


def test_lang_source_and_lang_used():
    rs = refs()[:4]
    hyps = [
        {"id": "en1", "hypothesis": "the cat", "lang_used": "en", "lang_source": "predicted"},
        {"id": "en2", "hypothesis": "hello", "lang_used": "de", "lang_source": "predicted"},
        {"id": "de1", "hypothesis": "das", "lang_used": "de", "lang_source": "given"},
        {"id": "de2", "hypothesis": "wir", "lang_used": "de"},
    ]
    rows = rows_by_name(score(hyps, rs))
    assert rows["en"].lang_source == "predicted"
    assert rows["en"].lang_used_accuracy == 50.0
    assert rows["de"].lang_source == "mixed"  # one given, one not said
    rows = rows_by_name(score(hyps, rs, ScoreConfig(lang_source="given")))
    assert rows["de"].lang_source == "given"
    rows = rows_by_name(score(HYPS, refs()))
    assert rows["de"].lang_source == "unknown" and rows["de"].lang_used_accuracy is None


def test_utterances_and_positional_strings():
    utts = [
        Utterance("u1", "/nowhere/u1.wav", 1.0, "en", text="Hello world."),
        Utterance("u2", "/nowhere/u2.wav", 1.0, "de", "st", DE[0], EN[0], "en"),
    ]
    report = score(["hello world", EN[0]], utts)
    rows = rows_by_name(report)
    assert rows["en"].score == 0.0 and rows["de-en"].score == pytest.approx(100.0)
    with pytest.raises(ManifestError, match="1 hypothesis strings for 2 references"):
        score(["x"], utts)
    report = score([Hypothesis("u1", "hello world"), Hypothesis("u2", "Hello world.")], utts)
    assert report.counts["scored"] == 2


def test_missing_and_extra_ids():
    rs = refs()[:4]
    hyps = {"en1": "the cat sat on a mat", "zz9": "who am I"}
    with pytest.raises(
        ManifestError,
        match=r"3 of 4 utterances have no hypothesis: 'en2', "
        r"'de1', 'de2'.*--allow-missing",
    ):
        score(hyps, rs)
    report = score(hyps, rs, ScoreConfig(allow_missing=True))
    assert report.missing_ids == ["en2", "de1", "de2"] and report.extra_ids == ["zz9"]
    assert report.counts == {
        "references": 4,
        "hypotheses": 2,
        "scored": 1,
        "missing": 3,
        "extra": 1,
        "failed": 0,
    }
    rows = rows_by_name(report)
    assert rows["de"].missing == 2 and rows["de"].score == 100.0  # empty outputs: all deleted


def test_failed_hypotheses_score_as_empty():
    rs = refs()[:2]
    hyps = [{"id": "en1", "error": "AudioError: empty"}, {"id": "en2", "hyp": "hello world"}]
    report = score(hyps, rs)
    assert report.counts["failed"] == 1
    assert rows_by_name(report)["en"].score == pytest.approx(600 / 8)


def test_bad_references_and_config():
    with pytest.raises(ManifestError, match=r"references\[0\]: field 'lang' is missing"):
        score({"a": "x"}, [{"id": "a", "text": "x"}])
    with pytest.raises(ManifestError, match=r"references\[0\]: .*'xx'"):
        score({"a": "x"}, [{"id": "a", "lang": "xx"}])
    with pytest.raises(ManifestError, match="needs translation and target_lang"):
        score({"a": "x"}, [{"id": "a", "lang": "de", "task": "st"}])
    with pytest.raises(ManifestError, match="'a' is a duplicate"):
        score({"a": "x"}, [{"id": "a", "lang": "de"}, {"id": "a", "lang": "de"}])
    with pytest.raises(ManifestError, match=r"hypotheses\[1\]: field 'id' 'a' is a duplicate"):
        score(
            [{"id": "a", "hypothesis": "x"}, {"id": "a", "hypothesis": "y"}],
            [{"id": "a", "lang": "de"}],
        )
    with pytest.raises(ConfigError, match="lid_candidates"):
        ScoreConfig(lid_candidates="some")


def test_json_and_markdown_outputs():
    report = score(HYPS, refs())
    data = json.loads(json.dumps(report.to_json()))
    assert [r["name"] for r in data["rows"]] == ["de", "en", "zh", "de-en", "en-fr"]
    assert data["settings"]["lid_margin"] == 0.2 and "mecab_available" in data["settings"]
    assert data["averages"]["asr"]["languages"] == 3
    md = report.to_markdown()
    assert "## ASR" in md and "## ST" in md and "**macro avg**" in md
    assert "| en | 2 | WER | 12.50 |" in md
    assert "Language confusion:" in md and "Counts: 8 references" in md


def test_score_results_and_write_report_round_trip(tmp_path):
    data = score_results(refs(), HYPS)
    data.setdefault("meta", {}).update(model="tiny.en", beam_size=1, lang_source="given")
    write_report(data, tmp_path / "r.json", tmp_path / "r.md")
    loaded = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert loaded == json.loads(json.dumps(data))
    md = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert "Run: model=tiny.en, beam_size=1, lang_source=given" in md
    assert Report.from_json(loaded).to_markdown() == md
    write_report(score(HYPS, refs()), markdown_path=tmp_path / "only.md")
    assert not (tmp_path / "only.json").exists() and (tmp_path / "only.md").is_file()


def test_decode_runner_results_score_directly():
    results = [
        Result("en1", "the cat sat on the mat", lang="en", lang_source="predicted"),
        Result("en2", "", lang="en", lang_source="predicted", error="AudioError: empty"),
    ]
    data = score_results(refs()[:2], [r.to_json() for r in results])
    row = data["rows"][0]
    assert (row["lang_source"], row["lang_used_accuracy"], row["failed"]) == ("predicted", 100.0, 1)
