"""Kill scenarios for `babelora corpus build` and `babelora merge` (used by test_rel_kill.py and
bench/reliability.py): build a clean reference, kill the real command at seeded random points,
check the files on disk after every kill, re-run, and compare with the reference byte for byte.
Each returns a summary dict; a broken promise raises AssertionError. `corpus_parent_kill_scenario`
kills the build's own process only, leaving its worker processes to the kernel."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from rel_harness import ENV, Attempt, after, after_time, babelora_cmd, kill_and_rerun

TMP_MARKS = (".tmp-", ".tmp")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def timed(cmd: list[str], timeout: float = 300.0) -> float:
    """Run `cmd` uninterrupted (it must succeed); its wall time in seconds."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- corpus build
def _wavs(out: Path) -> list[Path]:
    """Finished clips (temporary files excluded)."""
    audio = out / "audio"
    if not audio.is_dir():
        return []
    return [
        Path(d) / f
        for d, _, files in os.walk(audio)
        for f in files
        if f.endswith(".wav") and ".tmp-" not in f
    ]


def _decodes(path: Path) -> None:
    import soundfile as sf

    info = sf.info(str(path))
    data, _ = sf.read(str(path), dtype="int16")
    assert info.frames > 0 and len(data) == info.frames, f"{path}: truncated clip"
    extra = info.extra_info
    assert "should be" not in extra, f"{path}: header and data disagree: {extra}"


def corpus_scenario(work: Path, kills: int = 4, seed: int = 0, langs: str = "de") -> dict[str, Any]:
    """`babelora corpus build --size tiny` killed `kills` times (mid-render after a random number
    of clips, at a random moment, while the manifests are written), then finished by a re-run.

    After every kill: each clip on disk decodes completely and has the bytes of the clean
    build's clip of the same name; each manifest on disk is byte-identical to the clean one.
    At the end: the same manifests, clips (no extra, none missing), card.json and config.yaml
    as an uninterrupted build, no duplicate lines, no temporary files."""
    args = ["corpus", "build", "--size", "tiny", "--langs", langs, "--jobs", "1"]
    clean, killed = work / "clean", work / "killed"
    seconds = timed(babelora_cmd(*args, "--out", clean))
    clips = {p.relative_to(clean).as_posix(): sha256(p) for p in _wavs(clean)}
    manifests = {p.name: p.read_bytes() for p in clean.glob("*.jsonl")}
    assert clips and manifests

    def n_more_clips(rng: random.Random):
        have = len(_wavs(killed))
        if have >= len(clips):  # all rendered: kill while the manifests are (re)written
            return manifest_written()
        n = have + rng.randint(1, max(1, len(clips) - have - 1))  # not the last: mid-build
        return lambda: f"after clip {n} of {len(clips)}" if len(_wavs(killed)) >= n else None

    def manifest_written():
        start = time.time()

        def condition() -> str | None:
            for p in killed.glob("*.jsonl*"):
                try:
                    if p.stat().st_mtime >= start:
                        return f"while manifests are written ({p.name} seen)"
                except FileNotFoundError:  # renamed between glob and stat
                    continue
            return None

        return condition

    clip_kill = ("clips", after(n_more_clips, delay=(0.0, 0.05)))
    triggers = [  # in this order (clips are rendered once, then reused): mid-render kills first
        clip_kill,
        ("random", after_time(0.2, seconds)),
        clip_kill,
        ("manifests", after(lambda rng: manifest_written())),
    ]

    def check(attempt: Attempt) -> None:
        for wav in _wavs(killed):
            rel = wav.relative_to(killed).as_posix()
            _decodes(wav)
            assert clips.get(rel) == sha256(wav), f"{rel}: differs from the clean build"
        for p in killed.glob("*.jsonl"):
            assert p.read_bytes() == manifests[p.name], f"{p.name}: partial or different"

    cmd = babelora_cmd(*args, "--out", killed)
    run = kill_and_rerun(cmd, triggers, kills, seed, check, shuffle=False)
    assert run.final.returncode == 0, run.final.stderr[-3000:]
    assert run.kills == kills, run.describe()
    got = {p.relative_to(killed).as_posix(): sha256(p) for p in _wavs(killed)}
    assert got == clips, "clips differ from the uninterrupted build"
    for wav in _wavs(killed):
        _decodes(wav)
    assert {p.name: p.read_bytes() for p in killed.glob("*.jsonl")} == manifests
    lines = 0
    for name, data in manifests.items():
        rows = data.decode("utf-8").splitlines()
        ids = [json.loads(r)["id"] for r in rows]
        assert len(set(rows)) == len(rows) and len(set(ids)) == len(ids), name
        lines += len(rows)
    for name in ("card.json", "config.yaml"):
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name
    leftovers = [p.name for p in killed.rglob("*") if any(m in p.name for m in TMP_MARKS)]
    assert not leftovers, leftovers
    return {
        "command": "babelora " + " ".join(args) + " --out DIR",
        "kills": run.kills,
        "attempts": [a.__dict__ for a in run.attempts],
        "clips": len(clips),
        "manifest_lines": lines,
        "clean_seconds": round(seconds, 2),
        "items_lost": 0,
    }


