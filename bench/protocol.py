"""The evaluation protocol of docs/benchmarks.md, shared by bench/experts.py and bench/merging.py.

Test sets (synthetic unseen-speaker test, its noisy copy when the build has one, real speech),
the `--budget` sample of each, decoding with every row's language given or predicted (Whisper's
own LID), the kept per-utterance hypotheses, and the paired bootstrap differences between rows.

Decoding memoises the frozen base encoder per clip (`EncoderMemo`): every decoder-side system
of a table sees the same encoder states for a clip, so the encoder runs once per clip and test
set instead of once per clip, task and system. A model's encoder is memoised only when its
weights equal the base's exactly.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from common import first_per_group, requests_of, reset_accelerate, write_hypotheses

from babelora.decode import encoder_memo


# ----------------------------------------------------------------------------------- test sets
@dataclass
class TestSet:
    """One scored test set: its name (`test`, `test_noisy`, `real`), source and sampled rows."""

    name: str
    source: Path
    utts: list = field(default_factory=list)


def keep_row(u: Any, langs: Sequence[str]) -> bool:
    """ASR and ST X->en rows of the table's languages."""
    return u.lang in langs and (u.task == "asr" or (u.task == "st" and u.target_lang == "en"))


def test_sets(
    data: Path,
    real: Sequence[Path],
    langs: Sequence[str],
    per_group: int | None,
    real_per_group: int | None,
    noisy_per_group: int | None = None,
) -> list[TestSet]:
    """The protocol's test sets: `data/test.jsonl`, `data/test_noisy.jsonl` when the build has
    one, and each real-speech manifest (`real`, or `real_<stem>` when several); the first
    `per_group` (`noisy_per_group`, `real_per_group`) rows of each (language, task) in manifest
    order (None: all)."""
    from babelora.data.manifest import read_manifest

    sources = [("test", data / "test.jsonl", per_group)]
    if (data / "test_noisy.jsonl").is_file():
        sources.append(("test_noisy", data / "test_noisy.jsonl", noisy_per_group))
    for path in real:
        name = "real" if len(real) == 1 else f"real_{Path(path).name.split('.jsonl')[0]}"
        sources.append((name, Path(path), real_per_group))
    out = []
    for name, path, n in sources:
        utts = [u for u in read_manifest(path) if keep_row(u, langs)]
        chosen = first_per_group(utts, n)
        if chosen:
            out.append(TestSet(name, path, chosen))
    return out


def write_subset(ts: TestSet, folder: Path) -> Path:
    """The sampled rows as a manifest (`<name>.manifest.jsonl`, without the source metadata):
    the `--manifest` of `babelora score` that re-derives the table's cells."""
    from babelora.data.manifest import write_manifest

    folder.mkdir(parents=True, exist_ok=True)
    return write_manifest(
        [replace(u, source=None) for u in ts.utts], folder / f"{ts.name}.manifest.jsonl"
    )


def training_rows(path: Path, langs: Sequence[str], per_group: int | None) -> list:
    from babelora.data.manifest import read_manifest

    return first_per_group([u for u in read_manifest(path) if keep_row(u, langs)], per_group)


# ------------------------------------------------------------------------------ encoder memo
class EncoderMemo(encoder_memo.EncoderMemo):
    """Encoder states per clip (babelora.decode.encoder_memo, unbounded), for models whose
    encoder is the base's.

    `attach(model)` compares the model's encoder weights with the reference (exact equality) and
    only then installs the memo on its forward: rows seen before come from the memo, the others
    run through the encoder as one sub-batch. Returns whether it attached.
    """

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__(max_bytes=None)
        self.reference = {k: v.detach().clone() for k, v in encoder.state_dict().items()}

    def matches(self, encoder: torch.nn.Module) -> bool:
        state = encoder.state_dict()
        return state.keys() == self.reference.keys() and all(
            state[k].shape == v.shape and torch.equal(state[k], v)
            for k, v in self.reference.items()
        )

    def attach(self, model: torch.nn.Module) -> bool:
        encoder = model.get_encoder()
        if getattr(encoder.forward, "memo", None) is self:
            return True
        if not self.matches(encoder):
            return False
        self.install(encoder)
        return True


