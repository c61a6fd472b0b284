"""Load test of `babelora serve` on loopback: N concurrent OpenAI clients, mixed languages.

For each client count N (default 1, 8, 32) a fixed number of requests is sent by N threads
through the `openai` client to a server on 127.0.0.1 (uvicorn in a thread of this process,
nothing else is reachable); each request is a clip with its language, cycling through the
(clip, language) pairs. Reported per N: throughput (requests/s and audio s/s), latency p50 and
p95, the batch sizes the server formed (requests per decode call; rows per batched forward
pass), and the correctness counts: `lost` (no 200 answer), `mixed_up` (the text of another
request's clip) and `differs` (neither its own text nor another's). Every expected text is the
clip decoded alone before the run. Exits 1 when anything was lost or mixed up. Each level stops
sending at --time-limit seconds, so the script always ends.

    python bench/serve_load.py                      # tiny random Whisper + 6 random experts
    python bench/serve_load.py --model base --experts runs/experts/final \
        --clip de.wav:de --clip fr.wav:fr --max-new-tokens 64 --out bench/results/serve.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, write_json  # noqa: E402

LANGS = ("de", "fr", "nl", "es", "it", "pt")
KEY = "bench-key"


def synthetic_clips(folder: Path) -> list[tuple[Path, str]]:
    """Six 1 s sounds (noise, tones, a chirp), one per language: the tiny model's inputs."""
    import soundfile as sf

    sr = 16000
    t = np.arange(sr) / sr
    noise = np.random.default_rng(0).standard_normal(t.size)
    waves = [
        0.001 * noise,
        0.5 * noise,
        0.5 * np.sin(2 * np.pi * 100 * t),
        0.5 * np.sin(2 * np.pi * 3000 * t),
        0.5 * np.sin(2 * np.pi * (200 + 3000 * t) * t),
        0.5 * np.sin(2 * np.pi * 800 * t) * np.sin(2 * np.pi * 3 * t),
    ]
    out = []
    for i, (wave, lang) in enumerate(zip(waves, LANGS)):
        path = folder / f"clip{i}.wav"
        sf.write(str(path), np.clip(wave, -1, 1).astype(np.float32), sr, subtype="PCM_16")
        out.append((path, lang))
    return out


def tiny_engine(args):
    """tiny_random_whisper with one random LoRA expert per language (in memory)."""
    import torch

    from babelora.adapters import LoRAConfig, inject, language_experts
    from babelora.decode.runner import RunnerOptions
    from babelora.decode.search import DecodeOptions
    from babelora.models.whisper import tiny_random_whisper
    from babelora.serve.engine import Engine

    handle = tiny_random_whisper(seed=0)
    adapter = inject(handle.model, language_experts(LoRAConfig(rank=4, alpha=8.0), LANGS))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * 0.3)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.5)
    runner = RunnerOptions(
        batch_seconds=30.0 * args.max_batch_size,
        max_batch_size=args.max_batch_size,
        min_input_seconds=1.0,
        max_chunks=1,
        show_progress=False,
    )
    return Engine(handle, adapter, None, DecodeOptions(max_new_tokens=args.max_new_tokens), runner)


def real_engine(args):
    from babelora.decode.search import DecodeOptions
    from babelora.serve.engine import Engine, runner_options

    return Engine.load(
        args.model,
        args.adapter,
        args.experts,
        args.lid,
        decode_options=DecodeOptions(max_new_tokens=args.max_new_tokens),
        runner_options=runner_options(args.max_batch_size, 600.0),
    )


def expected_texts(engine, pairs) -> list[str]:
    """Each (clip, language) decoded alone, before the server takes any load."""
    from babelora.serve.engine import Job

    out = []
    for i, (clip, lang) in enumerate(pairs):
        result = engine.decode([Job(f"ref{i}", str(clip), lang)])[0]
        if result.error:
            raise SystemExit(f"{clip}: {result.error}")
        out.append(result.text)
    return out


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=30) as resp:
        return json.loads(resp.read())


def _delta(after: dict, before: dict) -> dict[str, int]:
    diff = Counter({k: int(v) for k, v in after.items()})
    diff.subtract({k: int(v) for k, v in before.items()})
    return {k: v for k, v in sorted(diff.items(), key=lambda kv: int(kv[0])) if v}


def _post_plain(url: str, data: bytes, name: str, lang: str) -> tuple[int, str]:
    """POST /v1/audio/transcriptions as multipart/form-data with urllib (no client library)."""
    boundary = "babelora-load-test-boundary"
    parts = []
    for field, value in (("model", "babelora"), ("language", lang)):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        url + "/v1/audio/transcriptions",
        data=body,
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Authorization": f"Bearer {KEY}",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


