"""Decode speed and WER: babelora batched decoding vs faster-whisper vs transformers `generate`.

All systems run side by side in one process on the same synthetic English utterances (espeak-ng,
1-8 s, sentences from the offline corpus's English side), same model (tiny.en unless --model;
with `--model base`, the multilingual default, every system decodes with the prompt
<|en|><|transcribe|><|notimestamps|>), CPU, fp32, the same thread count. Throughput = audio
seconds / wall seconds; WER with jiwer after Whisper's English normalizer; peak memory = peak RSS
growth over the run of each system (sampled).

    python bench/decode_speed.py --n 80 --threads 2
    python bench/decode_speed.py --n 80 --threads 2 --model base   # results/decode_speed_base.json
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "work" / "decode_speed"


class PeakRSS:
    """Samples this process's RSS every 10 ms; `peak_mb` is the growth over the start value."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        self.peak_mb = (self.peak - self.start) / 2**20


def english_sentences(n: int, seed: int) -> list[str]:
    """English sentences of 3-16 words from the corpus's text sources (gettext + CLDR)."""
    from babelora.data.corpus.text_sources import text_pairs

    pool = sorted(
        {
            p.en
            for lang in ("de", "fr", "es")
            for p in text_pairs(lang)
            if p.source.get("kind") in ("gettext", "cldr")
            and 3 <= len(p.en.split()) <= 16
            and not any(c in p.en for c in "()[]<>/_")
        }
    )
    random.Random(seed).shuffle(pool)
    return pool[: n * 2]


def build_set(n: int, seed: int) -> list[dict]:
    """Speak sentences with espeak-ng (en-us), keep those of 1-8 s, up to n utterances."""
    import soundfile as sf

    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for text in english_sentences(n, seed):
        name = hashlib.sha1(text.encode()).hexdigest()[:12]
        path = WORK / f"{name}.wav"
        if not path.exists():
            subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True)
        seconds = sf.info(str(path)).duration
        if 1.0 <= seconds <= 8.0:
            rows.append({"id": name, "audio_filepath": str(path), "text": text, "seconds": seconds})
        if len(rows) == n:
            break
    return rows


def run_babelora(handle, rows, **runner_kwargs):
    from babelora.decode.runner import Request, RunnerOptions, decode_requests
    from babelora.decode.search import DecodeOptions

    beam = runner_kwargs.pop("beam_size", 1)
    reqs = [Request(r["id"], r["audio_filepath"]) for r in rows]
    results = decode_requests(
        handle,
        reqs,
        DecodeOptions(beam_size=beam),
        RunnerOptions(show_progress=False, **runner_kwargs),
    )
    return [r.hypothesis for r in results]


def faster_whisper_model(model_dir, threads):
    from faster_whisper import WhisperModel

    return WhisperModel(str(model_dir), device="cpu", compute_type="float32", cpu_threads=threads)


def run_faster_whisper(model, rows, **options):
    """Its own default settings (beam 5, temperature fallback) unless `options` say otherwise;
    language given."""
    hyps = []
    for r in rows:
        segments, _ = model.transcribe(r["audio_filepath"], language="en", **options)
        hyps.append(" ".join(s.text.strip() for s in segments))
    return hyps


def stock_transformers_model(handle):
    """A fresh copy of the model with transformers' stock encoder. A multilingual model gets the
    generation settings a hub checkpoint ships (language and task tokens), so that `generate`
    decodes with the prompt babelora and faster-whisper use: <|en|><|transcribe|><|notimestamps|>
    (without them it starts from <|startoftranscript|> alone and guesses)."""
    from transformers import WhisperForConditionalGeneration

    from babelora.data.prompts import NO_TIMESTAMPS, TRANSCRIBE, TRANSLATE, token_id
    from babelora.decode.language import is_multilingual, language_token_ids

    model = WhisperForConditionalGeneration(handle.model.config)
    model.load_state_dict(handle.model.state_dict())
    if is_multilingual(handle):
        tok, gen = handle.tokenizer, model.generation_config
        gen.is_multilingual = True
        gen.lang_to_id = {f"<|{c}|>": i for c, i in language_token_ids(tok).items()}
        gen.task_to_id = {
            "transcribe": token_id(tok, TRANSCRIBE),
            "translate": token_id(tok, TRANSLATE),
        }
        gen.no_timestamps_token_id = token_id(tok, NO_TIMESTAMPS)
    return model.eval()


