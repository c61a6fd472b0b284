"""One-command GPU benchmark: decoding throughput and the experts training step, plus checks.

Needs only this repository and the packages of a standard CUDA PyTorch image (torch,
transformers, numpy): random-weight Whisper models of the real shapes (tiny, base) built from
their configs, random log-mel input, no downloads, no offline wheels, no CTranslate2.

Decoding (audio s/s = rows x input seconds / wall seconds, encoder included; every system
decodes exactly `--tokens` tokens per row: no end token can win, the repetition guard is off,
transformers gets min_new_tokens = max_new_tokens):
- babelora dynamic cache (the default path) at 10 s input (babelora's default floor),
- babelora static cache + CUDA graphs + greedy on the device at 10 s input,
- transformers `generate` (static cache where supported, else its default) at 30 s input (its
  only input length), and babelora static at 30 s for the same input,
for tiny and base, batch 16 and 160, fp32 and fp16.
Training: the experts recipe's loss (`routed_loss`: every row to its language's expert, mixed
batches of 3 languages), AdamW on the experts, fp32 and bf16 autocast; steps/s and audio s/s.
Checks: on tiny random models, the static/graph path's tokens equal the dynamic path's on CPU
and on the device, and the training loss on the device equals the CPU loss (fp32, rel 1e-4).

    python bench/gpu.py                 # one GPU, < 5 min; writes bench/results/gpu.json
    python bench/gpu.py --smoke         # CPU, seconds (the test suite runs it)
    python bench/gpu.py --cpu-static    # CPU: static vs dynamic at base shapes (quiet machine)
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import replace
from datetime import date
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

from babelora.decode.search import DecodeOptions, generate  # noqa: E402

SHAPES = {  # the real Whisper configs (openai/whisper-tiny, -base), multilingual vocabulary
    "tiny": dict(
        d_model=384,
        encoder_layers=4,
        decoder_layers=4,
        encoder_attention_heads=6,
        decoder_attention_heads=6,
        encoder_ffn_dim=1536,
        decoder_ffn_dim=1536,
    ),
    "base": dict(
        d_model=512,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=2048,
        decoder_ffn_dim=2048,
    ),
    "test": dict(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
    ),
}
VOCAB, EOT, SOT = 51865, 50257, 50258
STOP = VOCAB - 1  # the end token babelora is given when decoding a forced token count
PROMPT = [SOT, 50259, 50359, 50363]  # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>
FRAMES_PER_SECOND = 100
LANGS = ("de", "en", "fr")
DECODE_SYSTEMS = (("dynamic", 10), ("static", 10), ("static", 30), ("transformers", 30))
EXPERT_LANGS = ("de", "fr")  # the correctness check's experts; its third row kind has none


def random_whisper(shape: str, seed: int = 0, **overrides):
    """A random-weight Whisper of a real shape, eval mode, variable-length encoder."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from babelora.models.whisper import enable_variable_length

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=SOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        bos_token_id=EOT,
        suppress_tokens=[],
        begin_suppress_tokens=[220, EOT],
        **{**SHAPES[shape], **overrides},
    )
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():  # STOP's logit is exactly 0, below the max of 51864 random logits
        model.proj_out.weight[STOP] = 0  # (tied: its embedding, never fed)
    enable_variable_length(model)
    return model.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _features(rows: int, seconds: float, device, dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    frames = int(seconds * FRAMES_PER_SECOND)
    return torch.randn(rows, 80, frames, generator=g).to(device, dtype)


def _forced(options: DecodeOptions) -> DecodeOptions:
    return replace(options, repetition_guard=0, suppress_blank=False)


def babelora_decode(model, feats, tokens: int, kv_cache: str, graphs: str = "auto") -> list:
    """Encoder + babelora search; the end token is STOP, which no row picks, so every row
    runs `tokens` steps."""
    options = _forced(DecodeOptions(max_new_tokens=tokens, kv_cache=kv_cache, graphs=graphs))
    with torch.no_grad():
        enc = model.get_encoder()(feats).last_hidden_state
        return generate(model, enc, [PROMPT] * feats.shape[0], STOP, options)


def hf_generate(model, feats, tokens: int, cache: str | None = None):
    """transformers `generate` over 30 s features, exactly `tokens` new tokens; `cache`
    "static": its static cache (which transformers may torch.compile: slow first call)."""
    kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, num_beams=1)
    if cache:
        kwargs["cache_implementation"] = cache
    with torch.no_grad():
        return model.generate(feats, **kwargs)