COUNTS = re.compile(r"(\d+) clips rendered, (\d+) reused, (\d+) re-rendered")


def corpus_parent_kill_scenario(
    work: Path, kills: int = 2, seed: int = 0, langs: str = "de", jobs: int = 2
) -> dict[str, Any]:
    """`babelora corpus build --size tiny --jobs 2` with only its own process SIGKILLed (as
    `kill -9 PID`) mid-render, `kills` times, then re-run.

    After every kill: it had worker processes, and none of its descendants (workers, their
    espeak-ng) is alive a few seconds later; each clip on disk decodes completely and has the
    clean build's bytes. The re-run is not refused by the dead build's lock, and its counts are
    right: the clips on disk before it reused, the others rendered, none re-rendered. The end
    state is an uninterrupted build's."""
    args = ["corpus", "build", "--size", "tiny", "--langs", langs, "--jobs", str(jobs)]
    clean, killed = work / "clean", work / "killed"
    seconds = timed(babelora_cmd(*args, "--out", clean))
    clips = {p.relative_to(clean).as_posix(): sha256(p) for p in _wavs(clean)}
    manifests = {p.name: p.read_bytes() for p in clean.glob("*.jsonl")}
    assert len(clips) >= 4 and manifests
    on_disk: list[int] = []

    def n_more_clips(rng: random.Random):
        have = len(_wavs(killed))
        n = have + rng.randint(1, max(1, len(clips) - have - 2))  # workers still busy
        return lambda: f"after clip {n} of {len(clips)}" if len(_wavs(killed)) >= n else None

    def check(attempt: Attempt) -> None:
        on_disk.append(len(_wavs(killed)))
        if not attempt.killed:
            return
        workers = [d for d in attempt.descendants if "python" in d]
        assert len(workers) >= 1, f"{attempt.landed}: no worker process to check"
        assert not attempt.survivors, (
            f"{attempt.landed}: alive after the build was killed: {attempt.survivors}"
        )
        for wav in _wavs(killed):
            _decodes(wav)
            rel = wav.relative_to(killed).as_posix()
            assert clips.get(rel) == sha256(wav), f"{rel}: differs from the clean build"

    cmd = babelora_cmd(*args, "--out", killed)
    run = kill_and_rerun(
        cmd, [("clips", after(n_more_clips))], kills, seed, check, shuffle=False, kill="parent"
    )
    assert run.final.returncode == 0, run.final.stderr[-3000:]
    assert run.kills == kills, run.describe()
    found = COUNTS.search(run.final.stdout)
    assert found, run.final.stdout
    rendered, reused, rerendered = map(int, found.groups())
    assert (rendered, reused, rerendered) == (len(clips) - on_disk[-1], on_disk[-1], 0), (
        found.group(0),
        on_disk,
    )
    got = {p.relative_to(killed).as_posix(): sha256(p) for p in _wavs(killed)}
    assert got == clips, "clips differ from the uninterrupted build"
    assert {p.name: p.read_bytes() for p in killed.glob("*.jsonl")} == manifests
    leftovers = [p.name for p in killed.rglob("*") if any(m in p.name for m in TMP_MARKS)]
    assert not leftovers, leftovers
    return {
        "command": "babelora " + " ".join(args) + " --out DIR (kill -9 of the parent only)",
        "kills": run.kills,
        "attempts": [a.__dict__ for a in run.attempts],
        "clips": len(clips),
        "clean_seconds": round(seconds, 2),
    }


# ----------------------------------------------------------------------------- merge
MERGE_MODEL = dict(
    d_model=256,
    encoder_layers=4,
    decoder_layers=4,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=1024,
    decoder_ffn_dim=1024,
    vocab_size=100,
    num_mel_bins=80,
    max_source_positions=32,
    max_target_positions=16,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=3,
    suppress_tokens=[],
    begin_suppress_tokens=[],
)
"""About 7.7 M parameters (31 MB): TIES takes ~1 s, long enough to be killed mid-write."""


def write_merge_models(root: Path) -> dict[str, Path]:
    """base/ and two fine-tunes (base + seeded noise) as safetensors folders."""
    import warnings

    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    base = WhisperForConditionalGeneration(WhisperConfig(**MERGE_MODEL)).eval()
    paths = {}
    for i, name in enumerate(("base", "de", "fr")):
        model = WhisperForConditionalGeneration(base.config).eval()
        model.load_state_dict(base.state_dict())
        if i:
            gen = torch.Generator().manual_seed(i)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=gen))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save_pretrained(root / name)
        paths[name] = root / name
    return paths


