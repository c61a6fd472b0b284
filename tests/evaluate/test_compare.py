"""Two systems on one test set: per-row differences equal the reports' scores, the interval is
the paired bootstrap's, and the verdict follows the metric's direction."""

from __future__ import annotations

import pytest

from babelora.evaluate import bootstrap as bs
from babelora.evaluate.compare import CompareConfig, compare, markdown
from babelora.evaluate.hypotheses import Hypothesis
from babelora.evaluate.report import score

REFS = [
    {"id": f"d{i}", "lang": "de", "text": t}
    for i, t in enumerate(["ein zwei drei", "vier fünf", "sechs sieben acht neun", "zehn elf"] * 5)
] + [
    {"id": f"s{i}", "lang": "fr", "task": "st", "text": "x", "translation": t, "target_lang": "en"}
    for i, t in enumerate(["the cat is on the mat", "it is raining today", "good morning all"] * 4)
]


def _hyps(fn):
    out = {}
    for r in REFS:
        ref = r.get("translation", r["text"])
        out[r["id"]] = Hypothesis(r["id"], fn(r["id"], ref))
    return out


def test_rows_match_the_report_and_the_bootstrap():
    worse = _hyps(lambda i, ref: ref.rsplit(" ", 1)[0] if int(i[1:]) % 2 else ref)
    perfect = _hyps(lambda i, ref: ref)
    diffs = {d.row: d for d in compare(worse, perfect, REFS, CompareConfig(n_resamples=200))}
    rows = {r.name: r for r in score(worse, REFS).rows}
    assert diffs["de"].a == pytest.approx(rows["de"].score)
    assert diffs["fr-en"].a == pytest.approx(rows["fr-en"].score)
    assert diffs["de"].b == 0.0 and diffs["fr-en"].b == pytest.approx(100.0)
    refs_de = [r["text"] for r in REFS if r["lang"] == "de"]
    expected = bs.paired_bootstrap(
        bs.wer_stats(refs_de, [worse[r["id"]].hypothesis for r in REFS[:20]], "de"),
        bs.wer_stats(refs_de, refs_de, "de"),
        bs.wer_from_stats,
        n_resamples=200,
    )
    assert diffs["de"].delta == expected
    assert diffs["de"].better == "b" and diffs["fr-en"].better == "b"  # lower WER, higher BLEU
    assert "de" in markdown(list(diffs.values())) and "neither" not in markdown([diffs["de"]])


def test_identical_systems_are_not_different():
    same = _hyps(lambda i, ref: ref.split(" ")[0])
    for d in compare(same, same, REFS, CompareConfig(n_resamples=50)):
        assert d.delta.estimate == 0.0 and d.better is None


def test_rows_without_a_language_are_refused():
    from babelora.data.manifest import Utterance
    from babelora.errors import ManifestError

    utt = Utterance(id="u", audio_filepath="a.wav", duration=1.0, lang=None, text="hallo")
    hyps = {"u": Hypothesis("u", "hallo", lang_used="de")}
    with pytest.raises(ManifestError, match="1 manifest rows have none"):
        compare(hyps, hyps, [utt])
