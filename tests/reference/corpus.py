"""A tiny multilingual corpus (tones and noise with short texts) and configs for training tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TEXTS = {
    "de": ["guten morgen", "danke schön", "wie geht es", "ich bin hier", "ja", "nein danke"],
    "fr": ["bonjour", "merci beaucoup", "comment ça va", "je suis là", "oui", "non merci"],
    "es": ["hola", "gracias"],
}


def write_corpus(
    root: Path, n_per_lang: dict[str, int] | None = None, seed: int = 0, name: str = "train"
) -> Path:
    """WAV files of 0.5-2 s and a manifest `root/<name>.jsonl`; returns the manifest path."""
    import soundfile as sf

    n_per_lang = n_per_lang or {"de": 6, "fr": 4}
    rng = np.random.default_rng(seed)
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rows = []
    for lang, n in n_per_lang.items():
        for i in range(n):
            seconds = float(rng.uniform(0.5, 2.0))
            t = np.arange(int(seconds * 16000)) / 16000
            freq = 150 + 60 * i + (100 if lang == "fr" else 0)
            wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)
            path = audio / f"{name}-{lang}-{i}.wav"
            sf.write(str(path), wave.astype(np.float32), 16000)
            text = TEXTS[lang][i % len(TEXTS[lang])]
            rows.append(
                {
                    "id": f"{name}-{lang}-{i}",
                    "audio_filepath": f"audio/{path.name}",
                    "duration": round(len(t) / 16000, 4),
                    "lang": lang,
                    "text": text,
                }
            )
    manifest = root / f"{name}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def with_st(manifest: Path) -> None:
    """Add an ST X->en row for every ASR row (same audio), as corpus builds have."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    out = []
    for r in rows:
        out.append({**r, "task": "asr"})
        out.append({**r, "id": r["id"] + "-st", "task": "st", "target_lang": "en",
                    "translation": "good " + r["text"]})  # fmt: skip
    manifest.write_text("".join(json.dumps(r) + "\n" for r in out))


def base_config(root: Path, out: Path, **extra) -> dict:
    """A config dict for a tiny, fast run (tiny random Whisper, CPU) on `root/train.jsonl`
    (written when missing); `extra` holds dotted overrides such as `optim.lr=1e-2`."""
    train = root / "train.jsonl"
    if not train.exists():
        write_corpus(root)
    cfg = {
        "output_dir": str(out),
        "model": {"tiny_random": True},
        "data": {"train": [str(train)], "languages": ["de", "fr"], "batch_seconds": 6.0},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "clip_norm": 1.0},
        "recipe": {"name": "lora", "params": {"rank": 4}},
        "checkpoint": {"save_every": 2, "keep_last": 10, "keep_best": 0},
        "max_steps": 4,
        "log_every": 1,
        "progress_bar": False,
        "mixed_precision": "no",
    }
    for key, value in extra.items():
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return cfg


def config_yaml(root: Path, out: Path, **extra) -> Path:
    """`base_config` written as YAML next to the run folder; returns the file."""
    import yaml

    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(base_config(root, out, **extra)), encoding="utf-8")
    return path
