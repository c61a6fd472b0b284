"""The Fish Fillets NG importer on a fixture voice pack laid out like the Debian packages (Lua
scripts + tiny Ogg Vorbis clips written here), and `babelora corpus import fillets`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from babelora.cli.main import main
from babelora.data.audio import SAMPLE_RATE
from babelora.data.corpus.fillets import real_split
from babelora.data.importers import import_fillets
from babelora.data.importers.fillets import ogg_problem, voice_packs
from babelora.data.manifest import read_manifest
from babelora.errors import DependencyError, ManifestError

SR = 22050  # the voice packs' rate (stereo Ogg Vorbis)


def _speechy(seconds: float, seed: int) -> np.ndarray:
    """A stereo 22.05 kHz 'voice': a 150 Hz buzz with syllable-rate loudness."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    wave = np.sign(np.sin(2 * np.pi * 150 * t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) * 0.3
    wave = wave + 0.01 * rng.standard_normal(t.size)
    return np.stack([wave, 0.9 * wave], axis=1).astype(np.float32)


def _lines(n: int, split: str) -> list[str]:
    """English lines whose hash puts them in the human-speech `split`."""
    out, i = [], 0
    while len(out) < n:
        en = f"Fish line number {i} is here."
        if real_split(en) == split:
            out.append(en)
        i += 1
    return out