def timed(fn, device, repeats: int) -> tuple[float, object]:
    """Best wall time of `repeats` runs after one warm-up (captures graphs, compiles)."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_decoding(args, device, progress=lambda rows: None) -> list[dict]:
    """One row per (shape, dtype, batch, system); a system that fails records its error.
    `progress(rows)` after each row (partial results survive a time limit)."""
    rows_out: list[dict] = []
    for shape in args.shapes:
        base = random_whisper(shape)
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            model = base.to(device, dtype)
            for batch in args.batches:
                systems = list(DECODE_SYSTEMS)
                if args.hf_static:
                    systems.append(("transformers-static", 30))
                for system, seconds in systems:
                    feats = _features(batch, seconds, device, dtype)
                    if system.startswith("transformers"):
                        cache = "static" if system.endswith("static") else None
                        run = partial(hf_generate, model, feats, args.tokens, cache)
                    else:
                        run = partial(babelora_decode, model, feats, args.tokens, system)
                    row = dict(
                        model=shape,
                        dtype=dtype_name,
                        batch=batch,
                        system=system,
                        input_seconds=seconds,
                        tokens=args.tokens,
                    )
                    try:
                        secs, out = timed(run, device, args.repeats)
                    except Exception as err:  # noqa: BLE001 - one failed system: keep the rest
                        row["error"] = f"{type(err).__name__}: {err}"[:500]
                    else:
                        if not system.startswith("transformers"):  # the forced count held
                            assert all(len(h.tokens) == args.tokens for h in out), system
                        row.update(
                            wall_s=round(secs, 4),
                            audio_s_per_s=round(batch * seconds / secs, 1),
                            tokens_per_s=round(batch * args.tokens / secs, 1),
                        )
                        if system == "static":
                            row["graphs"] = graph_state(model)
                    print(row, flush=True)
                    rows_out.append(row)
                    progress(rows_out)
                    del feats
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            base = model.float().cpu()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows_out


def _training_setup(shape: str, device, rows: int, seconds: float, seed: int = 0):
    from babelora.adapters import LoRAConfig, inject, language_experts
    from babelora.methods.experts.recipe import routed_loss

    model = random_whisper(shape, seed).to(device)
    adapter = inject(model, language_experts(LoRAConfig(rank=8, alpha=16.0), LANGS))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-zero B: every expert acts from the first step
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g).to(p.device) * 0.01)
    labels = torch.randint(0, EOT, (rows, 24), generator=g)
    batch = {
        "input_features": _features(rows, seconds, device, torch.float32, seed),
        "decoder_input_ids": torch.cat([torch.full((rows, 1), SOT), labels[:, :-1]], 1).to(device),
        "labels": labels.to(device),
        "langs": [LANGS[i % len(LANGS)] for i in range(rows)],  # mixed: every batch routes
    }
    return model, routed_loss(adapter), batch


def train_steps(shape: str, device, rows: int, seconds: float, steps: int, bf16: bool):
    """(seconds per step, losses) of the experts recipe's step: loss, backward, AdamW."""
    model, loss_fn, batch = _training_setup(shape, device, rows, seconds)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    losses = []

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, batch).loss / batch["labels"].numel()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    step()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps, [float(x) for x in losses]


def bench_training(args, device) -> list[dict]:
    out = []
    for shape in args.shapes:
        for bf16 in args.train_bf16:
            if bf16 and not (device.type == "cuda" and torch.cuda.is_bf16_supported()):
                continue
            per_step, _ = train_steps(
                shape, device, args.train_rows, args.train_seconds, args.train_steps, bf16
            )
            row = dict(
                model=shape,
                precision="bf16-autocast" if bf16 else "fp32",
                rows=args.train_rows,
                input_seconds=args.train_seconds,
                steps_per_s=round(1 / per_step, 2),
                audio_s_per_s=round(args.train_rows * args.train_seconds / per_step, 1),
            )
            print(row, flush=True)
            out.append(row)
    return out


