"""Export benchmark: faster-whisper on babelora's CTranslate2 export against babelora itself.

The model (a base, with --adapter merged in, or one --language folded out of --experts) is
exported with `babelora export --format ct2 --dtype float32` into a temporary folder. Then the
same test set is decoded greedily, without timestamps, by
- `babelora-30s`: babelora on the model itself with Whisper's 30 s padding (the same input
  faster-whisper sees: its transcripts should be identical),
- `babelora`: babelora at its default settings (variable-length input, batched),
- `faster-whisper`: faster-whisper (CTranslate2, float32, one file at a time, beam 1, no
  timestamps, no fallbacks, babelora's token suppression) loading the export,
- `ct2-openai-features`: the same CTranslate2 model (the export) fed openai/whisper's input:
  the log-mel of the audio padded with 30 s of true silence (transformers' feature extractor).
  faster-whisper computes the log-mel of the audio alone and pads the spectrogram with zeros,
  which are not the log-mel of silence, so its input differs from openai's on every clip
  under 30 s; this row separates what the export computes from what faster-whisper's front end
  feeds it (identical to babelora-30s = the export is exact).
Reported: how many transcripts are identical to babelora-30s, WER of each system against the
references with the paired bootstrap 95 % interval of the difference to babelora-30s, and wall
seconds / real-time factor per system on --threads threads.

    python bench/export_speed.py --smoke                       # 4 espeak clips, tiny.en
    python bench/export_speed.py --model base --manifest data/corpus/test.jsonl --limit 200 \
        --threads 2 --out bench/results/export_speed.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, requests_of, write_json  # noqa: E402

SMOKE_TEXTS = (
    "Please correct the error below.",
    "The train to the city leaves at half past seven.",
    "She opened the old wooden box.",
    "Our team won the final match.",
)


def smoke_manifest(folder: Path) -> list:
    """Four espeak-ng English clips as manifest utterances."""
    import subprocess

    from babelora.data.manifest import Utterance

    utts = []
    for i, text in enumerate(SMOKE_TEXTS):
        path = folder / f"{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True)
        utts.append(Utterance(f"s{i}", str(path), 0.0, "en", "asr", text))
    return utts


def export(args, folder: Path) -> Path:
    from babelora.cli.main import main as cli

    argv = ["export", "--format", "ct2", "--out", str(folder), "--dtype", "float32"]
    for flag in ("model", "adapter", "experts", "language"):
        value = getattr(args, flag)
        if value:
            argv += [f"--{flag}", value]
    if cli(argv) != 0:
        raise SystemExit("export failed")
    return folder


def babelora_decode(folder: Path, utts, pad_to_30s: bool, max_new: int) -> tuple[list[str], float]:
    """babelora on the exported model (the export is bit-exact: tests/export)."""
    from babelora.decode.runner import RunnerOptions, decode_requests
    from babelora.decode.search import DecodeOptions
    from babelora.models.whisper import load_whisper

    handle = load_whisper(folder)
    options = RunnerOptions(pad_to_30s=pad_to_30s, show_progress=False)
    decode = DecodeOptions(max_new_tokens=max_new, repetition_guard=0)
    start = time.perf_counter()
    results = decode_requests(handle, requests_of(utts), decode, options)
    spent = time.perf_counter() - start
    return [r.hypothesis for r in results], spent


def faster_whisper_decode(folder: Path, utts, threads: int, max_new: int):
    from faster_whisper import WhisperModel

    from babelora.models.whisper import load_whisper

    config = load_whisper(folder).model.config
    eot, vocab = config.eos_token_id, config.vocab_size
    suppress = sorted(set(config.suppress_tokens or []) | set(range(eot + 1, vocab)))
    model = WhisperModel(str(folder), device="cpu", compute_type="float32", cpu_threads=threads)
    multilingual = vocab >= 51865
    texts, start = [], time.perf_counter()
    for utt in utts:
        segments, _ = model.transcribe(
            utt.audio_filepath,
            language=utt.lang if multilingual else "en",
            task="translate" if utt.task == "st" else "transcribe",
            beam_size=1,
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
            suppress_tokens=suppress,
            max_new_tokens=max_new,
            vad_filter=False,
            compression_ratio_threshold=None,
            log_prob_threshold=None,
            no_speech_threshold=None,
        )
        texts.append("".join(s.text for s in segments).strip())
    return texts, time.perf_counter() - start


def ct2_openai_features_decode(folder: Path, utts, threads: int, max_new: int):
    """The export through CTranslate2 directly, on openai/whisper's 30 s silence-padded log-mel."""
    import ctranslate2
    import numpy as np
    from transformers import WhisperFeatureExtractor

    from babelora.data.audio import load_audio
    from babelora.models.whisper import load_whisper

    handle = load_whisper(folder)
    config, tok = handle.model.config, handle.tokenizer
    eot = config.eos_token_id
    suppress = sorted(set(config.suppress_tokens or []) | set(range(eot + 1, config.vocab_size)))
    multilingual = config.vocab_size >= 51865
    extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    model = ctranslate2.models.Whisper(str(folder), device="cpu", intra_threads=threads)
    texts, start = [], time.perf_counter()
    for utt in utts:
        head = ["<|startoftranscript|>"]
        if multilingual:
            task = "<|translate|>" if utt.task == "st" else "<|transcribe|>"
            head += [f"<|{utt.lang}|>", task]
        prompt = tok.convert_tokens_to_ids([*head, "<|notimestamps|>"])
        feats = extractor(load_audio(utt.audio_filepath), sampling_rate=16000).input_features
        out = model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(feats, dtype=np.float32)),
            [prompt],
            beam_size=1,
            max_length=len(prompt) + max_new,
            suppress_tokens=suppress,
        )
        ids = [t for t in out[0].sequences_ids[0] if t < eot]
        texts.append(tok.decode(ids, skip_special_tokens=True).strip())
    return texts, time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="base model (default tiny.en with --smoke)")
    p.add_argument("--adapter", default=None)
    p.add_argument("--experts", default=None)
    p.add_argument("--language", default=None, help="with --experts: the language to fold in")
    p.add_argument("--manifest", default=None, help="test set (JSONL manifest)")
    p.add_argument("--limit", type=int, default=None, help="first N utterances")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="4 espeak clips on tiny.en")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    import torch

    from babelora.evaluate.bootstrap import paired_wer, wer_from_stats, wer_stats

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="babelora-export-bench-") as tmp:
        tmp = Path(tmp)
        if args.smoke:
            args.model = args.model or "tiny.en"
            utts = smoke_manifest(tmp)
        elif args.manifest:
            from babelora.data.manifest import read_manifest

            utts = read_manifest(args.manifest)[: args.limit]
        else:
            p.error("give --manifest (or --smoke)")
        utts = [u for u in utts if u.task == "asr"]  # references are transcripts
        folder = export(args, tmp / "ct2")
        audio = sum(__import__("soundfile").info(u.audio_filepath).duration for u in utts)
        systems = {}
        for name, pad in (("babelora-30s", True), ("babelora", False)):
            texts, spent = babelora_decode(folder, utts, pad, args.max_new_tokens)
            systems[name] = {"texts": texts, "seconds": spent}
        texts, spent = faster_whisper_decode(folder, utts, args.threads, args.max_new_tokens)
        systems["faster-whisper"] = {"texts": texts, "seconds": spent}
        texts, spent = ct2_openai_features_decode(folder, utts, args.threads, args.max_new_tokens)
        systems["ct2-openai-features"] = {"texts": texts, "seconds": spent}
    refs, lang = [u.text for u in utts], utts[0].lang or "en"
    base = systems["babelora-30s"]["texts"]
    rows = {}
    for name, sys_ in systems.items():
        row = {
            "identical_to_babelora_30s": sum(a == b for a, b in zip(sys_["texts"], base)),
            "n": len(utts),
            "wer": wer_from_stats(wer_stats(refs, sys_["texts"], lang).sum(axis=0)),
            "wall_seconds": round(sys_["seconds"], 3),
            "rtf": round(sys_["seconds"] / audio, 4),
        }
        if name != "babelora-30s":
            diff = paired_wer(refs, base, sys_["texts"], lang)
            row["wer_minus_babelora_30s"] = [diff.estimate, diff.low, diff.high]
        rows[name] = row
        log(f"{name:15s} {row}")
    mismatches = [  # the export's own check: CTranslate2 on openai's input vs babelora
        {"id": u.id, "babelora": a, "ct2": b, "faster_whisper": c}
        for u, a, b, c in zip(
            utts, base, systems["ct2-openai-features"]["texts"], systems["faster-whisper"]["texts"]
        )
        if a != b or a != c
    ]
    exact = all(a == b for a, b in zip(base, systems["ct2-openai-features"]["texts"]))
    result = {
        "model": args.model,
        "adapter": args.adapter,
        "experts": args.experts,
        "language": args.language,
        "manifest": args.manifest or "smoke",
        "utterances": len(utts),
        "audio_seconds": round(audio, 2),
        "threads": args.threads,
        "systems": rows,
        "mismatches": mismatches[:20],
    }
    if args.out:
        write_json(Path(args.out), result)
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