def _pack(root: Path) -> dict[str, str]:
    """Scripts + nl voice pack: 3 test lines, 2 train lines and five broken clips. Returns
    {id: English}."""
    good = {f"t{i}": en for i, en in enumerate(_lines(3, "test"))}
    good |= {f"r{i}": en for i, en in enumerate(_lines(2, "train"))}
    lua = []
    for i, (uid, en) in enumerate(good.items()):
        font = "font_small" if i % 2 else "font_big"
        lua.append(f'dialogId("{uid}", "{font}", "{en}")\ndialogStr("Vis regel {uid} is hier.")\n')
    lua.append('dialogId("silent", "font_big", "Nothing.")\ndialogStr("Niets.")\n')
    lua.append('dialogId("cut", "font_big", "This clip was cut short.")\ndialogStr("Kort.")\n')
    lua.append('dialogId("noen", "font_small", "")\ndialogStr("Geen Engels hier.")\n')
    lua.append('dialogId("garbage", "font_small", "Not audio at all.")\ndialogStr("Rommel.")\n')
    scripts = root / "script" / "airplane"
    scripts.mkdir(parents=True)
    (scripts / "dialogs_nl.lua").write_text("\n".join(lua), encoding="utf-8")
    (scripts / "dialogs_cs.lua").write_text("", encoding="utf-8")  # text, but no voice pack
    sound = root / "sound" / "airplane" / "nl"
    sound.mkdir(parents=True)
    for k, uid in enumerate([*good, "noen", "orphan"]):
        sf.write(sound / f"{uid}.ogg", _speechy(0.8 + 0.2 * k, k), SR, format="OGG")
    sf.write(sound / "silent.ogg", np.zeros((SR, 2), np.float32), SR, format="OGG")
    sf.write(sound / "cut.ogg", _speechy(3.0, 9), SR, format="OGG")
    data = (sound / "cut.ogg").read_bytes()
    (sound / "cut.ogg").write_bytes(data[: len(data) // 2])  # a partial download
    (root / "sound" / "airplane" / "nl" / "garbage.ogg").write_bytes(b"OggS\x00" + b"\x01" * 40)
    return good


@pytest.fixture
def pack(tmp_path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "fillets-ng"
    return root, _pack(root)


def test_import_writes_asr_and_st_rows_with_16k_audio_and_counts_skips(pack, tmp_path):
    root, good = pack
    out = tmp_path / "out"
    report = import_fillets(out, ["nl"], root)
    test = read_manifest(out / "fillets.nl.test.jsonl")
    train = read_manifest(out / "fillets.nl.train.jsonl")
    assert sorted({u.source["id"] for u in test}) == ["t0", "t1", "t2"]
    assert sorted({u.source["id"] for u in train}) == ["r0", "r1"]
    for u in test + train:
        en = good[u.source["id"]]
        assert u.lang == "nl" and u.text == f"Vis regel {u.source['id']} is hier."
        if u.task == "st":
            assert u.translation == en and u.target_lang == "en"
        info = sf.info(u.audio_filepath)
        assert (info.samplerate, info.channels, info.format) == (SAMPLE_RATE, 1, "WAV")
        k = list(good).index(u.source["id"])
        assert u.duration == pytest.approx(0.8 + 0.2 * k, abs=0.02)
        wave, _ = sf.read(u.audio_filepath, dtype="float32")
        assert np.abs(wave).max() > 0.1
        assert u.source["speaker"] in ("fillets-nl:small-fish", "fillets-nl:big-fish")
        assert u.source["audio"] == f"sound/airplane/nl/{u.source['id']}.ogg"
        assert u.source["script"] == "script/airplane/dialogs_nl.lua"
    assert sorted(u.task for u in test) == ["asr"] * 3 + ["st"] * 3
    reasons = {Path(s.split(": ")[0]).name: s.split(": ", 1)[1] for s in report.skipped}
    assert set(reasons) == {"silent.ogg", "cut.ogg", "noen.ogg", "orphan.ogg", "garbage.ogg"}
    assert "silent audio" in reasons["silent.ogg"]
    assert "damaged Ogg file (truncated" in reasons["cut.ogg"]
    assert "no translation" in reasons["noen.ogg"] and "dialogs_nl.lua" in reasons["noen.ogg"]
    assert "no transcript" in reasons["orphan.ogg"]
    assert "damaged Ogg file" in reasons["garbage.ogg"]
    assert "skipped 5 row(s)" in report.summary()
    wavs = {p.stem for p in (out / "audio").rglob("*.wav")}
    assert wavs == set(good)  # no audio written for a skipped clip


def test_ogg_check_finds_truncation_that_libsndfile_hides(tmp_path):
    path = tmp_path / "a.ogg"
    sf.write(path, _speechy(2.0, 0), SR, format="OGG")
    assert ogg_problem(path) is None
    data = path.read_bytes()
    for cut in (len(data) - 10, len(data) // 2, 30):
        (tmp_path / "b.ogg").write_bytes(data[:cut])
        assert ogg_problem(tmp_path / "b.ogg").startswith("truncated"), cut
    (tmp_path / "d.ogg").write_bytes(data[: data.rfind(b"OggS")])  # whole pages, no last one
    assert ogg_problem(tmp_path / "d.ogg") == "truncated: the stream has no end-of-stream page"
    assert len(sf.read(tmp_path / "d.ogg")[0]) > 0  # what libsndfile would have decoded
    (tmp_path / "c.ogg").write_bytes(b"RIFF" + data[4:])
    assert "no Ogg page at byte 0" in ogg_problem(tmp_path / "c.ogg")


def test_errors_name_what_to_install(pack, tmp_path):
    root, _ = pack
    assert voice_packs(root) == ("nl",)
    with pytest.raises(
        DependencyError, match=r"voice pack for 'cs'.*installed: nl.*fillets-ng-data-cs"
    ):
        import_fillets(tmp_path / "o", ["cs"], root)
    with pytest.raises(DependencyError, match="apt-get install -y fillets-ng-data"):
        import_fillets(tmp_path / "o", None, tmp_path / "none")
    with pytest.raises(ManifestError, match="splits must be a subset"):
        import_fillets(tmp_path / "o", ["nl"], root, splits=["dev"])


def test_cli_import_fillets_end_to_end(pack, tmp_path, capsys):
    root, _ = pack
    out = tmp_path / "cli"
    args = ["corpus", "import", "fillets", "--root", str(root), "--out", str(out)]
    assert main([*args, "--tasks", "asr"]) == 0
    printed = capsys.readouterr().out
    assert "fillets: wrote 5 lines to 2 manifest(s), skipped 5 row(s)" in printed
    assert "fillets.nl.test.jsonl: 3 lines" in printed and "cut.ogg" in printed
    assert {u.task for u in read_manifest(out / "fillets.nl.test.jsonl")} == {"asr"}
    assert main([*args, "--langs", "cs"]) == 2
    assert "fillets-ng-data-cs" in capsys.readouterr().err
    again = main([*args, "--tasks", "asr,st"])  # re-run: reuses the converted clips
    assert again == 0 and len(read_manifest(out / "fillets.nl.train.jsonl")) == 4