def _varied_test_model(seed: int = 0):
    """The `test` shape with small weights and a live end token: rows end by EOT, by the
    repetition guard and by the token limit within ~20 tokens (no tokenizer needed)."""
    model = random_whisper("test", seed, init_std=0.15)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.proj_out.weight[EOT] = torch.randn(SHAPES["test"]["d_model"], generator=g)
    return model


def _expert_model(seed: int = 0):
    """`_varied_test_model` with de/fr language experts acting from the start."""
    from babelora.adapters import LoRAConfig, inject, language_experts

    model = _varied_test_model(seed)
    adapter = inject(model, language_experts(LoRAConfig(rank=4, alpha=8.0), EXPERT_LANGS))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model, adapter


def _mixed_decode(model, adapter, enc, opts) -> list:
    """A mixed-language batch (de, fr, and a row without experts), routed per row."""
    langs = [EXPERT_LANGS[i % 2] for i in range(enc.shape[0])]
    langs[-1] = None
    adapter.set_routing(langs=langs, decoding=True)
    prompts = [[SOT, 50261, 50359, 50363]] * enc.shape[0]
    with torch.no_grad():
        return generate(model, enc, prompts, EOT, opts, [adapter.context.reorder])


def _same(a: list, b: list) -> bool:
    return [h.tokens for h in a] == [h.tokens for h in b] and all(
        abs(x.logprob - y.logprob) <= 1e-3 for x, y in zip(a, b)
    )


def check_correctness(device) -> dict:
    """Tiny random models: static/graph tokens == dynamic tokens (CPU and the device; greedy
    and beam 3; a mixed-language expert batch, replayed a second time from its captured
    graphs); the device's training loss == the CPU loss."""
    g = torch.Generator().manual_seed(0)
    enc = torch.randn(12, 40, SHAPES["test"]["d_model"], generator=g)
    opts = DecodeOptions(max_new_tokens=20)
    result: dict = {}
    model = _varied_test_model()
    with torch.no_grad():
        want = generate(model, enc, [PROMPT] * 12, EOT, opts)
        result["ends"] = sorted(
            {"guard" if h.hit_guard else "limit" if len(h.tokens) == 20 else "eot" for h in want}
        )
        for name, where in (("cpu", torch.device("cpu")), (device.type, device)):
            model.to(where)
            for kv in ("dynamic", "static"):
                got = generate(model, enc.to(where), [PROMPT] * 12, EOT, replace(opts, kv_cache=kv))
                result[f"tokens_equal_{name}_{kv}"] = _same(got, want)
        model.cpu()
    experts, adapter = _expert_model()
    experts.to(device)
    for beam in (1, 3):  # the static path against the dynamic path on the same device
        beam_opts = replace(opts, beam_size=beam)
        static = replace(beam_opts, kv_cache="static")
        one, two = enc[:9].to(device), enc[3:].to(device)
        want = _mixed_decode(experts, adapter, one, beam_opts)
        first = _mixed_decode(experts, adapter, one, static)
        again = _mixed_decode(experts, adapter, one, static)  # replays the captured steps
        other_want = _mixed_decode(experts, adapter, two, beam_opts)
        other = _mixed_decode(experts, adapter, two, static)  # replays them on other audio
        result[f"experts_equal_{device.type}_static_beam{beam}"] = (
            _same(first, want) and _same(again, want) and _same(other, other_want)
        )
    result["graph_captures"] = graph_state(experts)["captures"]
    _, cpu_losses = train_steps("test", torch.device("cpu"), 6, 2.0, 2, bf16=False)
    _, dev_losses = train_steps("test", device, 6, 2.0, 2, bf16=False)
    result["loss_cpu"], result["loss_device"] = cpu_losses, dev_losses
    result["losses_equal"] = all(
        abs(a - b) <= 1e-4 * max(1.0, abs(a)) for a, b in zip(cpu_losses, dev_losses)
    )
    return result