def attach_memo_below(memo: EncoderMemo, model: torch.nn.Module, modules=("mgrf",)) -> bool:
    """`memo.attach` for an encoder that also carries modules applied to its output by forward
    hooks (MGRF: `encoder.mgrf`, babelora.adapters.mgrf.attach_to_encoder). The memo replaces only
    the encoder's own `forward`, so it keeps holding the base encoder's states, and the hooks still
    run on them at every call. Attaches when the encoder without those modules equals the base
    exactly and hooks are there to run them; otherwise, as `memo.attach` (False for another
    encoder). Returns whether the memo serves the encoder."""
    encoder = model.get_encoder()
    present = [name for name in modules if name in encoder._modules]
    if not present:
        return memo.attach(model)
    if not encoder._forward_hooks:  # a module nothing runs after the encoder: not ours to skip
        return False
    hidden = {name: encoder._modules.pop(name) for name in present}
    try:
        return memo.attach(model)  # compares the base encoder's weights only
    finally:
        encoder._modules.update(hidden)


# ---------------------------------------------------------------------------------- decoding
def runner_options(min_input_seconds: float = 10.0, rows: int = 32):
    """Decoding's input policy: the decoder's default (>= 10 s: the zero-shot row's best setting,
    and Whisper's LID) or the padding a fine-tune trained with (`data.min_input_seconds`, 0 =
    each clip at its own length in 2 s buckets), up to `rows` rows a batch."""
    from babelora.decode.runner import RunnerOptions

    return RunnerOptions(
        batch_seconds=max(min_input_seconds, 5.0) * rows,
        max_batch_size=rows,
        min_input_seconds=min_input_seconds,
        show_progress=False,
    )


def detect(handle, utts: Sequence[Any], langs: Sequence[str], options) -> tuple[list, dict]:
    """Whisper's own LID (first decoding step, candidates restricted to `langs`) for every row:
    (requests with the predicted language, `lang_source="predicted"`; summary: accuracy, per
    language, and each row's probability of its prediction by id)."""
    from babelora.decode.language import apply_detections, detect_languages

    reqs = requests_of(utts)
    found = detect_languages(handle, reqs, options, langs)
    predicted = apply_detections(reqs, found)
    correct = sum(p.lang == u.lang for p, u in zip(predicted, utts))
    per_lang: dict[str, list[int]] = {}
    for p, u in zip(predicted, utts):
        hit = per_lang.setdefault(u.lang, [0, 0])
        hit[0] += p.lang == u.lang
        hit[1] += 1
    summary = {
        "candidates": list(langs),
        "accuracy": correct / max(len(utts), 1),
        "per_lang": {k: v[0] / v[1] for k, v in per_lang.items()},
        "prob": {r.id: round(d.prob, 4) for r, d in zip(reqs, found) if d is not None},
    }
    return predicted, summary


def decode(
    handle,
    requests: Sequence[Any],
    memo: EncoderMemo | None,
    options,
    max_new_tokens: int,
    adapter=None,
    lang_prob: dict[str, float] | None = None,
) -> tuple[list[dict], float, bool]:
    """Decode requests (routing experts by each row's language when `adapter` is an expert set):
    (hypothesis rows as the decode runner writes them, plus `expert`; seconds; memo used)."""
    from babelora.decode.routing import adapter_batch_hook, expert_label
    from babelora.decode.runner import decode_requests
    from babelora.decode.search import DecodeOptions

    memoised = memo.attach(handle.model) if memo is not None else False
    hook = adapter_batch_hook(adapter, "base") if adapter is not None else None
    start = time.perf_counter()
    results = decode_requests(
        handle, list(requests), DecodeOptions(max_new_tokens=max_new_tokens), options, hook
    )
    seconds = time.perf_counter() - start
    rows = []
    for req, res in zip(requests, results):
        row = res.to_json()
        if adapter is not None:
            row["expert"] = expert_label(adapter, req, "base")
        if lang_prob and req.id in lang_prob:
            row["lang_prob"] = lang_prob[req.id]
        rows.append(row)
    return rows, seconds, memoised


def fresh(handle):
    """A copy of the base handle for one system (adapters merge into its weights)."""
    return copy.deepcopy(handle)


# --------------------------------------------------------------------------------- training
def train_once(cfg, stamp_extra: dict | None = None) -> dict:
    """Train `cfg` (a TrainConfig) unless `output_dir/final` exists from the same config:
    {final, seconds, cached, run_info, losses}. Seconds of a cached run are those it recorded."""
    from babelora.methods.registry import train

    out = Path(cfg.output_dir)
    stamp = out / "bench_train.json"
    key = json.dumps({"config": repr(cfg), **(stamp_extra or {})}, sort_keys=True, default=str)
    if (out / "final").is_dir() and stamp.is_file():
        saved = json.loads(stamp.read_text())
        if saved.get("key") == key:
            return {**saved["record"], "cached": True}
    shutil.rmtree(out, ignore_errors=True)
    reset_accelerate()
    start = time.perf_counter()
    cpu = time.process_time()
    result = train(cfg)
    record = {
        "final": str(result.final_dir),
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "steps": result.step,
        "train_loss": result.train_loss,
        "run_info": json.loads((out / "run_info.json").read_text()),
        "losses": _losses(out / "metrics.jsonl"),
    }
    stamp.write_text(json.dumps({"key": key, "record": record}, default=str))
    return {**record, "cached": False}


