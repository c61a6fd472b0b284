"""Reliability benchmark: kills survived, bad inputs tried, items lost, memory growth.

    python bench/reliability.py [--train-minutes 5] [--kills 3] [--seed 0] [--tiny-random]

1. Kills: the kill harness of tests/reliability (rel_scenarios.py) SIGKILLs `babelora corpus
   build --size tiny` `--kills` times and `babelora merge` `--kills` times while writing a fresh
   output and `--kills` times while replacing one, at seeded random points (clip renders,
   manifest writes, mid-write of model.safetensors, random moments); after each kill the files
   on disk are checked, and the re-run must equal an uninterrupted run byte for byte. (Training
   kills are proven by tests/train/test_kill_resume.py, not re-run here.)
2. Bad inputs: the bad-input matrix (tests/reliability/rel_matrix.py: 16 bad items and 6
   unusual but valid ones) through one `babelora evaluate` batch, counting good items that came
   back without a hypothesis (items lost); then the reliability test files (bad inputs, safe
   loading with a live pickle payload, recipe/config fuzzing) run under pytest for the counts.
3. Memory: the `lora` recipe (configs/train/lora_tiny.yaml) on the offline Whisper tiny.en
   (--tiny-random: the tiny random model) over a tiny espeak corpus (de, fr, en; ~5 steps per
   epoch), as many steps as fit in --train-minutes, checkpoints and dev loss every 100 steps;
   RSS (psutil) every 10 steps. Reported: RSS after the first epoch, at the end, and the growth
   per 100 steps (least-squares slope) after the first epoch and after the first checkpoint.

Writes bench/results/reliability.json and prints the Markdown table. One thread (shared CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import read_jsonl, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reliability"))
WORK = ROOT / "bench" / "work" / "reliability"


def log(msg: str) -> None:
    common.log(msg, file=sys.stdout)  # progress goes with the table, on stdout


# ----------------------------------------------------------------------------- 1. kills
def kills(kills_per_phase: int, seed: int) -> dict:
    from rel_scenarios import corpus_scenario, merge_scenario

    out = {}
    for name, scenario in (("corpus build", corpus_scenario), ("merge", merge_scenario)):
        work = WORK / name.replace(" ", "_")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        start = time.perf_counter()
        summary = scenario(work, kills=kills_per_phase, seed=seed)
        summary["seconds"] = round(time.perf_counter() - start, 1)
        log(f"{name}: survived {summary['kills']} kills ({summary['seconds']} s)")
        out[name] = summary
    return out


# ----------------------------------------------------------------------------- 2. bad inputs
def bad_inputs() -> dict:
    from rel_matrix import CASES, save_tiny_model, write_matrix

    from babelora.cli.main import main

    work = WORK / "matrix"
    shutil.rmtree(work, ignore_errors=True)
    manifest, _ = write_matrix(work / "data")
    model = save_tiny_model(work / "model")
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(
            [
                "evaluate",
                "--manifest",
                str(manifest),
                "--model",
                str(model),
                "--out",
                str(work / "eval"),
                "--data-root",
                str(work / "data"),
                "--no-progress",
                "--max-new-tokens",
                "4",
                "--min-input-seconds",
                "0",
            ]
        )
    rows = read_jsonl(work / "eval" / "hypotheses.jsonl")
    results = {r["id"]: r for r in rows}
    good = [c.name for c in CASES if c.kind == "works"]
    bad = [c for c in CASES if c.kind != "works"]
    lost = [n for n in good if n not in results or "error" in results[n]]
    reported = [
        line for line in err.getvalue().splitlines() if line.startswith(("error:", "skipped:"))
    ]
    log(f"matrix: {len(bad)} bad items reported in {len(reported)} lines, {len(lost)} good lost")

    xml = WORK / "junit.xml"
    files = ["test_rel_bad_inputs.py", "test_rel_safe_loading.py", "test_rel_fuzz_recipes.py"]
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
        + [str(ROOT / "tests" / "reliability" / f) for f in files],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    tests: dict[str, dict[str, int]] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = case.get("classname", "").split(".")[-1]
        entry = tests.setdefault(name, {"passed": 0, "failed": 0, "skipped": 0})
        outcome = "passed"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        entry[outcome] += 1
    log(f"pytest {', '.join(files)}: {tests} ({time.perf_counter() - start:.0f} s)")
    if proc.returncode != 0:
        log(proc.stdout[-3000:])
    return {
        "matrix_exit_code": code,
        "matrix_bad_items": len(bad),
        "matrix_valid_items": len(good),
        "matrix_error_lines": len(reported),
        "matrix_items_lost": len(lost),
        "tests": tests,
        "pytest_exit_code": proc.returncode,
    }


# ----------------------------------------------------------------------------- 3. memory
def memory(minutes: float, tiny_random: bool) -> dict:
    import psutil
    import torch

    from babelora.methods.registry import train
    from babelora.train.config import load_train_config
    from babelora.train.loop import Trainer

    torch.set_num_threads(1)
    corpus = WORK / "corpus"
    if not (corpus / "train.jsonl").is_file():
        cmd = [sys.executable, "-m", "babelora.cli.main", "corpus", "build", "--size", "tiny"]
        cmd += ["--langs", "de,fr", "--jobs", "1", "--out", str(corpus)]
        subprocess.run(cmd, check=True, capture_output=True)
    run = WORK / "train"
    shutil.rmtree(run, ignore_errors=True)
    overrides = [
        f"output_dir={run}",
        f"data.train=[{corpus / 'train.jsonl'}]",
        f"data.dev=[{corpus / 'dev.jsonl'}]",
        "data.languages=[de,fr,en]",
        "data.batch_seconds=12",
        "data.dev_max_items=8",
        "max_steps=100000",
        "eval.every=100",
        "checkpoint.save_every=100",
        "checkpoint.keep_best=0",
        "progress_bar=false",
        "mixed_precision='no'",
        "log_every=50",
    ]
    if tiny_random:
        overrides.append("model.tiny_random=true")
    cfg = load_train_config(ROOT / "configs" / "train" / "lora_tiny.yaml", overrides)
    proc = psutil.Process()
    samples: list[dict] = []
    start = time.perf_counter()
    real = Trainer.train_step

    class Budget(Exception):
        pass

    def measured(self, micro):
        out = real(self, micro)
        step = self.state.step + 1  # the loop counts the step after train_step returns
        if step % 10 == 0:
            samples.append(
                {
                    "step": step,
                    "epoch": self.state.epoch,
                    "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            if step % 100 == 0:
                s = samples[-1]
                log(f"step {step}, epoch {s['epoch']}, RSS {s['rss_mb']} MB, {s['seconds']} s")
        if time.perf_counter() - start > 60 * minutes and step % 10 == 0:
            raise Budget
        return out

    Trainer.train_step = measured
    try:
        train(cfg)
    except Budget:
        pass
    finally:
        Trainer.train_step = real
    after_epoch = next(s for s in samples if s["epoch"] >= 1)
    tail = [s for s in samples if s["step"] >= after_epoch["step"]]
    settled = [s for s in samples if s["step"] > 100]  # after the first checkpoint and eval
    return {
        "model": "tiny random Whisper" if tiny_random else "Whisper tiny.en (offline CTranslate2)",
        "recipe": "lora (configs/train/lora_tiny.yaml: rank 16, all attention + MLP, enc + dec)",
        "corpus": "babelora corpus build --size tiny --langs de,fr (train.jsonl)",
        "steps": samples[-1]["step"],
        "epochs": samples[-1]["epoch"],
        "seconds": samples[-1]["seconds"],
        "rss_after_first_epoch_mb": after_epoch["rss_mb"],
        "rss_first_epoch_step": after_epoch["step"],
        "rss_end_mb": samples[-1]["rss_mb"],
        "rss_max_after_first_epoch_mb": max(s["rss_mb"] for s in tail),
        "rss_min_after_first_epoch_mb": min(s["rss_mb"] for s in tail),
        "growth_mb_per_100_steps": round(100 * slope(tail), 2),
        "growth_after_first_checkpoint_mb_per_100_steps": round(100 * slope(settled), 2),
        "samples": samples,
    }


def slope(samples: list[dict]) -> float:
    """Least-squares MB per step of RSS over the samples (0 for fewer than two)."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mx = sum(s["step"] for s in samples) / n
    my = sum(s["rss_mb"] for s in samples) / n
    var = sum((s["step"] - mx) ** 2 for s in samples)
    return sum((s["step"] - mx) * (s["rss_mb"] - my) for s in samples) / var


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train-minutes", type=float, default=5.0, help="memory run wall budget")
    p.add_argument("--kills", type=int, default=3, help="kills per scenario phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny-random", action="store_true", help="memory run on the tiny random model")
    p.add_argument("--skip", default="", help="comma list of parts to skip: kills,inputs,memory")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reliability.json")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    WORK.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "threads": 1,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if "kills" not in skip:
        report["kills"] = kills(args.kills, args.seed)
    if "inputs" not in skip:
        report["bad_inputs"] = bad_inputs()
    if "memory" not in skip:
        report["memory"] = memory(args.train_minutes, args.tiny_random)
    report["wall_seconds"] = round(time.perf_counter() - start, 1)

    rows = []
    if "kills" in report:
        k = report["kills"]
        total = sum(v["kills"] for v in k.values())
        detail = ", ".join(f"{name} {v['kills']}" for name, v in k.items())
        lost = sum(v["items_lost"] for v in k.values())
        rows.append(
            ("kills survived (SIGKILL, re-run, byte-identical end state)", f"{total} ({detail})")
        )
        rows.append(("items lost after kills", str(lost)))
    if "bad_inputs" in report:
        b = report["bad_inputs"]
        t = b["tests"]
        passed = sum(v["passed"] for v in t.values())
        failed = sum(v["failed"] for v in t.values())
        rows.append(
            (
                "bad inputs tried (evaluate batch matrix)",
                f"{b['matrix_bad_items']} bad + {b['matrix_valid_items']} unusual-valid, "
                f"{b['matrix_error_lines']} one-line errors, exit {b['matrix_exit_code']}",
            )
        )
        rows.append(
            ("items lost (valid matrix items without a hypothesis)", str(b["matrix_items_lost"]))
        )
        rows.append(
            (
                "reliability tests (bad inputs, safe loading, fuzz)",
                f"{passed} passed, {failed} failed ("
                + ", ".join(f"{k}: {v['passed']}" for k, v in t.items())
                + ")",
            )
        )
    if "memory" in report:
        m = report["memory"]
        rows.append(
            (
                f"memory ({m['model']}, {m['steps']} steps, {m['epochs']} epochs, "
                f"{m['seconds'] / 60:.1f} min)",
                f"RSS {m['rss_after_first_epoch_mb']:.0f} MB after epoch 1 (step "
                f"{m['rss_first_epoch_step']}), {m['rss_end_mb']:.0f} MB at the end; growth "
                f"{m['growth_mb_per_100_steps']:+.2f} MB / 100 steps after epoch 1, "
                f"{m['growth_after_first_checkpoint_mb_per_100_steps']:+.2f} after step 100",
            )
        )
    report["table"] = rows
    write_json(args.out, report)
    print("\n| reliability | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\nwall time {report['wall_seconds'] / 60:.1f} min; {args.out}")


if __name__ == "__main__":
    main()
