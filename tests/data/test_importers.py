"""CoVoST-2, MuST-C and FLEURS importers on tiny fixtures laid out like the real corpora."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from babelora.cli.main import main
from babelora.data.audio import SAMPLE_RATE, load_audio
from babelora.data.importers import import_covost2, import_fleurs, import_mustc
from babelora.data.manifest import read_manifest
from babelora.errors import DependencyError, LanguageError, ManifestError


def _tone(seconds: float, sr: int, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# --- CoVoST-2 -------------------------------------------------------------------------------------


def _covost(root: Path) -> tuple[Path, Path]:
    clips = root / "cv" / "de" / "clips"
    clips.mkdir(parents=True)
    for i in range(4):
        sf.write(
            clips / f"common_voice_de_{i}.mp3", _tone(1.0 + 0.5 * i, 48000), 48000, format="MP3"
        )
    tsv = root / "covost"
    tsv.mkdir()
    header = "path\tsentence\ttranslation\tclient_id\n"
    (tsv / "covost_v2.de_en.train.tsv").write_text(
        header
        + "common_voice_de_0.mp3\tGuten Morgen.\tGood morning.\tspk1\n"
        + "common_voice_de_1.mp3\tWie geht's?\tHow are you?\tspk2\n"
        + "common_voice_de_missing.mp3\tFehlt.\tMissing.\tspk3\n"
        + "common_voice_de_2.mp3\tnur zwei Spalten\n"
        + 'common_voice_de_3.mp3\tEr sagte "ja".\tHe said "yes".\tspk1\n',
        encoding="utf-8",
    )
    for split, i in (("dev", 1), ("test", 2)):
        (tsv / f"covost_v2.de_en.{split}.tsv").write_text(
            header + f"common_voice_de_{i}.mp3\tHallo {split}.\tHello {split}.\tspk9\n",
            encoding="utf-8",
        )
    return tsv, clips


def test_covost2_imports_good_rows_and_names_bad_ones(tmp_path):
    tsv, clips = _covost(tmp_path)
    report = import_covost2(tsv, clips, "de", "en", tmp_path / "out")
    assert set(report.manifests) == {f"covost2.de_en.{s}" for s in ("train", "dev", "test")}
    train = read_manifest(tmp_path / "out" / "covost2.de_en.train.jsonl")
    st = [u for u in train if u.task == "st"]
    assert [u.text for u in st] == ["Guten Morgen.", "Wie geht's?", 'Er sagte "ja".']
    assert [u.translation for u in st] == ["Good morning.", "How are you?", 'He said "yes".']
    assert all(u.lang == "de" and u.target_lang == "en" for u in st)
    assert len([u for u in train if u.task == "asr"]) == 3
    assert st[1].duration == pytest.approx(1.5, abs=0.1)
    assert st[0].audio_filepath == str((clips / "common_voice_de_0.mp3").resolve())
    assert load_audio(st[0].audio_filepath).shape[0] == pytest.approx(16000, abs=1200)
    assert st[0].source == {
        "corpus": "covost2",
        "split": "train",
        "client_id": "spk1",
        "clip": "common_voice_de_0.mp3",
    }
    assert len(report.skipped) == 2
    assert "covost_v2.de_en.train.tsv:4" in report.skipped[0] and "not found" in report.skipped[0]
    assert "covost_v2.de_en.train.tsv:5" in report.skipped[1] and "columns" in report.skipped[1]
    assert "skipped 2 row(s)" in report.summary()


def test_covost2_converts_to_wav_on_request(tmp_path):
    tsv, clips = _covost(tmp_path)
    import_covost2(
        tsv, clips, "de", "en", tmp_path / "out", splits=["dev"], tasks=["st"], audio="wav"
    )
    (u,) = read_manifest(tmp_path / "out" / "covost2.de_en.dev.jsonl")
    assert u.audio_filepath == str(tmp_path / "out" / "audio/covost2/de/common_voice_de_1.wav")
    assert sf.info(u.audio_filepath).samplerate == SAMPLE_RATE
    assert u.duration == pytest.approx(1.5, abs=0.1)


def test_covost2_wrong_folders_and_files(tmp_path):
    tsv, clips = _covost(tmp_path)
    with pytest.raises(ManifestError, match="nowhere: CoVoST-2 TSV folder not found"):
        import_covost2(tmp_path / "nowhere", clips, "de", "en", tmp_path / "out")
    with pytest.raises(ManifestError, match="Common Voice clips folder not found"):
        import_covost2(tsv, tmp_path / "noclips", "de", "en", tmp_path / "out")
    with pytest.raises(
        ManifestError, match=r"covost_v2\.fr_en\.train\.tsv: CoVoST-2 TSV not found"
    ):
        import_covost2(tsv, clips, "fr", "en", tmp_path / "out")
    with pytest.raises(LanguageError, match="xx"):
        import_covost2(tsv, clips, "xx", "en", tmp_path / "out")
    (tsv / "covost_v2.de_en.dev.tsv").write_text("file\ttext\nx.mp3\tHallo\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"dev\.tsv:1: header must name columns path"):
        import_covost2(tsv, clips, "de", "en", tmp_path / "out", splits=["dev"])
    (tsv / "covost_v2.de_en.dev.tsv").write_text(
        "path\tsentence\ttranslation\tclient_id\nmissing.mp3\ta\tb\tc\n", encoding="utf-8"
    )
    with pytest.raises(ManifestError, match=r"dev\.tsv: no usable rows \(first: .*dev\.tsv:2"):
        import_covost2(tsv, clips, "de", "en", tmp_path / "out", splits=["dev"])


def test_covost2_without_mp3_support_says_how_to_get_it(tmp_path, monkeypatch):
    tsv, clips = _covost(tmp_path)
    monkeypatch.setattr(sf, "available_formats", lambda: {"WAV": "WAV", "FLAC": "FLAC"})
    with pytest.raises(DependencyError, match="cannot read MP3.*pip install -U soundfile"):
        import_covost2(tsv, clips, "de", "en", tmp_path / "out")


# --- MuST-C ---------------------------------------------------------------------------------------


def _mustc(root: Path) -> Path:
    base = root / "MUSTC_v1.0" / "en-de" / "data"
    talks = {"ted_1.wav": _tone(5.0, 16000, 200), "ted_2.wav": _tone(3.0, 16000, 300)}
    for split in ("train", "tst-COMMON"):
        (base / split / "txt").mkdir(parents=True)
        (base / split / "wav").mkdir()
        for name, wave in talks.items():
            sf.write(base / split / "wav" / name, wave, 16000, subtype="PCM_16")
    segs = [
        "- {duration: 1.000000, offset: 0.500000, rW: 3, uW: 0, speaker_id: spk.1, wav: ted_1.wav}",
        "- {duration: 1.500000, offset: 2.000000, rW: 4, uW: 0, speaker_id: spk.1, wav: ted_1.wav}",
        "- {duration: 1.000000, offset: 0.200000, rW: 2, uW: 0, speaker_id: spk.2, wav: ted_2.wav}",
        "- {duration: 4.000000, offset: 2.500000, rW: 9, uW: 0, speaker_id: spk.2, wav: ted_2.wav}",
        "- {duration: 1.000000, offset: 0.000000, rW: 2, uW: 0, speaker_id: spk.9, wav: ted_9.wav}",
        "- {duration: 1.000000, offset: 1.000000, rW: 2, uW: 0, speaker_id: spk.2}",
    ]
    en = ["Thank you.", "Hello there.", "Good night.", "Too long.", "No talk.", "No wav."]
    de = ["Danke.", "Hallo zusammen.", "Gute Nacht.", "Zu lang.", "Kein Vortrag.", "Kein wav."]
    for split in ("train", "tst-COMMON"):
        txt = base / split / "txt"
        (txt / f"{split}.yaml").write_text("\n".join(segs) + "\n", encoding="utf-8")
        (txt / f"{split}.en").write_text("\n".join(en) + "\n", encoding="utf-8")
        (txt / f"{split}.de").write_text("\n".join(de) + "\n", encoding="utf-8")
    return root / "MUSTC_v1.0"


def test_mustc_cuts_segments_and_skips_bad_ones(tmp_path):
    root = _mustc(tmp_path)
    out = tmp_path / "out"
    report = import_mustc(root, "de", out, splits=["train", "tst-COMMON"])
    utts = read_manifest(out / "mustc.en_de.train.jsonl")
    st = [u for u in utts if u.task == "st"]
    assert [u.id for u in st] == [
        "mustc-en-de-train-ted_1_0-st",
        "mustc-en-de-train-ted_1_1-st",
        "mustc-en-de-train-ted_2_0-st",
    ]
    assert [u.translation for u in st] == ["Danke.", "Hallo zusammen.", "Gute Nacht."]
    assert all(u.lang == "en" and u.target_lang == "de" for u in st)
    assert [u.duration for u in st] == [1.0, 1.5, 1.0]
    cut = sf.read(st[1].audio_filepath, dtype="int16")[0]
    talk = sf.read(root / "en-de/data/train/wav/ted_1.wav", dtype="int16")[0]
    assert np.array_equal(cut, talk[32000:56000])  # offset 2.0 s, duration 1.5 s
    assert st[1].source["offset"] == 2.0 and st[1].source["speaker_id"] == "spk.1"
    assert len([u for u in utts if u.task == "asr"]) == 3
    assert len(report.skipped) == 6  # 3 bad segments in each of the 2 splits
    assert "train.yaml:4" in report.skipped[0] and "outside" in report.skipped[0]
    assert "train.yaml:5" in report.skipped[1] and "ted_9.wav not found" in report.skipped[1]
    assert (
        "train.yaml:6" in report.skipped[2]
        and "needs offset, duration and wav" in report.skipped[2]
    )
    # re-running reuses the cut files and writes the same manifest
    before = (out / "mustc.en_de.train.jsonl").read_bytes()
    mtime = Path(st[0].audio_filepath).stat().st_mtime_ns
    import_mustc(root / "en-de", "de", out, splits=["train"])
    assert (out / "mustc.en_de.train.jsonl").read_bytes() == before
    assert Path(st[0].audio_filepath).stat().st_mtime_ns == mtime


def test_mustc_wrong_layout(tmp_path):
    root = _mustc(tmp_path)
    with pytest.raises(ManifestError, match="MuST-C data folder not found"):
        import_mustc(tmp_path, "de", tmp_path / "out")
    with pytest.raises(ManifestError, match="MuST-C dev text folder not found"):
        import_mustc(root, "de", tmp_path / "out", splits=["dev"])
    de = root / "en-de/data/train/txt/train.de"
    de.write_text("Danke.\n", encoding="utf-8")
    with pytest.raises(
        ManifestError, match=r"train\.de: 1 lines but .*train\.yaml lists 6 segments"
    ):
        import_mustc(root, "de", tmp_path / "out", splits=["train"])
    (root / "en-de/data/train/txt/train.yaml").write_text("duration: 1\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="expected a list of segments"):
        import_mustc(root, "de", tmp_path / "out", splits=["train"])


# --- FLEURS ---------------------------------------------------------------------------------------


def _fleurs(root: Path) -> tuple[Path, Path]:
    rows = {
        "de_de": [
            ("101", "Guten Tag.", "guten tag"),
            ("102", "Wie spät ist es?", "wie spät ist es"),
        ],
        "en_us": [("101", "Good day.", "good day"), ("102", "What time is it?", "what time is it")],
    }
    for lang, items in rows.items():
        for split in ("train", "dev", "test"):
            audio = root / lang / "audio" / split
            audio.mkdir(parents=True)
            lines = []
            for k, (sid, raw, norm) in enumerate(items):
                name = f"{sid}{k}{split}.wav"
                sf.write(audio / name, _tone(1.0 + k, 16000), 16000, subtype="PCM_16")
                words = " | ".join(" ".join(w) for w in norm.split()) + " |"
                lines.append(f"{sid}\t{name}\t{raw}\t{norm}\t{words}\t{16000 * (1 + k)}\tFEMALE")
            if lang == "de_de" and split == "train":
                lines.append("103\tmissing.wav\tFehlt.\tfehlt\tf e h l t |\t16000\tMALE")
                lines.append("104\tbroken row")
            (root / lang / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "de_de", root / "en_us"


def test_fleurs_asr_and_st_by_sentence_id(tmp_path):
    de, en = _fleurs(tmp_path)
    out = tmp_path / "out"
    report = import_fleurs(de, out, en_dir=en)
    assert set(report.manifests) == {"fleurs.de.train", "fleurs.de.dev", "fleurs.de.test"}
    utts = read_manifest(out / "fleurs.de.train.jsonl")
    st = {u.text: u for u in utts if u.task == "st"}
    assert st["Guten Tag."].translation == "Good day."
    assert st["Wie spät ist es?"].translation == "What time is it?"
    assert all(u.lang == "de" and u.target_lang == "en" for u in st.values())
    asr = [u for u in utts if u.task == "asr"]
    assert len(asr) == 2 and asr[1].duration == 2.0
    assert asr[0].source["normalized"] == "guten tag" and asr[0].source["id"] == "101"
    assert len(report.skipped) == 2
    assert "train.tsv:3" in report.skipped[0] and "missing.wav not found" in report.skipped[0]
    assert "train.tsv:4" in report.skipped[1] and "columns" in report.skipped[1]


def test_fleurs_without_english_and_errors(tmp_path):
    de, en = _fleurs(tmp_path)
    out = tmp_path / "out"
    import_fleurs(de, out, splits=["dev"])
    assert {u.task for u in read_manifest(out / "fleurs.de.dev.jsonl")} == {"asr"}
    with pytest.raises(ManifestError, match="FLEURS language folder not found"):
        import_fleurs(tmp_path / "xx_yy", out)
    with pytest.raises(ManifestError, match=r"validation\.tsv: FLEURS TSV not found"):
        import_fleurs(de, out, splits=["validation"])
    with pytest.raises(ManifestError, match="tasks must be"):
        import_fleurs(de, out, tasks=["tts"])
    with pytest.raises(ManifestError, match="audio mode"):
        import_fleurs(de, out, audio="copy")
    (tmp_path / "zz_zz").mkdir()
    with pytest.raises(LanguageError, match="zz_zz"):
        import_fleurs(tmp_path / "zz_zz", out)


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_import_prints_counts_and_fails_cleanly(tmp_path, capsys):
    tsv, clips = _covost(tmp_path)
    out = tmp_path / "out"
    args = ["corpus", "import", "covost2", "--tsv-dir", str(tsv), "--clips", str(clips)]
    assert main([*args, "--src", "de", "--tgt", "en", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 2 row(s)" in printed and "covost_v2.de_en.train.tsv:4" in printed
    assert main([*args, "--src", "fr", "--tgt", "en", "--out", str(out)]) == 2
    assert "covost_v2.fr_en.train.tsv" in capsys.readouterr().err
    root = _mustc(tmp_path)
    assert (
        main(
            [
                "corpus",
                "import",
                "mustc",
                "--root",
                str(root),
                "--tgt",
                "de",
                "--splits",
                "tst-COMMON",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "mustc.en_de.tst-COMMON.jsonl: 6 lines" in capsys.readouterr().out
    de, en = _fleurs(tmp_path / "fleurs")
    cmd = [
        "corpus",
        "import",
        "fleurs",
        "--lang-dir",
        str(de),
        "--en-dir",
        str(en),
        "--out",
        str(out),
    ]
    assert main(cmd) == 0
    assert "fleurs.de.train.jsonl: 4 lines" in capsys.readouterr().out
