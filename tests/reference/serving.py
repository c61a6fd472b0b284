"""Helpers of the server tests and bench: clips, the served tiny engine, a raw multipart
client (urllib) and OpenAI's error shape."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf

LANGS = ("de", "fr", "nl", "es", "it", "pt")
SR = 16000
KEY = "test-key"
KINDS = ("quiet", "noise", "low", "high", "chirp", "am")  # one clip of each, 1 s


def signal(kind: str, seconds: float = 1.0, rate: int = SR) -> np.ndarray:
    """Test sounds that the tiny random Whisper decodes differently from one another."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(0).standard_normal(t.size)
    waves = {
        "quiet": 0.001 * noise,
        "noise": 0.5 * noise,
        "low": 0.5 * np.sin(2 * np.pi * 100 * t),
        "high": 0.5 * np.sin(2 * np.pi * 3000 * t),
        "chirp": 0.5 * np.sin(2 * np.pi * (200 + 3000 * t) * t),
        "am": 0.5 * np.sin(2 * np.pi * 800 * t) * np.sin(2 * np.pi * 3 * t),
    }
    return np.clip(waves[kind], -1.0, 1.0).astype(np.float32)


def write_clip(path: Path, kind: str, seconds: float = 1.0, rate: int = SR) -> Path:
    sf.write(str(path), signal(kind, seconds, rate), rate, subtype="PCM_16")
    return path


def make_engine(expert_set: Path, lid=None):
    """The served model: tiny_random_whisper(0) with the expert set; short decodes."""
    from babelora.decode.runner import RunnerOptions
    from babelora.decode.search import DecodeOptions
    from babelora.methods.loading import load_expert_set
    from babelora.models.whisper import tiny_random_whisper
    from babelora.serve.engine import Engine

    handle = tiny_random_whisper(seed=0)
    adapter = load_expert_set(handle, expert_set)
    return Engine(
        handle,
        adapter,
        lid,
        DecodeOptions(max_new_tokens=6),
        RunnerOptions(min_input_seconds=1.0, max_chunks=1, show_progress=False),
    )


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = []
    for name, value in fields.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        out.append(head.encode() + str(value).encode() + b"\r\n")
    for name, (filename, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        out.append(head.encode() + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def post(url: str, fields: dict, files: dict | None = None, key: str | None = KEY):
    """(status, headers, body) of a multipart POST; errors are returned, not raised."""
    body, ctype = multipart(fields, files or {})
    headers = {"Content-Type": ctype}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return request(url, body, headers)


def request(url: str, body: bytes | None = None, headers: dict | None = None, method=None):
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def health(base: str) -> dict:
    return json.loads(request(base + "/health")[2])


def error_of(body: bytes) -> dict:
    """The OpenAI error object of a refusal (and the shape checked)."""
    data = json.loads(body)
    assert set(data) == {"error"} and set(data["error"]) == {"message", "type", "param", "code"}
    assert data["error"]["message"]
    return data["error"]
