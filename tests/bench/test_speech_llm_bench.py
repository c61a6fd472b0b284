"""bench/speech_llm.py's protocol parts: the per-direction test sample, BLEU with intervals
split into X->en and en->X, and paired differences (the training and decoding run in its smoke
budget, by hand: minutes with Gemma)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import sacrebleu

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import speech_llm as S  # noqa: E402

from babelora.data.manifest import Utterance, write_manifest  # noqa: E402

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "we like green tea"]
TRANSLATIONS = {"de": "die katze sitzt", "fr": "le chat est assis"}


def utts() -> list[Utterance]:
    rows = []

    def st(uid: str, lang: str, ref: str, target: str) -> Utterance:
        return Utterance(
            uid, "a.wav", 1.0, lang, "st", "source", translation=ref, target_lang=target
        )

    for i, text in enumerate(SENTENCES * 2):
        rows.append(st(f"de{i}", "de", text, "en"))
        rows.append(st(f"fr{i}", "fr", text, "en"))
        for tgt, ref in TRANSLATIONS.items():
            rows.append(st(f"en{tgt}{i}", "en", f"{ref} {i}", tgt))
        rows.append(Utterance(f"asr{i}", "a.wav", 1.0, "de", "asr", text))
    return rows


def test_st_rows_takes_the_first_n_per_direction(tmp_path):
    path = write_manifest(utts(), tmp_path / "test.jsonl")
    got = S.st_rows(path, 2)
    assert sorted({S.direction(u) for u in got}) == ["de-en", "en-de", "en-fr", "fr-en"]
    assert len(got) == 8 and all(u.task == "st" for u in got)
    assert [u.id for u in got if u.lang == "de"] == ["de0", "de1"]  # manifest order
    assert {S.direction(u) for u in S.st_rows(path, None, x_en_only=True)} == {"de-en", "fr-en"}


def hyp_rows(rows: list[Utterance], wrong: set[str]) -> list[dict]:
    return [
        {"id": u.id, "hypothesis": "zzz" if u.id in wrong else u.reference, "lang": u.lang,
         "task": u.task, "target_lang": u.target_lang}
        for u in rows
    ]  # fmt: skip


def test_bleu_per_side_matches_sacrebleu():
    rows = [u for u in utts() if u.task == "st"]
    wrong = {"de0", "fr1", "ende2"}
    got = S.absolute(rows, hyp_rows(rows, wrong))
    assert set(got) == {"x_en", "en_x"}
    xen = [u for u in rows if u.lang != "en"]
    want = sacrebleu.corpus_bleu(
        ["zzz" if u.id in wrong else u.reference for u in xen], [[u.reference for u in xen]]
    ).score
    assert got["x_en"]["pooled"]["estimate"] == pytest.approx(want, abs=1e-6)
    assert got["en_x"]["en-fr"]["estimate"] == pytest.approx(100.0)
    assert got["en_x"]["en-de"]["estimate"] < 100.0
    assert got["x_en"]["pooled"]["low"] <= want <= got["x_en"]["pooled"]["high"]


def test_differences_split_the_two_directions_and_skip_missing_rows():
    rows = [u for u in utts() if u.task == "st"]
    perfect = hyp_rows(rows, set())
    worse = hyp_rows(rows, {u.id for u in rows if u.lang == "de"})
    zero_shot = [r for r in perfect if r["lang"] != "en"]  # X->en only, like Whisper's own
    diffs = S.differences(rows, zero_shot, worse)
    assert set(diffs) == {"x_en"}
    macro = S._macro(diffs, "x_en")
    assert macro["delta"]["estimate"] < 0 and macro["delta"]["high"] < 0  # de got worse
    both = S.differences(rows, perfect, worse)
    assert S._macro(both, "en_x")["delta"]["estimate"] == 0.0


def test_chrf_column_averages_each_side_over_its_directions():
    cell = {"scores": {"rows": {"de-en": {"chrf": 10.0}, "fr-en": {"chrf": 20.0},
                                "en-de": {"chrf": 40.0}}}}  # fmt: skip
    assert S._chrf(cell, "x_en") == "15.0" and S._chrf(cell, "en_x") == "40.0"
    assert S._chrf({}, "x_en") == "-"
