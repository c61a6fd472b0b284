"""The bad-input matrix of issue 8 (point 3) as one manifest: every bad kind of audio file and of
manifest line next to items that must work (other sample rate, stereo, silence, an empty
transcript, audio longer than the 30 s window). Used by test_rel_bad_inputs.py (one test per
case) and bench/reliability.py (counts)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


@dataclass(frozen=True)
class Case:
    """One matrix item: `error` None = must decode; else words of its one-line error."""

    name: str  # the manifest id (line cases: the id the line would have had)
    what: str  # the wording
    kind: str  # "audio" (a file problem), "line" (a manifest problem) or "works"
    error: tuple[str, ...] | None = None  # words the error line must hold
    field: str = "audio_filepath"  # the field at fault, named in the error (line cases)


CASES = (
    Case("good", "a normal clip", "works"),
    Case("resampled", "wrong sample rate (44.1 kHz): resampled", "works"),
    Case("stereo", "stereo: channels averaged", "works"),
    Case("silence", "silence", "works"),
    Case("empty_text", "empty transcript: scored, no crash", "works"),
    Case("long_chunked", "45 s, longer than the 30 s window: chunked", "works"),
    Case("missing", "missing audio", "audio", ("audio file not found",)),
    Case("empty", "empty audio (0 samples)", "audio", ("audio is empty",)),
    Case("truncated", "truncated WAV (cut mid-data)", "audio", ("truncated WAV",)),
    Case("corrupt", "corrupt audio (RIFF header, garbage)", "audio", ("cannot decode audio",)),
    Case("not_audio", "non-audio bytes (a PNG)", "audio", ("cannot decode audio",)),
    Case("nan", "NaN samples", "audio", ("NaN or infinite",)),
    Case("inf", "infinite samples", "audio", ("NaN or infinite",)),
    Case("too_long", "audio far longer than the window (601 s)", "audio", ("longer than",)),
    Case("fifo", "a named pipe (FIFO) as audio: refused, no hang", "audio", ("named pipe",)),
    Case("folder", "a folder as audio", "audio", ("is a folder",)),
    Case("malformed_json", "malformed JSON line", "line", ("not valid JSON",), "line"),
    Case("missing_field", "missing field (lang)", "line", ("is missing",), "lang"),
    Case("missing_audio", "missing field (audio_filepath)", "line", ("is missing",)),
    Case("wrong_type", "wrong-typed field (duration)", "line", ("must be int/float",), "duration"),
    Case("text_type", "wrong-typed field (text)", "line", ("must be str",), "text"),
    Case("unknown_lang", "unknown language code", "line", ("unknown language code 'xx'",), "lang"),
    Case(
        "unknown_target",
        "unknown target language code",
        "line",
        ("unknown language code 'zz'",),
        "target_lang",
    ),
    Case("escapes_root", "audio path escaping --data-root", "line", ("escapes the data root",)),
    Case("non_utf8", "a line not in UTF-8 (Latin-1 text)", "line", ("not valid UTF-8",), "line"),
)
BY_NAME = {c.name: c for c in CASES}


def _tone(seconds: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def write_matrix(root: Path) -> tuple[Path, dict[str, int]]:
    """Audio under root/audio, the manifest root/matrix.jsonl; returns it and each case's line."""
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    sf.write(audio / "good.wav", _tone(1.0), SR)
    sf.write(audio / "resampled.wav", _tone(1.0, 44100), 44100)
    sf.write(audio / "stereo.wav", _tone(1.0, 22050, 2), 22050)
    sf.write(audio / "silence.wav", np.zeros(SR, np.float32), SR)
    noise = 0.05 * np.random.default_rng(0).standard_normal(45 * SR).astype(np.float32)
    sf.write(audio / "long_chunked.wav", noise, SR)
    sf.write(audio / "empty.wav", np.zeros(0, np.float32), SR)
    whole = (audio / "good.wav").read_bytes()
    (audio / "truncated.wav").write_bytes(whole[: len(whole) // 2])  # header says 1 s
    (audio / "corrupt.wav").write_bytes(b"RIFF" + os.urandom(300))
    (audio / "not_audio.wav").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    for name, bad in (("nan", np.nan), ("inf", np.inf)):
        wave = _tone(0.5)
        wave[100] = bad
        sf.write(audio / f"{name}.wav", wave, SR, subtype="FLOAT")  # float keeps NaN and inf
    sf.write(audio / "too_long.flac", np.zeros(601 * SR, np.float32), SR)  # tiny as FLAC
    os.mkfifo(audio / "fifo.wav")  # opening it would wait for a writer forever
    (audio / "folder.wav").mkdir()
    (root.parent / "outside.wav").write_bytes(whole)

    def row(name: str, **changes) -> str:
        path = f"audio/{name}.wav" if name != "too_long" else "audio/too_long.flac"
        data = {"id": name, "audio_filepath": path, "duration": 1.0, "lang": "en"}
        data["text"] = "a tone"
        data.update(changes)
        return json.dumps({k: v for k, v in data.items() if v is not None})

    lines = {
        "good": row("good"),
        "resampled": row("resampled"),
        "stereo": row("stereo"),
        "silence": row("silence"),
        "empty_text": row("empty_text", audio_filepath="audio/good.wav", text=""),
        "long_chunked": row("long_chunked", duration=45.0),
        "missing": row("missing"),
        "empty": row("empty"),
        "truncated": row("truncated"),
        "corrupt": row("corrupt"),
        "not_audio": row("not_audio"),
        "nan": row("nan", duration=0.5),
        "inf": row("inf", duration=0.5),
        "too_long": row("too_long", duration=601.0),
        "malformed_json": row("malformed_json")[:-12],
        "missing_field": row("missing_field", audio_filepath="audio/good.wav", lang=None),
        "missing_audio": row("missing_audio", audio_filepath=None),
        "wrong_type": row("wrong_type", audio_filepath="audio/good.wav", duration="long"),
        "text_type": row("text_type", audio_filepath="audio/good.wav", text=["a", "tone"]),
        "unknown_lang": row("unknown_lang", audio_filepath="audio/good.wav", lang="xx"),
        "unknown_target": row(
            "unknown_target",
            audio_filepath="audio/good.wav",
            lang="de",
            task="st",
            translation="a tone",
            target_lang="zz",
        ),
        "escapes_root": row("escapes_root", audio_filepath="../outside.wav"),
        "fifo": row("fifo"),
        "folder": row("folder"),
        # "\udce9" is written as the single byte 0xe9 (Latin-1 e-acute), not UTF-8
        "non_utf8": row("non_utf8", audio_filepath="audio/good.wav", text="@").replace(
            '"@"', '"\udce9t\udce9"'
        ),
    }
    assert set(lines) == set(BY_NAME)
    manifest = root / "matrix.jsonl"
    text = "\n".join(lines.values()) + "\n"
    manifest.write_text(text, encoding="utf-8", errors="surrogateescape")
    return manifest, {name: i + 1 for i, name in enumerate(lines)}


def save_tiny_model(folder: Path, seed: int = 0, **overrides) -> Path:
    """A tiny random Whisper (safetensors + tokenizer) that `--model` can load."""
    from babelora.models.whisper import tiny_random_whisper

    handle = tiny_random_whisper(seed=seed, **overrides)
    handle.model.save_pretrained(folder)
    handle.tokenizer.save_pretrained(folder)
    return folder