def graph_state(model) -> dict:
    """How many decoding steps were captured for `model`, and whether a capture failed (then
    its static path ran eagerly)."""
    from babelora.decode.static_cache import _POOLS

    runners = [e.runner for e in _POOLS.get(model, {}).values() if e.runner is not None]
    return {
        "captures": sum(r.captures for r in runners),
        "failed": any(r.failed for r in runners),
    }


def summary(report: dict) -> list[str]:
    """A short table: audio s/s of each system per (model, dtype, batch), and babelora's best
    over transformers' best."""
    lines = [
        "model dtype batch | " + " | ".join(f"{s}@{t}s" for s, t in DECODE_SYSTEMS) + " | ratio"
    ]
    groups: dict = {}
    for r in report["decoding"]:
        groups.setdefault((r["model"], r["dtype"], r["batch"]), {})[
            (r["system"], r["input_seconds"])
        ] = r.get("audio_s_per_s")
    for (m, d, b), got in groups.items():
        ours = max((v or 0) for (s, _), v in got.items() if not s.startswith("transformers"))
        theirs = max((v or 0) for (s, _), v in got.items() if s.startswith("transformers"))
        cells = " | ".join(str(got.get(k, "-")) for k in DECODE_SYSTEMS)
        ratio = f"{ours / theirs:.2f}x" if theirs else "-"
        lines.append(f"{m} {d} {b} | {cells} | {ratio}")
    for r in report["training"]:
        lines.append(
            f"train {r['model']} {r['precision']}: {r['steps_per_s']} steps/s, "
            f"{r['audio_s_per_s']} audio s/s"
        )
    return lines


def cpu_static_speed(args) -> list[dict]:
    """CPU: babelora dynamic vs static (eager) at base shapes, batch 16, 10 s input."""
    model = random_whisper("base")
    device = torch.device("cpu")
    out = []
    for system in ("dynamic", "static", "dynamic", "static"):
        feats = _features(16, 10, device, torch.float32)
        secs, _ = timed(partial(babelora_decode, model, feats, args.tokens, system), device, 1)
        out.append(
            dict(
                model="base",
                system=system,
                batch=16,
                tokens=args.tokens,
                wall_s=round(secs, 3),
                audio_s_per_s=round(160 / secs, 1),
            )
        )
        print(out[-1], flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: the suite runs it")
    p.add_argument("--cpu-static", action="store_true", help="CPU static vs dynamic, base")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    p.add_argument("--out", default=None, help="default bench/results/gpu.json")
    p.add_argument("--tokens", type=int, default=64, help="forced new tokens per row")
    p.add_argument(
        "--hf-static", action="store_true", help="also transformers generate with its static cache"
    )
    args = p.parse_args(argv)
    here = Path(__file__).resolve().parent
    if args.cpu_static:
        torch.set_num_threads(2)
        rows = cpu_static_speed(args)
        write_json(Path(args.out or here / "results/gpu_cpu_static.json"), {"cpu": rows})
        return 0
    from babelora.decode.memory import check_device

    device = check_device(args.device or ("cpu" if args.smoke else "cuda"))
    if args.smoke:
        args.shapes, args.dtypes, args.batches = ["test"], ["float32"], [2]
        args.tokens, args.repeats = min(args.tokens, 4), 1
        args.train_rows, args.train_seconds, args.train_steps, args.train_bf16 = 3, 1.0, 1, [False]
    else:
        args.shapes, args.dtypes, args.batches = ["tiny", "base"], ["float32", "float16"], [16, 160]
        args.repeats = 2
        args.train_rows, args.train_seconds, args.train_steps = 12, 10.0, 20
        args.train_bf16 = [False, True]
    start = time.perf_counter()
    out = Path(args.out or here / "results/gpu.json")
    report: dict = {
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "smoke": args.smoke,
        "complete": False,
    }
    report["checks"] = check_correctness(device)
    print("checks", report["checks"], flush=True)
    write_json(out, report)
    report["decoding"] = bench_decoding(
        args, device, lambda rows: write_json(out, {**report, "decoding": rows})
    )
    report["training"] = bench_training(args, device)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["complete"] = True
    write_json(out, report)
    print(f"wrote {out} ({report['seconds']} s)")
    print("\n".join(summary(report)))
    ok = all(v for k, v in report["checks"].items() if k.endswith("equal") or "_equal_" in k)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