def _is_json_4xx(row: dict) -> bool:
    """A bad request's answer: a 4xx whose JSON error names the offending field."""
    if not 400 <= row["status"] < 500:
        return False
    try:
        error = json.loads(row["body"])["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(error.get("message")) and error.get("param") == "file"


def run_level(url, clients, requests, pairs, expected, seconds, time_limit, bad_every=0) -> dict:
    """`requests` requests from `clients` threads; the counts and timings of the level.

    Odd-numbered threads use the `openai` client, even-numbered ones plain HTTP (multipart over
    urllib). With `bad_every` K > 0, every K-th request is a bad one (an upload that is not
    audio) sent between the good ones: it must get a 4xx JSON error naming the field, and the
    good requests around it must still get their own transcripts."""
    import openai

    lock = threading.Lock()
    state = {"next": 0}
    rows: list[dict] = []
    bad_rows: list[dict] = []
    deadline = time.monotonic() + time_limit

    def worker(index: int):
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        while True:
            with lock:
                i = state["next"]
                if i >= requests or time.monotonic() > deadline:
                    return
                state["next"] += 1
            if bad_every and i % bad_every == bad_every - 1:
                status, body = _post_plain(url, b"this is not audio", "bad.wav", "de")
                with lock:
                    bad_rows.append({"status": status, "body": body})
                continue
            k = i % len(pairs)
            clip, lang = pairs[k]
            start = time.perf_counter()
            try:
                if index % 2:
                    with open(clip, "rb") as f:
                        text = client.audio.transcriptions.create(
                            model="babelora", file=f, language=lang
                        ).text
                    error = None
                else:
                    status, body = _post_plain(url, Path(clip).read_bytes(), Path(clip).name, lang)
                    text = json.loads(body)["text"] if status == 200 else None
                    error = None if status == 200 else f"HTTP {status}: {body[:200]}"
            except Exception as err:  # counted as lost, shown once
                text, error = None, f"{type(err).__name__}: {err}"
            row = {"pair": k, "latency": time.perf_counter() - start, "text": text}
            row["error"] = error
            with lock:
                rows.append(row)

    before = health(url)
    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    after = health(url)
    ok = [r for r in rows if r["error"] is None]
    own = [r for r in ok if r["text"] == expected[r["pair"]]]
    others = set(expected)
    mixed = [r for r in ok if r["text"] != expected[r["pair"]] and r["text"] in others]
    latencies = sorted(r["latency"] for r in ok)
    batches = _delta(after["batch_sizes"], before["batch_sizes"])
    n_batches = sum(batches.values())
    return {
        "clients": clients,
        "sent": len(rows),
        "ok": len(ok),
        "lost": requests - len(bad_rows) - len(ok),
        "bad_sent": len(bad_rows),
        "bad_answered_4xx_json": sum(_is_json_4xx(r) for r in bad_rows),
        "mixed_up": len(mixed),
        "differs": len(ok) - len(own) - len(mixed),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(ok) / wall, 2),
        "audio_s_per_s": round(sum(seconds[r["pair"]] for r in ok) / wall, 2),
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3)
        if latencies
        else None,
        "batch_sizes": batches,
        "mean_batch_size": round(sum(int(k) * v for k, v in batches.items()) / n_batches, 2)
        if n_batches
        else None,
        "forward_batch_sizes": _delta(after["forward_batch_sizes"], before["forward_batch_sizes"]),
        "first_error": next((r["error"] for r in rows if r["error"]), None),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=64, help="requests per client count")
    p.add_argument("--model", default=None, help="serve this model instead of the tiny one")
    p.add_argument("--adapter", default=None)
    p.add_argument("--experts", default=None)
    p.add_argument("--lid", default=None)
    p.add_argument("--clip", action="append", default=[], help="PATH:LANG (repeat)")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds per client count")
    p.add_argument(
        "--bad-every",
        type=int,
        default=0,
        help="every K-th request is a bad upload (not audio), interleaved (default 0: none)",
    )
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)

    import torch

    from babelora.data.audio import SAMPLE_RATE, load_audio
    from babelora.serve.app import ServeSettings, create_app
    from babelora.serve.batcher import BatchSettings
    from babelora.serve.thread import LOOPBACK, ServerThread

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="serve_load-"))
    if args.clip:
        pairs = [(Path(c.rsplit(":", 1)[0]), c.rsplit(":", 1)[1]) for c in args.clip]
    else:
        pairs = synthetic_clips(work)
    tiny = args.model is None and not args.experts and not args.adapter
    log("loading the model" + (" (tiny random Whisper + 6 random experts)" if tiny else ""))
    engine = tiny_engine(args) if tiny else real_engine(args)
    seconds = [len(load_audio(c)) / SAMPLE_RATE for c, _ in pairs]
    expected = expected_texts(engine, pairs)
    if len(set(expected)) < len(expected):
        log("note: some clips decode to the same text; a mix-up among them would not show")
    settings = ServeSettings(
        api_key=KEY,
        timeout=max(120.0, args.time_limit),
        batch=BatchSettings(
            args.max_batch_size, args.batch_wait_ms, max(64, 2 * max(args.clients))
        ),
    )
    levels = []
    with ServerThread(create_app(engine, settings)) as server:
        assert server.url.startswith(f"http://{LOOPBACK}:")
        log(f"serving on {server.url}")
        for clients in args.clients:
            level = run_level(
                server.url,
                clients,
                args.requests,
                pairs,
                expected,
                seconds,
                args.time_limit,
                args.bad_every,
            )
            levels.append(level)
            log(
                f"N={clients}: {level['ok']}/{args.requests} ok, {level['requests_per_s']} req/s, "
                f"p50 {level['latency_p50_s']} s, p95 {level['latency_p95_s']} s, "
                f"batches {level['batch_sizes']}, lost {level['lost']}, "
                f"mixed up {level['mixed_up']}, differs {level['differs']}, "
                f"bad {level['bad_answered_4xx_json']}/{level['bad_sent']} answered 4xx JSON"
            )
    result = {
        "model": "tiny-random-whisper + 6 random experts" if tiny else args.model,
        "experts": args.experts,
        "pairs": [[str(c), lang] for c, lang in pairs],
        "torch_threads": torch.get_num_threads(),
        "max_batch_size": args.max_batch_size,
        "batch_wait_ms": args.batch_wait_ms,
        "max_new_tokens": args.max_new_tokens,
        "requests_per_level": args.requests,
        "bad_every": args.bad_every,
        "clients_kinds": "odd threads: openai client; even threads: plain HTTP (urllib)",
        "levels": levels,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        write_json(Path(args.out), result)
    bad = sum(level["lost"] + level["mixed_up"] for level in levels)
    bad += sum(level["bad_sent"] - level["bad_answered_4xx_json"] for level in levels)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