def _losses(path: Path) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    steps = [r["train/step_time_s"] for r in rows if "train/step_time_s" in r]
    return {
        "first": losses[0] if losses else None,
        "last": losses[-1] if losses else None,
        "median_step_s": sorted(steps)[len(steps) // 2] if steps else None,
    }


# ------------------------------------------------------------------------------ differences
def as_hyps(rows: Sequence[dict]) -> dict:
    from babelora.evaluate.hypotheses import parse_hypothesis

    return {r["id"]: parse_hypothesis(r, "bench") for r in rows}


def differences(utts: Sequence[Any], rows_a: Sequence[dict], rows_b: Sequence[dict]) -> list[dict]:
    """Per-row and macro differences B - A with paired bootstrap 95 % intervals (1,000
    resamples, seed 0: what `babelora score --hyps B --baseline A` prints)."""
    from babelora.evaluate.compare import compare

    return [d.to_json() for d in compare(as_hyps(rows_a), as_hyps(rows_b), list(utts))]


def scores(utts: Sequence[Any], rows: Sequence[dict]) -> dict:
    """A row's scores as `babelora score --manifest <sample> --hyps <file>` reports them: per
    language / direction (WER or CER, BLEU, chrF, chrF++, language confusion) and the macro
    averages."""
    from babelora.evaluate.report import score

    report = score(as_hyps(rows), list(utts)).to_json()
    keep = ("n", "metric", "score", "chrf", "chrf_pp", "confusion", "failed")
    return {
        "rows": {r["name"]: {k: r[k] for k in keep} for r in report["rows"]},
        "averages": report["averages"],
    }


def headline(diffs: Sequence[dict], task: str) -> dict | None:
    """The macro row of a task (`asr` / `st`), or its only row when one language is tested."""
    rows = [d for d in diffs if d["task"] == task]
    macro = [d for d in rows if d["row"] == task]
    if macro:
        return macro[0]
    return rows[0] if len(rows) == 1 else None


def cell(d: dict | None, side: str = "b") -> str:
    return "-" if d is None else f"{d[side]:.1f}"


def delta(d: dict | None) -> str:
    """'-3.2 [-5.1, -1.4]' with a star when the interval excludes zero."""
    if d is None:
        return "-"
    x = d["delta"]
    star = "*" if x["low"] > 0 or x["high"] < 0 else ""
    return f"{x['estimate']:+.1f} [{x['low']:+.1f}, {x['high']:+.1f}]{star}"


def language_table(rows: dict[str, Sequence[dict]], langs: Sequence[str]) -> str:
    """Markdown: each system's WER per language and BLEU per X->en direction, from its
    differences (`rows`: system -> differences list; the B side is the system's score)."""
    lines = ["| system | " + " | ".join(f"WER {x}" for x in langs) + " | "
             + " | ".join(f"BLEU {x}-en" for x in langs) + " |",
             "|---" * (1 + 2 * len(langs)) + "|"]  # fmt: skip
    for system, diffs in rows.items():
        by_row = {d["row"]: d for d in diffs}
        cells = [cell(by_row.get(x)) for x in langs]
        cells += [cell(by_row.get(f"{x}-en")) for x in langs]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_rows(folder: Path, system: str, test: str, rows: Sequence[dict], seed: int = 0) -> Path:
    """bench/results/<table>/<system>.<test set>.jsonl.gz (seed k > 0: <system>.seed<k>....)."""
    name = system if seed == 0 else f"{system}.seed{seed}"
    return write_hypotheses(folder / f"{name}.{test}.jsonl.gz", rows)


def model_label(budget_model: str, model: str) -> str:
    """The model as a report names it (`budget.model`): the smoke budget's tiny random model
    (made from seed 0, so the same everywhere) by that name, any other by its name or path."""
    return "tiny random multilingual" if budget_model == "smoke" else model


def read_rows(path: Path) -> list[dict]:
    """Hypothesis rows of a `.jsonl.gz` written by `save_rows`."""
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def reused_zero_shot(
    report: Path | None, ts: TestSet, hyps_dir: Path, model: str, max_new_tokens: int
) -> tuple[list[dict] | None, str]:
    """The zero-shot rows of `ts` from another table's run (`report`: its results JSON, e.g.
    bench/results/experts.json), when that run decoded exactly this input: the same sampled
    manifest (byte for byte: ids, audio, references), the same model and token limit, and the
    protocol's fixed zero-shot options (10 s input, greedy). The zero-shot row is identical in
    every table, so decoding it once saves ~20 % of a table's CPU. Returns (rows or None, why)."""
    if report is None:
        return None, "no --zero-shot-from"
    if not report.is_file():
        return None, f"{report} not found"
    meta = json.loads(report.read_text())
    budget = meta.get("budget", {})
    if (budget.get("model"), budget.get("max_new_tokens")) != (model, max_new_tokens):
        got = f"{budget.get('model')}, {budget.get('max_new_tokens')} tokens"
        return None, f"{report} decoded another model or token limit ({got})"
    folder = Path(meta["hypotheses"])
    folder = folder if folder.is_absolute() else report.resolve().parents[2] / folder
    theirs, ours = folder / f"{ts.name}.manifest.jsonl", hyps_dir / f"{ts.name}.manifest.jsonl"
    if not theirs.is_file() or theirs.read_bytes() != ours.read_bytes():
        return None, f"{theirs} is not this run's {ts.name} sample"
    source = folder / f"zero_shot.{ts.name}.jsonl.gz"
    if not source.is_file():
        return None, f"{source} not found"
    rows = read_rows(source)
    if [r["id"] for r in rows] != [u.id for u in ts.utts]:
        return None, f"{source} holds other rows"
    if source.resolve() != (hyps_dir / source.name).resolve():
        shutil.copyfile(source, hyps_dir / source.name)
    return rows, f"reused from {source}"


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# ------------------------------------------------------------------------------- reporting
def setting(record: dict | None) -> dict:
    """What a trained row trains, from its run's run_info.json (the engine's label, trainable
    parameter count, whether it trained from the encoder-state cache); None: nothing."""
    if record is None:
        return {"trains": "nothing", "parameters": 0, "encoder_cache": False}
    info = record["run_info"]
    return {
        "trains": info["trains"],
        "parameters": int(sum(info["trainable_parameters"].values())),
        "encoder_cache": bool(info["encoder_cache"]["used"]),
    }


def slim(record: dict) -> dict:
    """A train_once record for the results JSON (without the final folder's path)."""
    keep = ("seconds", "cpu_seconds", "steps", "train_loss", "losses", "cached", "config")
    out = {k: record.get(k) for k in keep}
    out["overrides"] = record.get("overrides")
    out["run_info"] = {
        k: record["run_info"].get(k)
        for k in ("recipe", "trains", "trainable_parameters", "encoder_cache")
    }
    return out


def relative(path: Path, root: Path) -> Path:
    """`path` relative to `root` when inside it (results JSON keep repository paths short)."""
    try:
        return path.relative_to(root)
    except ValueError:
        return path


def machine(threads: int) -> dict:
    import os
    import platform

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv, parse_args: Callable, run: Callable, markdown: Callable) -> None:
    """A table's command line: parse, run, write <out>.json and <out>.md, print the tables."""
    import os
    import sys

    from common import log, write_json

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    report = run(args)
    write_json(args.out, report)
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    log(f"results in {args.out}; total {report['wall_s']:.0f} s")


# ---------------------------------------------------------------------------- smoke model
def tiny_multilingual(folder: Path) -> Path:
    """A tiny random-weight multilingual Whisper (base's vocabulary and tokenizer) saved as a
    transformers folder: the `--budget smoke` model, on which Whisper's LID runs like base's."""
    from transformers import PreTrainedTokenizerFast

    from babelora.models.offline import offline_model_path
    from babelora.models.whisper import tiny_random_whisper

    if (folder / "model.safetensors").is_file():
        return folder
    handle = tiny_random_whisper(
        seed=0,
        vocab_size=51865,
        decoder_start_token_id=50258,
        eos_token_id=50257,
        pad_token_id=50257,
        bos_token_id=50257,
        begin_suppress_tokens=[220, 50257],
    )
    tok = PreTrainedTokenizerFast(tokenizer_file=str(offline_model_path("base") / "tokenizer.json"))
    tok.pad_token = tok.eos_token = "<|endoftext|>"
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    handle.model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
