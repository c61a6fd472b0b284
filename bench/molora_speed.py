"""MoLoRA's training-step and decoding speed vs LoRA (parts a and b of bench/molora.py).

a. training step time (wall and CPU) and memory of MoLoRA (experts = languages + 1 shared, top-2,
   rank 8, learned router; and the language router) vs PEFT LoRA with the same trainable
   parameters (rank 56 = 7 x 8) and the same per-expert rank (rank 8), adapters on encoder and
   decoder. Steps are interleaved across systems (round robin over the same batches), so load on
   a shared machine hits all alike. Memory: trainable state (weights + grads + 2 AdamW moments)
   and the activations saved for backward (unique storages, parameters excluded; measured with
   saved-tensor hooks, since PyTorch has no CPU allocator statistics). Goal: MoLoRA step <= 1.25 x
   the rank-56 LoRA.
b. greedy decoding throughput on ST test rows: plain LoRA (PEFT, unmerged and merged), MoLoRA
   routed per row (language router: decisions cached per utterance; learned router: per token),
   and the folded per-language export (shared + language expert as one PEFT LoRA, merged;
   decoded language by language, so it is compared with merged LoRA decoded the same way).
   Goal: export = plain (merged) LoRA speed. Hypotheses of the export must equal the routed
   model's (exactness check).

    python bench/molora.py --parts timing,decode --threads 1 --timing-rounds 8
"""

from __future__ import annotations

import copy
import datetime
import statistics
import time
from pathlib import Path

import protocol as P
import torch
from common import Stopwatch, log, requests_of

LANGS = ("de", "fr", "es", "it", "nl", "pt")
TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def molora_cfg(router: str, langs, shared: int = 1, level: str = "token", rank: int = 8):
    from babelora.adapters import LoRAConfig, MoLoRAConfig

    lora = LoRAConfig(rank=rank, alpha=2.0 * rank, targets=("whisper-all",))
    if router == "learned":
        return MoLoRAConfig(
            lora=lora, num_experts=len(langs), num_shared=shared, router="learned",
            routing_level=level,
        )  # fmt: skip
    return MoLoRAConfig(
        lora=lora, languages=tuple(langs), num_shared=shared, router=router, routing_level=level
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


def build_system(name: str, base, langs=LANGS):
    """(model, adapter or None) for a timing/decoding system, on a copy of the base model."""
    from babelora.adapters import inject

    model = copy.deepcopy(base)
    if name.startswith("lora_r"):
        return peft_lora(model, int(name[len("lora_r") :])), None
    router = {"molora_learned": "learned", "molora_lang": "language"}[name]
    adapter = inject(model, molora_cfg(router, langs))
    return model, adapter


def trainable(model) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def train_config(args, out: Path, recipe: str, params: dict, steps: int):
    from babelora.config import build_dataclass
    from babelora.train.config import TrainConfig

    return build_dataclass(
        TrainConfig,
        {
            "output_dir": str(out),
            "model": {"name": args.speed_model_path, "prompt_style": "multilingual"},
            "data": {
                "train": [str(Path(args.data) / "train.jsonl")],
                "languages": list(LANGS),
                "tasks": ["asr", "st"],
                "batch_seconds": args.timing_batch_seconds,
            },
            "optim": {"lr": 1e-4, "warmup_steps": 1, "schedule": "linear", "clip_norm": 1.0},
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

    cfg = train_config(args, args.work / "speed_batches", "lora", {"rank": 8}, 10)
    recipe = build_recipe(cfg)
    data = build_run_data(cfg, recipe, 1, 0)
    out = []
    for batch in data.train_loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def decode_subset(args) -> list:
    """The first `decode_per_lang` ST X->en rows per language of the test manifest."""
    rows = P.training_rows(Path(args.data) / "test.jsonl", LANGS, args.decode_per_lang)
    return [u for u in rows if u.task == "st"]


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


def run_speed(args, parts: set[str], model: str, label: str) -> dict:
    """Parts a (training step) and b (decoding throughput) on Whisper `model` (a name or folder;
    `label` names it in the report). `args`: bench/molora.py's options (data, work, threads,
    timing_*, decode_*)."""
    from babelora.models.whisper import load_whisper

    args.work.mkdir(parents=True, exist_ok=True)
    args.speed_model_path = model
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    whisper = load_whisper(model, prompt_style="multilingual")
    report = {
        "benchmark": "molora_speed",
        "command": "python bench/molora.py " + " ".join(args.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": P.machine(args.threads),
        "model": label,
        "data": str(args.data),
        "languages": list(LANGS),
        "scale": {
            k: getattr(args, k)
            for k in (
                "timing_batch_seconds",
                "timing_rounds",
                "timing_warmup",
                "decode_per_lang",
                "decode_repeats",
                "threads",
            )
        },  # fmt: skip
    }
    if "timing" in parts:
        log("a. training step time and memory")
        torch.manual_seed(0)
        report["timing"] = part_timing(args, whisper.model, real_batches(args, 4))
    if "decode" in parts:
        log("b. decoding throughput")
        report["decode"] = part_decode(args, whisper, decode_subset(args))
    report["wall_s"] = time.perf_counter() - start
    return report


def tables(report: dict) -> str:
    """Markdown tables a and b of a speed report."""
    lines = timing_table(report["timing"]) if "timing" in report else []
    lines += decode_table(report["decode"]) if "decode" in report else []
    return "\n".join(lines)
