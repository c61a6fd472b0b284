"""LoRS-Merging (arXiv 2502.17380) vs the standard merges and multi-task training on Whisper base,
to the evaluation protocol of docs/benchmarks.md.

Rows (each states what trains, from the runs' run_info.json; the language is given everywhere):
  zero_shot        Whisper base, nothing trained
  multi_task       one fine-tune (recipe `full`) on the union of the six languages' ASR and ST
                   X->en rows, for len(langs) x steps (the total budget of the six fine-tunes)
  individual       one fine-tune per language on that language's rows (`steps` each), each
                   decoding its own language: the reference of the normalised performance
  average, task_arithmetic, ties, dare, lors, lors_magnitude (LoRS' sparse part only),
  lors_svd (LoRS' low-rank part only)
                   the six individual fine-tunes merged by `babelora merge` (METHODS: LoRS'
                   official settings, rank 1 % of d_model, keep 20 %)
Fine-tunes train the decoder only at the `cpu` budget (encoder frozen: every run trains from
the encoder-state cache) and the whole model at `full`. With a frozen encoder the merges copy
the encoder from the base (recipe `exclude`), so every row but zero-shot decodes with the same
memoised base encoder states. Language expansion (LoRS of five languages + the sixth by
`expand`, renormalised) is checked numerically against the six-language LoRS merge (max |diff|
in the JSON); it is not decoded.

Data: the training rows (ASR and ST X->en) of a corpus build (`--data`, the `large` build of the
protocol); test sets: its unseen-speaker `test.jsonl`, its `test_noisy.jsonl` when present and
the budget samples it, and each `--real` manifest (Fish Fillets NG, Dutch). Metrics: WER (ASR)
and BLEU (ST X->en) with paired bootstrap 95 % intervals (1,000 resamples, seed 0) of every row
vs zero-shot and vs multi-task; the JSON adds CER, chrF and the normalised performance (TIES-
Merging's: score / the individual fine-tune's score, error rates as accuracies 100 - rate).
Per-utterance hypotheses are kept in `bench/results/merging/<system>.<test set>.jsonl.gz` beside
each test set's sampled manifest (`<test set>.manifest.jsonl`), so any cell can be re-derived:

    babelora score --manifest bench/results/merging/test.manifest.jsonl \\
        --hyps bench/results/merging/lors.test.jsonl.gz \\
        --baseline bench/results/merging/multi_task.test.jsonl.gz

Budgets (`--budget`; single options below override):
  smoke  tiny random multilingual Whisper (base's tokenizer), a few steps and rows: 1-2 min
  cpu    Whisper base, decoder-only fine-tunes from the encoder-state cache, 100 test and real
         rows per (language, task), 50 noisy; estimate in the `cpu` budget's comment
  full   Whisper base, whole-model fine-tunes, all rows, seeds 0, 1, 2: a GPU

    python bench/merging.py --budget smoke --data /tmp/corpus_default \\
        --real /tmp/fil/fillets.nl.test.jsonl --work /tmp/bench_merging_smoke --out /tmp/m.json
    python bench/merging.py --budget cpu --data /work/data/corpus_large \\
        --real /tmp/fil/fillets.nl.test.jsonl --zero-shot-from bench/results/experts.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import fmean
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol as P  # noqa: E402
from common import log  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "train" / "full_tiny.yaml"  # the standard full fine-tune
LANGS = ("de", "fr", "es", "it", "nl", "pt")
# row -> (merge method, params); LoRS' official settings (rank 1 % of d_model, keep 20 %)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "average": ("average", {}),
    "task_arithmetic": ("task_arithmetic", {}),  # lambda = 1/N
    "ties": ("ties", {"density": 0.2}),  # lambda 1 on the disjoint mean
    "dare": ("dare", {"drop_rate": 0.5}),  # lambda = 1/N
    "lors": ("lors", {"rank_ratio": 0.01, "density": 0.2}),
    "lors_magnitude": ("magnitude_prune", {"density": 0.2}),  # LoRS' sparse part only
    "lors_svd": ("svd_lowrank", {"rank_ratio": 0.01}),  # LoRS' low-rank part only
}
SYSTEMS = ("zero_shot", "multi_task", "individual", *METHODS)
ACCURACY_METRICS = ("wer", "cer")  # error rates: turned into accuracies for normalising
NP_METRICS = {"np": ("wer", "bleu"), "np_fine": ("cer", "chrf")}


@dataclass(frozen=True)
class Budget:
    """The size of one run of the table (docs/benchmarks.md, Budgets)."""

    model: str  # Whisper to start from ("smoke": the tiny random multilingual model)
    whole_model: bool  # train encoder + decoder (else decoder only: encoder-state cache)
    steps: int  # optimizer steps of each language's fine-tune; multi-task: len(langs) x steps
    batch_seconds: float  # audio per batch
    warmup: int  # warmup steps of a language's fine-tune (multi-task: len(langs) x warmup)
    lr: float
    train_per_group: int | None  # training rows per (language, task); None = all
    test_per_group: int | None  # synthetic test rows per (language, task); None = all
    noisy_per_group: int | None  # rows of the noisy copy per (language, task); 0 = not scored
    real_per_group: int | None  # real-speech rows per (language, task)
    seeds: tuple[int, ...]
    expansion: bool = True  # check LoRS language expansion against the six-language merge
    min_input_seconds: float = 0.0  # training input padding (the cache's policy); trained
    # rows decode with it too, the zero-shot row at the decoder's default 10 s
    max_new_tokens: int = 96


# `cpu` sizing, from seconds of one thread measured on the 2-core machine (Whisper base fp32):
# zero-shot decoding at 10 s 0.64 s per row (encoder 0.42 s per clip); a decoder-side row with
# the encoder memoised 0.18 s per row; a decoder-only step from cached encoder states with 60 s
# of audio 2.0 s; filling the cache 0.07 s per clip; a merge of six base checkpoints ~10-30 s
# (tiny.en's took 2-12 s). Estimate (thread-seconds): decoding the 1,200-row synthetic test and
# the 200 real rows: zero-shot 1,400 x 0.64 = 900, nine trained rows x 1,400 x 0.18 = 2,270,
# their encoder at the clips' own length ~70; training 6 x 20 + 120 = 240 steps x 2.0 = 480,
# cache fill 1,200 clips x 0.07 = 85; nine merges (seven rows, two for the expansion check)
# ~150; loading 14 checkpoints ~40: ~4,000 thread-seconds, i.e. ~35-40 min on 2 quiet cores
# (2 threads ~1.7-1.9x one; the experts bench's 150 decoder steps + cache fill took 431 s wall
# on a loaded machine, so training may be ~1.5x this estimate: up to ~45 min). The protocol's
# 100 rows per (language, task) of test and real speech leave room for the noisy copy at 50 per
# group (+10 rows x 600 x ~0.18 s, ~1,100 thread-seconds) only when the zero-shot rows come from
# the experts table's run (`--zero-shot-from bench/results/experts.json`: same sample, model and
# options, checked; saves ~1,300 thread-seconds); without it `--noisy-per-group 0` keeps the
# table near 35 min.
BUDGETS = {
    "smoke": Budget(
        model="smoke",
        whole_model=False,
        steps=2,
        batch_seconds=8.0,
        warmup=0,
        lr=0.01,  # large steps: two of them must change what the random model says
        train_per_group=3,
        test_per_group=2,
        noisy_per_group=2,
        real_per_group=2,
        seeds=(0,),
        max_new_tokens=8,
    ),
    "cpu": Budget(
        model="base",
        whole_model=False,
        steps=20,
        batch_seconds=60.0,
        warmup=2,
        lr=1e-4,
        train_per_group=100,
        test_per_group=100,
        noisy_per_group=50,
        real_per_group=100,
        seeds=(0,),
    ),
    "full": Budget(
        model="base",
        whole_model=True,
        steps=300,
        batch_seconds=240.0,
        warmup=30,
        lr=5e-5,
        train_per_group=None,
        test_per_group=None,
        noisy_per_group=None,
        real_per_group=None,
        seeds=(0, 1, 2),
    ),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budget", choices=tuple(BUDGETS), default="cpu")
    p.add_argument("--data", type=Path, default=Path("/work/data/corpus_large"))
    p.add_argument("--real", type=Path, action="append", default=[], help="real-speech manifest")
    p.add_argument("--langs", default=",".join(LANGS))
    p.add_argument("--model", help="override the budget's model")
    p.add_argument("--steps", type=int, help="override the budget's steps per language")
    p.add_argument("--test-per-group", type=int, help="override the budget's test/real sample")
    p.add_argument("--noisy-per-group", type=int, help="override the budget's noisy sample")
    p.add_argument("--seeds", help="override the budget's seeds (comma list)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_merging"))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "merging.json")
    p.add_argument("--hyps", type=Path, help="default: <out folder>/merging/")
    p.add_argument(
        "--zero-shot-from",
        type=Path,
        help="another table's results JSON (e.g. bench/results/experts.json) whose zero-shot "
        "rows to reuse where it decoded the same sample with the same model (checked)",
    )
    return p.parse_args(argv)


def budget_of(args) -> Budget:
    b = BUDGETS[args.budget]
    if args.model:
        b = replace(b, model=args.model)
    if args.steps:
        b = replace(b, steps=args.steps)
    if args.test_per_group:
        b = replace(b, test_per_group=args.test_per_group, real_per_group=args.test_per_group)
    if args.noisy_per_group is not None:
        b = replace(b, noisy_per_group=args.noisy_per_group)
    if args.seeds:
        b = replace(b, seeds=tuple(int(x) for x in args.seeds.split(",")))
    return b


# ----------------------------------------------------------------------------------- training
def train_overrides(b: Budget, langs, model: str, train: Path, out: Path, seed: int) -> list:
    """Dotted overrides of configs/train/full_tiny.yaml for one fine-tune on `langs`."""
    scale = len(langs)  # the multi-task run: the six fine-tunes' total steps
    steps = b.steps * scale
    return [
        f"output_dir={out}",
        f"model.name={model}",
        "model.prompt_style=multilingual",
        f"data.train=[{train}]",
        "data.dev=[]",
        f"data.languages=[{','.join(langs)}]",
        "data.tasks=[asr,st]",
        f"data.batch_seconds={b.batch_seconds}",
        f"data.min_input_seconds={b.min_input_seconds}",
        f"max_steps={steps}",
        f"optim.lr={b.lr}",
        f"optim.warmup_steps={min(b.warmup * scale, steps - 1)}",
        f"recipe.params.train_encoder={b.whole_model}",
        "recipe.params.train_decoder=true",
        f"checkpoint.save_every={steps}",
        "checkpoint.keep_best=0",
        "eval.every=0",
        "progress_bar=false",
        f"log_every={max(1, steps // 10)}",
        f"cache_dir={out.parent / 'cache'}",
        f"seed={seed}",
    ]


def train_all(b: Budget, langs, model: str, rows: list, work: Path, seed: int) -> dict:
    """The multi-task fine-tune and one per language: train_once records by run name
    (`multi_task`, `de`, ...)."""
    from babelora.data.manifest import write_manifest
    from babelora.train.config import load_train_config

    runs = {"multi_task": list(langs), **{lang: [lang] for lang in langs}}
    records = {}
    for name, run_langs in runs.items():
        train = write_manifest(
            [u for u in rows if u.lang in run_langs], work / f"train.{name}.jsonl"
        )
        over = train_overrides(b, run_langs, model, train, work / f"{name}.seed{seed}", seed)
        record = P.train_once(load_train_config(CONFIG, over))
        record["config"] = str(CONFIG.relative_to(ROOT))
        record["overrides"] = over
        records[name] = record
        info = record["run_info"]
        log(
            f"train {name} seed {seed}: {record['seconds']:.0f} s"
            f"{' (cached)' if record['cached'] else ''}, trains {info['trains']}, "
            f"encoder cache {info['encoder_cache']['used']}"
        )
    return records


# ------------------------------------------------------------------------------------ merging
def save_base(handle, folder: Path) -> Path:
    """theta_0 as a safetensors folder (+ tokenizer): the merges' base, streamed from disk."""
    import shutil

    if (folder / "model.safetensors").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    handle.model.save_pretrained(str(tmp), safe_serialization=True)
    handle.tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def merge_recipe(
    base: Path,
    inputs: dict[str, Path],
    method: str,
    params: dict[str, Any],
    output: Path,
    seed: int,
    frozen_encoder: bool,
    expand: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `babelora merge` recipe (dict) of full checkpoints. With a frozen encoder the encoder
    is copied from the base (its task vectors are zero; copying keeps it bit-identical, so the
    encoder memo attaches to the merged model)."""
    recipe: dict[str, Any] = {
        "base": str(base),
        "inputs": [{"path": str(p), "name": lang} for lang, p in inputs.items()],
        "method": method,
        "params": dict(params),
        "exclude": ["model.encoder.*"] if frozen_encoder else [],
        "output": {"path": str(output), "kind": "full", "overwrite": True},
        "seed": seed,
        "progress": False,
    }
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
    return {
        "seconds": report["seconds"],
        "process_seconds": wall,
        "max_rss_mb": report["max_rss_mb"],
        "recipe": str(path),
    }


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


def merge_all(
    b: Budget, langs, base: Path, finals: dict[str, Path], work: Path, seed: int, threads
):
    """The six fine-tunes merged by every method, and the expansion check: (merge reports by
    row, output folders by row, expansion record or None)."""
    frozen = not b.whole_model
    inputs = {lang: finals[lang] for lang in langs}
    reports, outputs = {}, {}
    for name, (method, params) in METHODS.items():
        out = work / "merges" / f"{name}.seed{seed}"
        reports[name] = run_merge(
            merge_recipe(base, inputs, method, params, out, seed, frozen), threads
        )
        outputs[name] = out
        log(f"merge {name} seed {seed}: {reports[name]['seconds']:.1f} s")
    expansion = None
    if b.expansion and len(langs) > 1:  # LoRS of all but the last + the last by expansion
        method, params = METHODS["lors"]
        first = work / "merges" / f"lors_first{len(langs) - 1}.seed{seed}"
        five = {lang: finals[lang] for lang in langs[:-1]}
        run_merge(merge_recipe(base, five, method, params, first, seed, frozen), threads)
        expanded = work / "merges" / f"lors_expanded.seed{seed}"
        expand = {"merged": str(first), "renormalize": True}
        report = run_merge(
            merge_recipe(base, {langs[-1]: finals[langs[-1]]}, method, params, expanded, seed,
                         frozen, expand),
            threads,
        )  # fmt: skip
        expansion = {
            "merged": list(langs[:-1]),
            "added": langs[-1],
            "seconds": report["seconds"],
            "max_abs_diff_vs_fresh": max_abs_diff(expanded, outputs["lors"]),
        }
        log(f"expansion check seed {seed}: max |diff| {expansion['max_abs_diff_vs_fresh']:.3g}")
    return reports, outputs, expansion


# ------------------------------------------------------------------------------------ scoring
def scores(utts: Sequence[Any], rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """{lang: {wer, cer, bleu, chrf}} of one row on one test set (`babelora.evaluate.score`)."""
    from babelora.evaluate import ScoreConfig, cer, score

    hyps = {r["id"]: r["hypothesis"] for r in rows}
    report = score(hyps, list(utts), ScoreConfig(langid=False))
    out: dict[str, dict[str, float]] = {}
    for row in report.rows:
        item = out.setdefault(row.lang, {})
        if row.task == "asr":
            items = [u for u in utts if u.lang == row.lang and u.task == "asr"]
            item["wer"] = row.score
            item["cer"] = cer([hyps[u.id] for u in items], [u.text for u in items], row.lang).score
        else:
            item["bleu"], item["chrf"] = row.score, row.chrf
    return out


def accuracy_like(metric: str, value: float) -> float:
    """Error rates become accuracies max(0, 100 - rate); BLEU/chrF stay as they are."""
    return max(0.0, 100.0 - value) if metric in ACCURACY_METRICS else value


def normalised(
    got: dict[str, dict[str, float]],
    reference: dict[str, dict[str, float]],
    langs: Sequence[str],
    metrics: Sequence[str],
) -> dict[str, Any]:
    """Mean over languages and metrics of accuracy_like(model) / accuracy_like(reference);
    pairs whose reference is 0 are skipped (counted)."""
    ratios, skipped = [], 0
    for lang in langs:
        for metric in metrics:
            if metric not in got.get(lang, {}) or metric not in reference.get(lang, {}):
                continue
            ref = accuracy_like(metric, reference[lang][metric])
            if ref <= 0:
                skipped += 1
                continue
            ratios.append(accuracy_like(metric, got[lang][metric]) / ref)
    return {"value": fmean(ratios) if ratios else None, "pairs": len(ratios), "skipped": skipped}


# ----------------------------------------------------------------------------------- decoding
def decode_system(handles, tests, memo, options, b) -> dict:
    """{test name: (rows in the test set's order, seconds, memoised)} of one row. `handles`:
    (languages or None for all, loader) pairs, each model loaded once and freed after its rows
    (the individual row: each language's fine-tune decodes its own language)."""
    found: dict[str, dict] = {ts.name: {} for ts in tests}
    seconds = dict.fromkeys(found, 0.0)
    memoised = dict.fromkeys(found, True)
    for model_langs, loader in handles:
        handle = None
        for ts in tests:
            utts = [u for u in ts.utts if model_langs is None or u.lang in model_langs]
            if not utts:
                continue
            handle = handle or loader()
            rows, sec, mem = P.decode(handle, P.requests_of(utts), memo, options,
                                      b.max_new_tokens)  # fmt: skip
            found[ts.name].update((r["id"], r) for r in rows)
            seconds[ts.name] += sec
            memoised[ts.name] = memoised[ts.name] and mem
        del handle
    return {
        ts.name: ([found[ts.name][u.id] for u in ts.utts], seconds[ts.name], memoised[ts.name])
        for ts in tests
    }


def run(args) -> dict:
    import torch

    from babelora.models.whisper import load_whisper

    b = budget_of(args)
    langs = [x for x in args.langs.split(",") if x]
    torch.set_num_threads(args.threads)
    work = args.work.resolve()
    hyps_dir = (args.hyps or args.out.parent / "merging").resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = str(P.tiny_multilingual(work / "tiny_multilingual")) if b.model == "smoke" else b.model
    t0 = time.perf_counter()

    rows = P.training_rows(args.data / "train.jsonl", langs, b.train_per_group)
    tests = P.test_sets(
        args.data, args.real, langs, b.test_per_group, b.real_per_group, b.noisy_per_group
    )
    for ts in tests:
        P.write_subset(ts, hyps_dir)
    log(f"test sets: {', '.join(f'{t.name} {len(t.utts)}' for t in tests)}")

    pristine = load_whisper(model, prompt_style="multilingual")
    base = save_base(pristine, work / "base") if b.model != "smoke" else Path(model)
    records, merges, expansion, folders = {}, {}, {}, {}
    for seed in b.seeds:
        recs = train_all(b, langs, model, rows, work, seed)
        records.update({(name, seed): r for name, r in recs.items()})
        finals = {name: Path(r["final"]) for name, r in recs.items()}
        reports, outputs, expansion[str(seed)] = merge_all(
            b, langs, base, finals, work, seed, args.threads
        )
        merges.update({f"{name}/{seed}": r for name, r in reports.items()})
        folders[seed] = {**finals, **outputs}

    # decoding: zero-shot first (its 10 s inputs), then every trained row (their own padding,
    # one memo of the base encoder's states shared by all of them)
    memo = P.EncoderMemo(pristine.model.get_encoder())
    zero_options = P.runner_options(10.0)
    trained_options = P.runner_options(b.min_input_seconds)
    hyps: dict = {}  # (system, seed, test) -> rows
    decode_info: dict = {}

    def keep(system: str, seed: int, decoded: dict) -> None:
        for test, (out, seconds, memoised) in decoded.items():
            hyps[(system, seed, test)] = out
            P.save_rows(hyps_dir, system, test, out, seed)
            decode_info[f"{system}/{seed}/{test}"] = {"seconds": seconds, "encoder_memo": memoised}
            log(f"decode {system} seed {seed} on {test}: {seconds:.0f} s")

    reused = {}
    for ts in tests:
        found, why = P.reused_zero_shot(
            args.zero_shot_from, ts, hyps_dir, P.model_label(b.model, model), b.max_new_tokens
        )
        log(f"zero_shot on {ts.name}: {why}")
        if found is not None:
            reused[ts.name] = found
            hyps[("zero_shot", 0, ts.name)] = found
            decode_info[f"zero_shot/0/{ts.name}"] = {"seconds": 0.0, "reused": why}
    zero = [(None, lambda: P.fresh(pristine))]
    todo = [ts for ts in tests if ts.name not in reused]
    if todo:
        keep("zero_shot", 0, decode_system(zero, todo, memo, zero_options, b))
    memo.clear()  # other inputs (padding) from here on
    for seed in b.seeds:
        for system in SYSTEMS[1:]:
            if system == "individual":
                handles = [([lang], _loader(folders[seed][lang])) for lang in langs]
            else:
                handles = [(None, _loader(folders[seed][system]))]
            keep(system, seed, decode_system(handles, tests, memo, trained_options, b))
    decode_info["encoder_memo"] = {"hits": memo.hits, "misses": memo.misses}

    # differences vs zero-shot and vs multi-task; scores and normalised performance
    results: dict = {}
    for ts in tests:
        zero_rows = hyps[("zero_shot", 0, ts.name)]
        for seed in b.seeds:
            individual = scores(ts.utts, hyps[("individual", seed, ts.name)])
            multi = hyps[("multi_task", seed, ts.name)]
            for system in SYSTEMS:
                if system == "zero_shot" and seed != b.seeds[0]:
                    continue
                mine = hyps[(system, 0 if system == "zero_shot" else seed, ts.name)]
                got = scores(ts.utts, mine)
                entry = {"vs_zero_shot": P.differences(ts.utts, zero_rows, mine), "scores": got}
                if system not in ("zero_shot", "multi_task"):
                    entry["vs_multi_task"] = P.differences(ts.utts, multi, mine)
                entry.update({k: normalised(got, individual, langs, m)
                              for k, m in NP_METRICS.items()})  # fmt: skip
                key = str(0 if system == "zero_shot" else seed)
                results.setdefault(system, {}).setdefault(key, {})[ts.name] = entry
    first = b.seeds[0]
    lang_record = records[(langs[0], first)]
    settings = {
        "zero_shot": {**P.setting(None), "from": "Whisper base as released"},
        "multi_task": {**P.setting(records[("multi_task", first)]),
                       "from": f"one fine-tune on {len(langs)} languages, "
                               f"{b.steps * len(langs)} steps"},
        "individual": {**P.setting(lang_record),
                       "from": f"one fine-tune per language, {b.steps} steps each"},
    }  # fmt: skip
    for name, (method, params) in METHODS.items():
        settings[name] = {
            **P.setting(lang_record),
            "from": f"merge ({method} {params or ''}) of the {len(langs)} individual fine-tunes",
            "method": method,
            "params": params,
        }
    return {
        "benchmark": "merging",
        "command": "python bench/merging.py " + " ".join(args.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": P.machine(args.threads),
        "budget": {
            "name": args.budget,
            **asdict(b),
            "model": P.model_label(b.model, model),
        },
        "langs": langs,
        "test_sets": {t.name: {"source": str(t.source), "rows": len(t.utts)} for t in tests},
        "train_rows": len(rows),
        "systems": list(SYSTEMS),
        "settings": settings,
        "methods": {name: {"method": m, "params": p} for name, (m, p) in METHODS.items()},
        "train": {f"{name}/{seed}": P.slim(r) for (name, seed), r in records.items()},
        "merges": merges,
        "expansion": expansion,
        "decode": decode_info,
        "np_definition": NP_DEFINITION,
        "results": results,
        "hypotheses": str(P.relative(hyps_dir, ROOT)),
        "wall_s": time.perf_counter() - t0,
    }


def _loader(folder: Path):
    from babelora.models.whisper import load_whisper

    return lambda: load_whisper(folder, prompt_style="multilingual")


NP_DEFINITION = (
    "NP = mean over languages and tasks of score(row) / score(the individual fine-tune of that "
    "language), WER/CER as accuracies max(0, 100 - rate), BLEU/chrF as they are (TIES-Merging's "
    "normalised accuracy); np uses WER + BLEU, np_fine CER + chrF; the individual row is 1.0 "
    "by definition; pairs whose reference is 0 are skipped (counted)."
)


# ------------------------------------------------------------------------------------- tables
def _relative(d: dict | None) -> str:
    """Relative change b / a - 1 in %, its interval the difference's divided by a."""
    if d is None or not d["a"]:
        return "-"
    a, x = d["a"], d["delta"]
    return (
        f"{100 * x['estimate'] / a:+.1f} % [{100 * x['low'] / a:+.1f}, {100 * x['high'] / a:+.1f}]"
    )


def markdown(report: dict) -> str:
    """One table per test set: macro WER and BLEU of every row, the difference vs zero-shot and
    vs multi-task with its paired 95 % interval (* = excludes zero), the normalised performance;
    then the per-language scores, LoRS vs multi-task in relative terms (the paper's claim), and
    the merges' cost. Seed-0 numbers."""
    parts = []
    langs = report["langs"]
    b = report["budget"]
    seed = str(b["seeds"][0])
    parts.append(
        f"Merging ({', '.join(langs)}), budget `{b['name']}` ({b['model']}, {b['steps']} steps "
        f"per language, multi-task {b['steps'] * len(langs)}, batch {b['batch_seconds']} s, "
        f"{'whole model' if b['whole_model'] else 'decoder only'}); {report['date']}; "
        f"{report['machine']['processor']} x{report['machine']['cpu_count']}, "
        f"{report['machine']['threads']} threads; wall {report['wall_s']:.0f} s.\n"
        f"Command: `{report['command']}`"
    )
    for test, meta in report["test_sets"].items():
        head = ("| system | trains | WER | Δ vs zero-shot | Δ vs multi-task | BLEU "
                "| Δ vs zero-shot | Δ vs multi-task | NP |")  # fmt: skip
        lines = [f"\n### {test} ({meta['rows']} rows: {meta['source']})\n", head, "|---" * 9 + "|"]
        for system in report["systems"]:
            entry = report["results"][system].get(seed, report["results"][system]["0"])[test]
            z_asr, z_st = (P.headline(entry["vs_zero_shot"], t) for t in ("asr", "st"))
            m_asr, m_st = (
                (P.headline(entry["vs_multi_task"], t) for t in ("asr", "st"))
                if "vs_multi_task" in entry
                else (None, None)
            )
            if system == "multi_task":  # its own difference to itself: the scores only
                m_asr = m_st = None
            zero = system == "zero_shot"
            np_value = entry["np"]["value"]
            lines.append(
                f"| {system} | {report['settings'][system]['trains']} | {P.cell(z_asr)} "
                f"| {'-' if zero else P.delta(z_asr)} | {P.delta(m_asr)} | {P.cell(z_st)} "
                f"| {'-' if zero else P.delta(z_st)} | {P.delta(m_st)} "
                f"| {'-' if np_value is None else f'{np_value:.3f}'} |"
            )
        parts.append("\n".join(lines))
        per_system = {
            system: report["results"][system].get(seed, report["results"][system]["0"])[test][
                "vs_zero_shot"
            ]
            for system in report["systems"]
        }
        parts.append("\n" + P.language_table(per_system, langs))
        lors = report["results"]["lors"][seed][test]["vs_multi_task"]
        parts.append(
            f"\nLoRS vs multi-task on {test}, relative: WER "
            f"{_relative(P.headline(lors, 'asr'))}, BLEU {_relative(P.headline(lors, 'st'))} "
            "(paper: about -10 % WER and +4 % BLEU)."
        )
    merge_lines = ["\n| merge | method | params | seconds | peak RSS MB |", "|---" * 5 + "|"]
    for name, meta in report["methods"].items():
        m = report["merges"][f"{name}/{seed}"]
        merge_lines.append(
            f"| {name} | {meta['method']} | {meta['params'] or '-'} | {m['seconds']:.1f} "
            f"| {m['max_rss_mb']:.0f} |"
        )
    parts.append("\n".join(merge_lines))
    exp = report["expansion"].get(seed)
    if exp:
        parts.append(
            f"\nLanguage expansion: LoRS of {', '.join(exp['merged'])} + {exp['added']} by "
            f"`expand` (renormalised) vs the six-language LoRS merge: max |diff| "
            f"{exp['max_abs_diff_vs_fresh']:.3g}."
        )
    parts.append(
        "\nΔ = system - baseline with its paired bootstrap 95 % interval (1,000 resamples, "
        "seed 0; macro rows resample within each language); * = the interval excludes zero; "
        "relative = Δ / multi-task's score. "
        f"Hypotheses: {report['hypotheses']}/<system>.<test set>.jsonl.gz."
    )
    return "\n".join(parts) + "\n"


def main(argv=None) -> None:
    P.main(argv, parse_args, run, markdown)


if __name__ == "__main__":
    main()