def run_transformers_generate(model, tokenizer, rows, batch_size):
    """transformers' own `generate` on 30 s padded features (its supported input), batched;
    language en and task transcribe on a multilingual model."""
    from babelora.data.audio import load_audio, log_mel

    prompt = {}
    if getattr(model.generation_config, "is_multilingual", False):
        prompt = {"language": "en", "task": "transcribe"}
    hyps = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        feats = torch.stack(
            [log_mel(load_audio(r["audio_filepath"]), pad_to_30s=True) for r in chunk]
        )
        with torch.no_grad():
            out = model.generate(input_features=feats, max_new_tokens=128, **prompt)
        hyps += [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
    return hyps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=80, help="utterances (1-8 s each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="tiny.en", help="babelora model (default: offline tiny.en)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", default="", help="comma list of systems to skip")
    ap.add_argument(
        "--out",
        default=None,
        help="results JSON (default results/decode_speed.json; decode_speed_<model>.json for a "
        "model other than tiny.en)",
    )
    args = ap.parse_args()
    if args.out is None:
        suffix = "" if args.model == "tiny.en" else "_" + Path(args.model).name.replace(".", "_")
        args.out = str(ROOT / "results" / f"decode_speed{suffix}.json")
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import transformers

    from babelora.evaluate.metrics import wer
    from babelora.models.offline import OFFLINE_MODELS, offline_model_path
    from babelora.models.whisper import load_whisper

    transformers.logging.set_verbosity_error()  # generate()'s deprecation chatter
    rows = build_set(args.n, args.seed)
    audio = sum(r["seconds"] for r in rows)
    print(f"{len(rows)} utterances, {audio:.1f} s of audio", flush=True)
    handle = load_whisper(args.model)
    refs = [r["text"] for r in rows]
    named = args.model in OFFLINE_MODELS
    fw_model = faster_whisper_model(
        offline_model_path(args.model) if named else args.model, args.threads
    )
    stock = stock_transformers_model(handle)
    systems = {  # models are loaded above: the timings cover decoding (audio I/O included) only
        "faster-whisper (beam 5, its defaults)": lambda: run_faster_whisper(fw_model, rows),
        "faster-whisper greedy (beam 1, temperature 0)": lambda: run_faster_whisper(
            fw_model, rows, beam_size=1, temperature=0.0
        ),
        "transformers generate (greedy, 30 s pad, batch 16)": lambda: run_transformers_generate(
            stock, handle.tokenizer, rows, 16
        ),
        "babelora greedy, 30 s pad": lambda: run_babelora(handle, rows, pad_to_30s=True),
        "babelora greedy, >=10 s input (default)": lambda: run_babelora(handle, rows),
        "babelora greedy, variable length": lambda: run_babelora(
            handle, rows, min_input_seconds=0.0
        ),
        "babelora beam 5, >=10 s input": lambda: run_babelora(handle, rows, beam_size=5),
    }
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    table = []
    for name, fn in systems.items():
        if any(s in name for s in skip):
            continue
        with PeakRSS() as mem:
            start = time.perf_counter()
            hyps = fn()
            wall = time.perf_counter() - start
        score = wer(hyps, refs, lang="en").score / 100.0
        table.append(
            {
                "system": name,
                "audio_s_per_s": audio / wall,
                "wall_s": wall,
                "wer": score,
                "peak_rss_growth_mb": mem.peak_mb,
            }
        )
        print(
            f"{name:55s} {audio / wall:7.2f} x RT  WER {100 * score:5.1f}  +{mem.peak_mb:6.0f} MB",
            flush=True,
        )
    base = next((t for t in table if t["system"].startswith("faster-whisper")), None)
    for t in table:
        t["speed_vs_faster_whisper"] = t["audio_s_per_s"] / base["audio_s_per_s"] if base else None
    result = {
        "benchmark": "decode_speed",
        "command": "python " + " ".join(sys.argv),
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__}",
        "threads": args.threads,
        "utterances": len(rows),
        "audio_seconds": audio,
        "model": handle.name,
        "results": table,
    }
    write_json(Path(args.out), result, indent=2)
    print("\n| system | audio s / s | x faster-whisper | WER % | peak RSS growth MB |")
    print("|---|---|---|---|---|")
    for t in table:
        ratio = f"{t['speed_vs_faster_whisper']:.2f}" if t["speed_vs_faster_whisper"] else "-"
        print(
            f"| {t['system']} | {t['audio_s_per_s']:.2f} | {ratio} | {100 * t['wer']:.1f} | "
            f"{t['peak_rss_growth_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
