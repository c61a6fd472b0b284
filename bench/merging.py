"""LoRS-Merging (arXiv 2502.17380) vs the standard merges and joint training, on tiny.en.

Protocol (every number in bench/results/merging.json says which settings produced it):
1. Fine-tune the base (offline tiny.en, `load_whisper(None)`) once per language on de, fr, es, it,
   nl with the training engine (`babelora.methods.registry.train`), on that language's ASR and
   ST X->en
   lines of the corpus' train.jsonl, with recipe `full` (encoder frozen by default: a CPU-budget
   choice) and recipe `lora` (PEFT LoRA, decoder only by default, same reason); every model gets
   the same `--steps`. The joint multilingual multi-task baselines (one `full`, one `lora`) train
   on the union of the same data for len(langs) x steps (the total budget).
2. Merge the five fine-tunes with every method through `babelora merge` (one subprocess per merge,
   so each merge's peak RSS is its own): full checkpoints -> a full checkpoint; LoRA adapters ->
   their full updates scale*B@A merged, written back as one PEFT adapter re-factorised by SVD to
   rank len(langs) x lora_rank (exact for the linear merges; the report gives the error).
3. Add pt by language expansion (train pt the same way; `expand` the LoRS merges, renormalised,
   which equals a fresh 6-language merge for LoRS; checked numerically for the full models).
4. Decode a test subset (n ASR + the n ST X->en items of the same audio per language; greedy) with
   `babelora.decode.runner` and score with `babelora.evaluate`: WER and CER (ASR), BLEU and chrF
   (ST). Training pads each batch to its longest item (data.min_input_seconds 0), so decoding uses
   RunnerOptions(min_input_seconds=0) too (`--min-input-seconds` sets both).

Normalised performance (as in TIES-Merging, arXiv 2306.01708): for each language l and metric m,
score(model, l, m) / score(individual fine-tune of l, l, m), where WER and CER are first turned
into accuracies max(0, 100 - rate) and BLEU/chrF are used as they are; averaged over languages
and the two tasks. NP uses WER + BLEU; NP-fine uses CER + chrF (less saturated at this tiny scale).
Pairs whose reference score is 0 are left out (their count is recorded). Full-model merges are
normalised by the full fine-tunes, LoRA merges by the LoRA fine-tunes. Next to WER and CER the
tables give the half-width of a 95 % bootstrap interval over test utterances (sampling noise).

Every model here keeps the base encoder when the encoder is frozen, so evaluation memoises encoder
outputs per input batch (EncoderCache) after checking that the model's encoder weights equal the
base's exactly; any other model is decoded without the cache. Outputs are identical either way.

    babelora corpus build --out runs/corpus          # or reuse an existing default build
    python bench/merging.py --corpus runs/corpus [--steps 60] [--n-test 20] [--threads 1]

Trained models are cached in --out (default bench/work/merging/train): a re-run with the same
settings skips training. `--tiny-random` runs the whole pipeline on a tiny random model (smoke).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import requests_of, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LANGS = ("de", "fr", "es", "it", "nl")
NEW_LANG = "pt"
# bench name -> (merge method, params); LoRS' official settings (rank 1 % of d_model, keep 20 %)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "average": ("average", {}),
    "task_arithmetic": ("task_arithmetic", {}),  # lambda = 1/N
    "ties": ("ties", {"density": 0.2}),  # lambda 1 on the disjoint mean
    "dare": ("dare", {"drop_rate": 0.5}),  # lambda = 1/N
    "lors": ("lors", {"rank_ratio": 0.01, "density": 0.2}),
    "lors_magnitude": ("magnitude_prune", {"density": 0.2}),
    "lors_svd": ("svd_lowrank", {"rank_ratio": 0.01}),
}
ACCURACY_METRICS = ("wer", "cer")  # error rates: turned into accuracies for normalising
NP_METRICS = {"np": ("wer", "bleu"), "np_fine": ("cer", "chrf")}


# ----------------------------------------------------------------------------- data
def test_subset(utts: Sequence[Any], langs: Sequence[str], n: int) -> list[Any]:
    """Per language: the first `n` ASR utterances and the ST X->en utterances of the same audio
    (in the same order, so both tasks see identical batches), topped up with other ST X->en
    utterances when fewer than `n` share audio."""
    chosen: list[Any] = []
    for lang in langs:
        asr = [u for u in utts if u.lang == lang and u.task == "asr"][:n]
        st_all = [u for u in utts if u.lang == lang and u.task == "st" and u.target_lang == "en"]
        by_audio = {u.audio_filepath: u for u in reversed(st_all)}  # first one wins
        st = [by_audio[a.audio_filepath] for a in asr if a.audio_filepath in by_audio]
        taken = {u.id for u in st}
        st += [u for u in st_all if u.id not in taken][: max(0, n - len(st))]
        chosen += asr + st[:n]
    return chosen


# ----------------------------------------------------------------------------- scores
def accuracy_like(metric: str, value: float) -> float:
    """Error rates become accuracies max(0, 100 - rate); BLEU/chrF stay as they are."""
    return max(0.0, 100.0 - value) if metric in ACCURACY_METRICS else value


def normalised(
    scores: dict[str, dict[str, float]],
    reference: dict[str, dict[str, float]],
    langs: Sequence[str],
    metrics: Sequence[str],
) -> dict[str, Any]:
    """Mean over languages and metrics of accuracy_like(model) / accuracy_like(reference)."""
    ratios, skipped = [], 0
    for lang in langs:
        for metric in metrics:
            if lang not in scores or lang not in reference or metric not in scores[lang]:
                continue
            ref = accuracy_like(metric, reference[lang][metric])
            if ref <= 0:
                skipped += 1
                continue
            ratios.append(accuracy_like(metric, scores[lang][metric]) / ref)
    return {"value": fmean(ratios) if ratios else None, "pairs": len(ratios), "skipped": skipped}


def averages(scores: dict[str, dict[str, float]], langs: Sequence[str]) -> dict[str, float]:
    """Macro averages of every metric over `langs`."""
    out = {}
    for metric in ("wer", "cer", "bleu", "chrf"):
        values = [scores[lang][metric] for lang in langs if metric in scores.get(lang, {})]
        if values:
            out[metric] = fmean(values)
    return out


def bootstrap_halfwidth(
    counts: dict[str, list[tuple[int, int]]], iters: int = 1000, seed: int = 0
) -> float | None:
    """Half-width of the 95 % bootstrap interval of a macro error rate (mean over languages of
    100 * sum(errors) / sum(reference length)), resampling utterances within each language:
    the sampling noise of the test subset, for reading differences between models."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rates = []
    for pairs in counts.values():
        if not pairs:
            continue
        data = np.asarray(pairs, dtype=np.float64)  # (m, 2): errors, reference length
        idx = rng.integers(0, len(data), size=(iters, len(data)))
        rates.append(100.0 * data[idx, 0].sum(1) / np.maximum(data[idx, 1].sum(1), 1.0))
    if not rates:
        return None
    macro = np.mean(rates, axis=0)
    low, high = np.percentile(macro, [2.5, 97.5])
    return float(high - low) / 2.0