def _folder(path: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(path.iterdir())} if path.is_dir() else {}


def _stable(files: dict[str, str]) -> dict[str, str]:
    """The files whose bytes do not depend on the run (the report holds times and paths)."""
    return {k: v for k, v in files.items() if k not in ("merge_report.json", "merge_recipe.yaml")}


def _siblings(out: Path) -> list[str]:
    found = glob.glob(glob.escape(str(out.parent / f".{out.name}.")) + "*")
    return sorted(Path(p).name for p in found)


def merge_scenario(work: Path, kills: int = 3, seed: int = 0) -> dict[str, Any]:
    """`babelora merge` killed `kills` times writing a fresh output, then `kills` times replacing
    an existing one (output.overwrite). After every kill the output folder is absent (fresh), or
    exactly the previous complete output, or exactly the new complete output; the re-run gives
    the bytes of an uninterrupted merge; no partial folders are left behind."""
    import yaml

    models = write_merge_models(work / "models")
    recipe = {
        "base": str(models["base"]),
        "inputs": [{"path": str(models["de"]), "name": "de"}, {"path": str(models["fr"])}],
        "method": "ties",
        "params": {"density": 0.3},
        "output": {"path": str(work / "ref"), "overwrite": True},
        "progress": False,
    }
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    seconds = timed(babelora_cmd("merge", path))
    ref = _stable(_folder(work / "ref"))
    size = (work / "ref" / "model.safetensors").stat().st_size

    def scenario(out: Path, previous: dict[str, str], scenario_seed: int) -> Any:
        def mid_write(rng: random.Random):
            fraction = rng.uniform(0.02, 0.98)
            pattern = glob.escape(str(out.parent / f".{out.name}.tmp-")) + "*/model.safetensors"

            def condition() -> str | None:
                for f in glob.glob(pattern):
                    try:
                        if os.path.getsize(f) >= fraction * size:
                            return f"model.safetensors {100 * fraction:.0f} % written"
                    except FileNotFoundError:
                        continue
                return None

            return condition

        def new_tmp(rng: random.Random):
            stale = set(_siblings(out))  # left by an earlier kill, removed by the next run

            def condition() -> str | None:
                fresh = [n for n in _siblings(out) if ".tmp-" in n and n not in stale]
                return "temporary output folder created" if fresh else None

            return condition

        triggers = [
            ("mid-write", after(mid_write)),
            ("after start of write", after(new_tmp, delay=(0.0, 0.3))),
            ("random", after_time(0.5, seconds)),
        ]

        def check(attempt: Attempt) -> None:
            now = _folder(out)
            if not now:
                # killed between the two renames of atomic_folder: the previous output waits
                # in .NAME.old-PID, and the next run moves it back (io.clean_stale)
                aside = [_folder(out.parent / n) for n in _siblings(out) if ".old-" in n]
                kept = any(f == previous or _stable(f) == ref for f in aside)
                assert not previous or kept, f"{attempt.landed}: the previous output was lost"
                return
            if now == previous:
                return
            assert _stable(now) == ref, f"{attempt.landed}: a partial or different output"
            json.loads((out / "merge_report.json").read_text("utf-8"))

        cmd = babelora_cmd("merge", path, f"output.path={out}")
        run = kill_and_rerun(cmd, triggers, kills, scenario_seed, check)
        assert run.final.returncode == 0, run.final.stderr[-3000:]
        assert run.kills == kills, run.describe()
        assert _stable(_folder(out)) == ref, "re-run differs from an uninterrupted merge"
        assert not _siblings(out), f"left behind: {_siblings(out)}"
        return run

    fresh = scenario(work / "fresh", {}, seed)
    replaced = work / "replaced"
    other = {**recipe, "inputs": [{**recipe["inputs"][0], "weight": 0.5}, recipe["inputs"][1]]}
    (work / "previous.yaml").write_text(yaml.safe_dump(other), encoding="utf-8")
    timed(babelora_cmd("merge", work / "previous.yaml", f"output.path={replaced}"))
    previous = _folder(replaced)
    assert _stable(previous) != ref
    replacing = scenario(replaced, previous, seed + 1)
    return {
        "command": "babelora merge RECIPE.yaml output.path=DIR (ties, 7.7 M parameters)",
        "kills": fresh.kills + replacing.kills,
        "attempts": [a.__dict__ for a in fresh.attempts + replacing.attempts],
        "clean_seconds": round(seconds, 2),
        "output_bytes": size,
        "items_lost": 0,
    }