# ----------------------------------------------------------------------------- encoder cache
class EncoderCache:
    """Memoise encoder outputs by input features, for models whose encoder is the base's.

    `attach(model)` compares the model's encoder weights with the reference (exact equality) and
    only then wraps its forward; it returns whether it did.
    """

    def __init__(self, reference: dict[str, torch.Tensor]) -> None:
        self.reference = {k: v.detach().clone() for k, v in reference.items()}
        self.outputs: dict[tuple, Any] = {}
        self.hits = self.misses = 0

    def matches(self, encoder: torch.nn.Module) -> bool:
        state = encoder.state_dict()
        return state.keys() == self.reference.keys() and all(
            torch.equal(state[k], v) for k, v in self.reference.items()
        )

    def attach(self, model: torch.nn.Module) -> bool:
        encoder = model.get_encoder()
        if not self.matches(encoder):
            return False
        original = encoder.forward

        def forward(input_features: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if args or kwargs:
                return original(input_features, *args, **kwargs)
            data = input_features.detach().cpu().contiguous()
            digest = hashlib.sha1(data.numpy().tobytes()).digest()
            key = (tuple(data.shape), str(data.dtype), digest)
            if key in self.outputs:
                self.hits += 1
            else:
                self.misses += 1
                self.outputs[key] = original(input_features)
            return self.outputs[key]

        encoder.forward = forward
        return True


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    corpus: Path
    out: Path
    langs: tuple[str, ...]
    new_lang: str
    steps: int
    joint_steps: int
    batch_seconds: float
    full_encoder: bool
    full_lr: float
    lora_lr: float
    lora_rank: int
    lora_alpha: float
    lora_parts: tuple[str, ...]
    warmup_ratio: float
    min_input_seconds: float
    n_test: int
    max_new_tokens: int
    threads: int
    tiny_random: bool
    seed: int = 0


def train_config(s: Settings, name: str, langs: Sequence[str], recipe: str, steps: int) -> dict:
    """The TrainConfig (as a dict) of one fine-tune."""
    if recipe == "full":
        params: dict[str, Any] = {"train_encoder": s.full_encoder, "train_decoder": True}
        lr = s.full_lr
    else:
        params = {"rank": s.lora_rank, "alpha": s.lora_alpha, "parts": list(s.lora_parts)}
        lr = s.lora_lr
    model = {"tiny_random": True} if s.tiny_random else {"name": None}
    return {
        "output_dir": str(s.out / "train" / name),
        "model": {**model, "prompt_style": "multilingual"},
        "data": {
            "train": [str(s.corpus / "train.jsonl")],
            "languages": list(langs),
            "tasks": ["asr", "st"],
            "batch_seconds": s.batch_seconds,
            "min_input_seconds": s.min_input_seconds,
            "feature_cache": str(s.out / "features"),
        },
        "optim": {
            "lr": lr,
            "warmup_steps": int(s.warmup_ratio * steps),
            "schedule": "linear",
            "clip_norm": 1.0,
        },
        "recipe": {"name": recipe, "params": params},
        "checkpoint": {"save_every": 10**9, "keep_last": 1, "keep_best": 0},
        "max_steps": steps,
        "seed": s.seed,
        "mixed_precision": "no",
        "log_every": max(1, steps // 5),
        "progress_bar": False,
    }


def train_cached(cfg_dict: dict) -> tuple[Path, float, bool]:
    """Train unless `output_dir/final` exists from the same config; (final dir, train seconds,
    whether it was cached). The seconds of a cached run are those recorded when it trained."""
    from babelora.config import build_dataclass
    from babelora.methods.registry import train
    from babelora.train.config import TrainConfig

    out = Path(cfg_dict["output_dir"])
    stamp = out / "bench_train.json"
    key = json.dumps(cfg_dict, sort_keys=True)
    if (out / "final").is_dir() and stamp.is_file():
        saved = json.loads(stamp.read_text())
        if saved.get("config") == key:
            return out / "final", float(saved["seconds"]), True
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = train(build_dataclass(TrainConfig, cfg_dict))
    seconds = time.perf_counter() - start
    assert result.final_dir is not None
    record = {"config": key, "seconds": seconds, "train_loss": result.train_loss}
    stamp.write_text(json.dumps(record))
    return result.final_dir, seconds, False


# ----------------------------------------------------------------------------- models
def base_handle(s: Settings):
    from babelora.models.whisper import load_whisper, tiny_random_whisper

    if s.tiny_random:
        handle = tiny_random_whisper(0)
        handle.prompt_style = "multilingual"
        return handle
    return load_whisper(None, prompt_style="multilingual")


def load_model(s: Settings, kind: str, path: Path | None):
    """kind base | full (a transformers folder) | lora (a PEFT adapter on the base)."""
    from babelora.methods.loading import apply_peft_adapter
    from babelora.models.whisper import load_whisper

    if kind == "full":
        return load_whisper(path, prompt_style="multilingual")
    handle = base_handle(s)
    if kind == "lora":
        assert path is not None
        handle = apply_peft_adapter(handle, path)
    return handle


def save_base(s: Settings) -> Path:
    """theta_0 as a safetensors folder (+ tokenizer), so merges stream the base from disk."""
    folder = s.out / ("base_tiny_random" if s.tiny_random else "base")
    if not (folder / "model.safetensors").is_file():
        handle = base_handle(s)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        handle.model.save_pretrained(str(tmp), safe_serialization=True)
        handle.tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folder


def evaluate(s: Settings, handle, utts: Sequence[Any], cache: EncoderCache | None) -> dict:
    """Decode `utts` and score them: {lang: {wer, cer, bleu, chrf}} plus bookkeeping."""
    from babelora.decode.runner import RunnerOptions, decode_requests
    from babelora.decode.search import DecodeOptions
    from babelora.evaluate import ScoreConfig, cer, error_rate, score

    cached = cache.attach(handle.model) if cache is not None else False
    requests = requests_of(utts)
    start = time.perf_counter()
    results = decode_requests(
        handle,
        requests,
        DecodeOptions(max_new_tokens=s.max_new_tokens),
        RunnerOptions(min_input_seconds=s.min_input_seconds, show_progress=False),
    )
    seconds = time.perf_counter() - start
    hyps = {r.id: r.hypothesis for r in results}
    report = score(hyps, list(utts), ScoreConfig(langid=False))
    scores: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, list[tuple[int, int]]]] = {"wer": {}, "cer": {}}
    for u in utts:  # per-utterance edit counts, for the bootstrap noise estimate
        if u.task == "asr":
            for name, fn in (("wer", error_rate), ("cer", cer)):
                rate = fn([hyps[u.id]], [u.text], u.lang)
                counts[name].setdefault(u.lang, []).append((rate.errors, rate.ref_len))
    for row in report.rows:
        item = scores.setdefault(row.lang, {})
        if row.task == "asr":
            items = [u for u in utts if u.lang == row.lang and u.task == "asr"]
            item["wer"] = row.score
            item["cer"] = cer([hyps[u.id] for u in items], [u.text for u in items], row.lang).score
        else:
            item["bleu"], item["chrf"] = row.score, row.chrf
    examples = {u.id: hyps[u.id] for u in utts[:: max(1, len(utts) // 6)]}
    return {
        "scores": scores,
        "counts": counts,
        "failed": report.counts["failed"],
        "decode_seconds": seconds,
        "encoder_cached": cached,
        "examples": examples,
    }


# ----------------------------------------------------------------------------- merging
def merge_recipe(
    s: Settings,
    base: Path,
    inputs: dict[str, Path],
    method: str,
    params: dict[str, Any],
    output: Path,
    kind: str,
    lora_rank: int | None = None,
    expand: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `babelora merge` recipe (dict) for full checkpoints or LoRA adapters."""
    recipe: dict[str, Any] = {
        "base": str(base),
        # LoRA adapters record the CTranslate2 tiny.en as their base; the saved folder is the
        # same weights under another path, so the base-name check is off (shapes still checked)
        "inputs": [
            {"path": str(p), "name": lang, **({"check_base": False} if kind == "lora" else {})}
            for lang, p in inputs.items()
        ],
        "method": method,
        "params": dict(params),
        "output": {"path": str(output), "kind": "full", "overwrite": True},
        "seed": s.seed,
        "progress": False,
    }
    if kind == "lora":
        recipe["output"].update(kind="lora", rank=lora_rank)
    if expand is not None:
        recipe["expand"] = expand
    return recipe


def run_merge(recipe: dict[str, Any], threads: int) -> dict[str, Any]:
    """`babelora merge` in a subprocess (its own peak RSS); the report's numbers + wall time."""
    import yaml

    output = Path(recipe["output"]["path"])
    path = output.with_name(output.name + ".recipe.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), "utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "babelora.cli.main", "merge", str(path)],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"merge {path} failed:\n{proc.stdout}\n{proc.stderr}")
    report = json.loads((output / "merge_report.json").read_text())
    out = {
        "seconds": report["seconds"],
        "process_seconds": wall,
        "max_rss_mb": report["max_rss_mb"],
        "recipe": str(path),
    }
    if "lora" in report:
        out["lora_error_mean"] = report["lora"]["mean_error"]
        out["lora_error_max"] = report["lora"]["max_error"]
        out["lora_dropped"] = len(report["lora"]["dropped_updates"])
    return out


def import_floor_mb(threads: int) -> float:
    """Peak RSS of a process that only imports the merge command (python, torch, babelora)."""
    code = (
        "import torch; from babelora.cli.main import build_parser; build_parser(); "
        "import babelora.merging.merge; torch.zeros(1); "
        "from babelora.merging.report import peak_rss_mb; print(peak_rss_mb())"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return float(proc.stdout.strip().splitlines()[-1])


def max_abs_diff(a: Path, b: Path) -> float:
    """Largest |a - b| over the tensors of two model.safetensors files."""
    from safetensors import safe_open

    worst = 0.0
    with (
        safe_open(str(a / "model.safetensors"), "pt") as fa,
        safe_open(str(b / "model.safetensors"), "pt") as fb,
    ):
        for key in fa.keys():  # noqa: SIM118 - safe_open is not iterable
            x, y = fa.get_tensor(key), fb.get_tensor(key)
            if x.is_floating_point():
                worst = max(worst, float((x.double() - y.double()).abs().max()))
    return worst


# ----------------------------------------------------------------------------- reporting
def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_names(results: dict, mode: str) -> list[str]:
    """The rows of one mode's tables that were measured, in table order."""
    names = ["base", f"{mode}/individual", f"{mode}/joint"]
    names += [f"{mode}/merge/{m}" for m in results["settings"]["methods"]]
    return [name for name in names if name in results["models"]]


def summary_table(results: dict, mode: str, langs: Sequence[str]) -> list[str]:
    """Averages over `langs`, normalised performance and merge cost of one mode (full | lora)."""
    merges = results["merges"]
    lines = [
        f"### {mode}: merged five languages ({', '.join(langs)})",
        "",
        "| model | WER | CER | BLEU | chrF | NP (WER, BLEU) | NP-fine (CER, chrF) "
        "| merge s | merge peak RSS MB | LoRA refactor error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in table_names(results, mode):
        r = results["models"][name]
        avg = r["average"]
        m = merges.get(name, {})
        ci = r["ci95"]
        lines.append(
            f"| {name} | {fmt(avg.get('wer'))} ±{fmt(ci['wer'])} | "
            f"{fmt(avg.get('cer'))} ±{fmt(ci['cer'])} | {fmt(avg.get('bleu'))} "
            f"| {fmt(avg.get('chrf'))} | {fmt(r['np'][mode]['value'], 3)} | "
            f"{fmt(r['np_fine'][mode]['value'], 3)} | {fmt(m.get('seconds'), 2)} | "
            f"{fmt(m.get('max_rss_mb'), 0)} | {fmt(m.get('lora_error_mean'), 3)} |"
        )
    return lines


def per_language_table(results: dict, mode: str, langs: Sequence[str]) -> list[str]:
    """WER / BLEU of every model of one mode, language by language."""
    lines = [
        "| model | " + " | ".join(f"{lang} WER / BLEU" for lang in langs) + " |",
        "| --- |" + " --- |" * len(langs),
    ]
    for name in table_names(results, mode):
        cells = []
        for lang in langs:
            sc = results["models"][name]["scores"].get(lang, {})
            cells.append(f"{fmt(sc.get('wer'))} / {fmt(sc.get('bleu'))}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def mode_tables(results: dict, mode: str, langs: Sequence[str]) -> str:
    """Summary and per-language Markdown tables of one mode (full | lora)."""
    lines = summary_table(results, mode, langs) + [""] + per_language_table(results, mode, langs)
    return "\n".join(lines)


def expansion_table(results: dict, mode: str, langs: Sequence[str], new: str) -> str:
    rows = results["models"]
    before, after = rows.get(f"{mode}/merge/lors"), rows.get(f"{mode}/expand/lors+{new}")
    indiv = rows.get(f"{mode}/individual")
    if before is None or after is None:
        return ""
    lines = [
        f"### {mode}: LoRS merge + {new} by language expansion (WER / BLEU)",
        "",
        f"| language | LoRS 5 langs | LoRS + {new} | change WER / BLEU | individual |",
        "| --- | --- | --- | --- | --- |",
    ]
    for lang in [*langs, new]:
        b, a = before["scores"].get(lang, {}), after["scores"].get(lang, {})
        i = indiv["scores"].get(lang, {}) if indiv else {}
        change = (
            f"{a['wer'] - b['wer']:+.1f} / {a['bleu'] - b['bleu']:+.1f}"
            if "wer" in a and "wer" in b
            else "-"
        )
        lines.append(
            f"| {lang} | {fmt(b.get('wer'))} / {fmt(b.get('bleu'))} | "
            f"{fmt(a.get('wer'))} / {fmt(a.get('bleu'))} | {change} | "
            f"{fmt(i.get('wer'))} / {fmt(i.get('bleu'))} |"
        )
    return "\n".join(lines)


def markdown(results: dict) -> str:
    st = results["settings"]
    langs, new = st["langs"], st["new_lang"]
    parts = [
        f"Merging benchmark ({results['date']}, {results['machine']['cpu']}, "
        f"{st['threads']} thread(s)); wall {results['wall_seconds']:.0f} s (load average "
        f"{results['machine']['load_average']}). "
        f"Command: `{results['command']}`",
        "",
        f"Scale: {st['steps']} steps per language, joint {st['joint_steps']} steps, batch "
        f"{st['batch_seconds']} s audio, full FT encoder "
        f"{'trained' if st['full_encoder'] else 'frozen'}, LoRA r={st['lora_rank']} on "
        f"{'+'.join(st['lora_parts'])}; test {st['n_test']} ASR + {st['n_test']} ST per "
        f"language; min_input_seconds {st['min_input_seconds']} (train and decode).",
        "",
        results["np_definition"],
        "",
        "± after WER/CER: half-width of the 95 % bootstrap interval over test utterances "
        "(differences smaller than that are sampling noise). LoRA refactor error: mean relative "
        "Frobenius error of the merged LoRA update re-factorised to the output rank.",
        "",
        mode_tables(results, "full", langs),
        "",
        mode_tables(results, "lora", langs),
        "",
        expansion_table(results, "full", langs, new),
        "",
        expansion_table(results, "lora", langs, new),
        "",
        f"Merge peak RSS includes the import floor of {results['import_floor_mb']:.0f} MB "
        f"(python + torch + babelora); base model {results['base_mb']:.0f} MB on disk.",
    ]
    if "expand_vs_fresh_max_abs" in results:
        parts.append(
            f"Full LoRS expansion vs a fresh 6-language LoRS merge: max |diff| "
            f"{results['expand_vs_fresh_max_abs']:.3g}."
        )
    return "\n".join(parts) + "\n"


NP_DEFINITION = (
    "NP = mean over languages and tasks of score(model) / score(individual fine-tune of "
    "that language), WER/CER as accuracy max(0, 100 - rate), BLEU/chrF as they are "
    "(TIES-Merging's normalised accuracy); NP uses WER + BLEU, NP-fine CER + chrF; the "
    "individual fine-tune is 1.0 by definition; `full` models are normalised by the full "
    "fine-tunes, `lora` ones by the LoRA fine-tunes, the base by both (np[mode])."
)


# ----------------------------------------------------------------------------- steps 1-4
def log(msg: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:7.1f} s] {msg}", flush=True)


def train_all(s: Settings, t0: float) -> tuple[dict[str, Path], dict[str, dict]]:
    """1. Full and LoRA fine-tunes of every language (new_lang too) and the joint baselines:
    (final folders, training bookkeeping), both by run name (`full_de`, `lora_joint`)."""
    all_langs = [*s.langs, s.new_lang]
    trained: dict[str, Path] = {}
    train_info: dict[str, dict] = {}
    jobs = [(f"{r}_{lang}", [lang], r, s.steps) for r in ("full", "lora") for lang in all_langs]
    jobs += [(f"{r}_joint", list(s.langs), r, s.joint_steps) for r in ("full", "lora")]
    for name, langs, recipe, steps in jobs:
        final, seconds, cached = train_cached(train_config(s, name, langs, recipe, steps))
        trained[name] = final
        train_info[name] = {"seconds": seconds, "cached": cached, "steps": steps}
        log(f"train {name}: {seconds:.0f} s{' (cached)' if cached else ''}", t0)
    return trained, train_info


def merge_mode(
    s: Settings, base: Path, trained: dict[str, Path], methods: list[str], mode: str, t0: float
) -> tuple[dict[str, dict], dict[str, Path]]:
    """2. One mode's (full | lora) fine-tunes merged by every method, then LoRS expanded by
    new_lang: (merge reports, output folders), both by model name (`lora/merge/ties`)."""
    merges: dict[str, dict] = {}
    outputs: dict[str, Path] = {}
    inputs = {lang: trained[f"{mode}_{lang}"] for lang in s.langs}
    rank = s.lora_rank * len(s.langs)
    for name in methods:
        method, params = METHODS[name]
        out = s.out / "merges" / mode / name
        recipe = merge_recipe(s, base, inputs, method, params, out, mode, rank)
        key = f"{mode}/merge/{name}"
        merges[key] = run_merge(recipe, s.threads)
        outputs[key] = out
        log(f"merge {key}: {merges[key]['seconds']:.2f} s", t0)
    if "lors" in methods:  # language expansion: + new_lang
        method, params = METHODS["lors"]
        out = s.out / "merges" / mode / f"lors+{s.new_lang}"
        expand = {"merged": str(s.out / "merges" / mode / "lors"), "renormalize": True}
        new_inputs = {s.new_lang: trained[f"{mode}_{s.new_lang}"]}
        recipe = merge_recipe(
            s, base, new_inputs, method, params, out, mode, rank + s.lora_rank, expand
        )
        key = f"{mode}/expand/lors+{s.new_lang}"
        merges[key] = run_merge(recipe, s.threads)
        outputs[key] = out
        log(f"merge {key}: {merges[key]['seconds']:.2f} s", t0)
    return merges, outputs


def expansion_error(s: Settings, base: Path, trained: dict[str, Path]) -> float:
    """Max |diff| between the expanded full LoRS merge and a fresh 6-language LoRS merge."""
    method, params = METHODS["lors"]
    fresh = s.out / "merges" / "full" / "lors_fresh6"
    six = {lang: trained[f"full_{lang}"] for lang in [*s.langs, s.new_lang]}
    run_merge(merge_recipe(s, base, six, method, params, fresh, "full"), s.threads)
    return max_abs_diff(s.out / "merges" / "full" / f"lors+{s.new_lang}", fresh)


def evaluation_plan(
    s: Settings, trained: dict[str, Path], outputs: dict[str, Path], methods: list[str], test
) -> list[tuple[str, str, Path | None, list]]:
    """3. What to decode: (model name, kind, folder, utterances). Individual fine-tunes are
    decoded on their own language only (`full/individual:de`)."""
    all_langs = [*s.langs, s.new_lang]
    five = [u for u in test if u.lang in s.langs]
    plan: list[tuple[str, str, Path | None, list]] = [("base", "base", None, test)]
    for mode in ("full", "lora"):
        for lang in all_langs:
            own = [u for u in test if u.lang == lang]
            plan.append((f"{mode}/individual:{lang}", mode, trained[f"{mode}_{lang}"], own))
        plan.append((f"{mode}/joint", mode, trained[f"{mode}_joint"], five))
        for name in methods:
            key = f"{mode}/merge/{name}"
            utts = test if name == "lors" else five  # LoRS also on new_lang: before expansion
            plan.append((key, mode, outputs[key], utts))
        key = f"{mode}/expand/lors+{s.new_lang}"
        if key in outputs:
            plan.append((key, mode, outputs[key], test))
    return plan


def evaluate_all(s: Settings, plan: list, t0: float) -> tuple[dict[str, dict], EncoderCache]:
    """Decode and score every model of the plan (the base encoder's outputs memoised)."""
    handle = base_handle(s)
    cache = EncoderCache(handle.model.get_encoder().state_dict())
    evals: dict[str, dict] = {}
    for key, kind, path, utts in plan:
        model = handle if kind == "base" else load_model(s, kind, path)
        evals[key] = evaluate(s, model, utts, cache)
        log(f"eval {key}: {evals[key]['decode_seconds']:.1f} s", t0)
    return evals, cache


def model_rows(s: Settings, evals: dict[str, dict]) -> dict[str, dict]:
    """4. One row per model: scores, averages, bootstrap half-widths and normalised performance.
    The individual fine-tunes of a mode join into one row, each language scored by its own."""
    all_langs = [*s.langs, s.new_lang]
    models: dict[str, dict] = {}
    for key, ev in evals.items():
        if ":" in key:  # individual fine-tunes: one row per mode, each on its own language
            empty = {"scores": {}, "counts": {"wer": {}, "cer": {}}, "decode_seconds": 0.0}
            row = models.setdefault(key.split(":")[0], empty)
            row["scores"].update(ev["scores"])
            for metric in ("wer", "cer"):
                row["counts"][metric].update(ev["counts"][metric])
            row["decode_seconds"] += ev["decode_seconds"]
        else:
            keep = ("scores", "counts", "decode_seconds", "encoder_cached", "examples")
            models[key] = {k: ev[k] for k in keep}
    for key, row in models.items():
        langs = all_langs if "expand" in key else list(s.langs)
        row["average"] = averages(row["scores"], langs)
        counts = row.pop("counts")
        row["ci95"] = {  # bootstrap half-widths of the macro WER / CER over `langs`
            m: bootstrap_halfwidth({lang: counts[m].get(lang, []) for lang in langs})
            for m in ("wer", "cer")
        }
        for mode in ("full", "lora") if key == "base" else (key.split("/")[0],):
            reference = models[f"{mode}/individual"]["scores"]
            for np_name, metrics in NP_METRICS.items():
                row.setdefault(np_name, {})[mode] = normalised(
                    row["scores"], reference, langs, metrics
                )
    return models


def machine(load_start: float) -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        # 1-minute load average at start and end: other jobs on the machine slow timings
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }


def settings_record(s: Settings, methods: list[str], test_items: int) -> dict[str, Any]:
    return {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(s).items()},
        "methods": methods,
        "method_params": {m: METHODS[m] for m in methods},
        "lora_merge_output_rank": s.lora_rank * len(s.langs),
        "decode": "greedy",
        "test_items": test_items,
    }


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> tuple[Settings, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=ROOT / "runs" / "corpus")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "work" / "merging")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "merging.json")
    ap.add_argument("--langs", default=",".join(LANGS))
    ap.add_argument("--new-lang", default=NEW_LANG)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per language")
    ap.add_argument("--joint-steps", type=int, default=None, help="default: langs x steps")
    ap.add_argument("--batch-seconds", type=float, default=16.0)
    ap.add_argument("--full-encoder", action="store_true", help="full FT trains the encoder too")
    ap.add_argument("--full-lr", type=float, default=3e-4)
    ap.add_argument("--lora-lr", type=float, default=2e-3)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16.0)
    ap.add_argument("--lora-parts", default="decoder", help="encoder,decoder or one of them")
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--min-input-seconds", type=float, default=0.0)
    ap.add_argument("--n-test", type=int, default=20, help="ASR and ST items per language")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tiny-random", action="store_true", help="smoke run on a tiny random model")
    args = ap.parse_args(argv)
    langs = tuple(x for x in args.langs.split(",") if x)
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; known: {list(METHODS)}")
    settings = Settings(
        corpus=args.corpus.resolve(),
        out=args.out.resolve(),
        langs=langs,
        new_lang=args.new_lang,
        steps=args.steps,
        joint_steps=args.joint_steps or args.steps * len(langs),
        batch_seconds=args.batch_seconds,
        full_encoder=args.full_encoder,
        full_lr=args.full_lr,
        lora_lr=args.lora_lr,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_parts=tuple(args.lora_parts.split(",")),
        warmup_ratio=args.warmup_ratio,
        min_input_seconds=args.min_input_seconds,
        n_test=args.n_test,
        max_new_tokens=args.max_new_tokens,
        threads=args.threads,
        tiny_random=args.tiny_random,
    )
    return settings, args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    s, args = parse_args(argv)
    methods = args.methods.split(",")
    torch.set_num_threads(s.threads)
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    from babelora.data.manifest import read_manifest

    test = test_subset(read_manifest(s.corpus / "test.jsonl"), [*s.langs, s.new_lang], s.n_test)
    trained, train_info = train_all(s, t0)
    base = save_base(s)
    merges: dict[str, dict] = {}
    outputs: dict[str, Path] = {}
    for mode in ("full", "lora"):
        mode_merges, mode_outputs = merge_mode(s, base, trained, methods, mode, t0)
        merges.update(mode_merges)
        outputs.update(mode_outputs)
    extra: dict[str, Any] = {}
    if "lors" in methods:  # expansion == a fresh 6-language LoRS merge (full models)
        extra["expand_vs_fresh_max_abs"] = expansion_error(s, base, trained)
    evals, cache = evaluate_all(s, evaluation_plan(s, trained, outputs, methods, test), t0)
    results = {
        "benchmark": "merging",
        "command": "python bench/merging.py " + " ".join(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(load_start),
        "settings": settings_record(s, methods, len(test)),
        "np_definition": NP_DEFINITION,
        "train": train_info,
        "merges": merges,
        "import_floor_mb": import_floor_mb(s.threads),
        "base_mb": (base / "model.safetensors").stat().st_size / 2**20,
        "encoder_cache": {"hits": cache.hits, "misses": cache.misses},
        "models": model_rows(s, evals),
        **extra,
    }
    results["wall_seconds"] = time.perf_counter() - t0
    write_json(args.results, results)
    text = markdown(results)
    args.results.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
