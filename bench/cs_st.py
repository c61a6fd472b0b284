"""Code-switched ST with the speech-LLM (arXiv 2511.10670): BLEU X->en and routing purity.

Variants, each trained with `babelora.methods.speech_llm.stages` on the offline corpus
(ASR -> ST -> CS-ST,
configs/speech_llm/stages.yaml) and scored on the monolingual ST X->en test set (`test.jsonl`)
and the code-switched test set (`test_cs.jsonl`):

    moe             MoE projector, all three losses, three stages with replay
    linear          linear (MLP) projector baseline, three stages
    moe_no_lang     MoE without the language-specific loss
    moe_no_balance  MoE without the intra-group balance loss
    moe_no_trans    MoE without the transition loss
    moe_single      MoE trained on the code-switched stage only (single-stage)

Routing purity = share of labelled speech frames whose chosen expert group is the frame's
language (utterance language, or the `segments` label on code-switched audio).

    babelora corpus build --out runs/corpus --size tiny
    python bench/cs_st.py --corpus runs/corpus --steps 300 [--variants moe,linear] [--max-test 200]

Any `key=value` after `--` goes to every stage's training config (e.g. `-- model.tiny_random=true`
for a smoke run). Results: <out>/results.json and <out>/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "speech_llm"
RESULTS = ROOT / "bench" / "results" / "cs_st.json"
P = "recipe.params.model"
VARIANTS: dict[str, tuple[list[str], bool]] = {  # name -> (overrides, multi-stage)
    "moe": ([], True),
    "linear": ([f"{P}.projector.kind=linear"], True),
    "moe_no_lang": ([f"{P}.losses.lang_weight=0.0"], True),
    "moe_no_balance": ([f"{P}.losses.balance_weight=0.0"], True),
    "moe_no_trans": ([f"{P}.losses.transition_weight=0.0"], True),
    "moe_single": ([f"{P}.losses.transition_weight=0.0"], False),
}


def stages_for(corpus: Path, out: Path, multi: bool, overrides: list[str], steps: int):
    """The StagesConfig of one variant, with the corpus paths filled in."""
    from babelora.methods.speech_llm.stages import StageConfig, StagesConfig

    def data(train: str, dev: str) -> list[str]:
        return [f"data.train=[{corpus / train}]", f"data.dev=[{corpus / dev}]"]

    asr = StageConfig("asr", "asr.yaml", data("train.jsonl", "dev.jsonl"))
    st = StageConfig("st", "st.yaml", data("train.jsonl", "dev.jsonl"), replay_ratio=0.2)
    cs = StageConfig(
        "cs_st",
        "cs_st.yaml",
        data("train_cs.jsonl", "dev_cs.jsonl"),
        replay_ratio=0.3 if multi else 0.0,
        init_from_previous=multi,
    )
    common = [*overrides, f"max_steps={steps}", "progress_bar=false"]
    return StagesConfig(str(out), [asr, st, cs] if multi else [cs], common)


def features(utts, n_mels: int) -> list[torch.Tensor]:
    from babelora.data.audio import load_audio, log_mel

    return [log_mel(load_audio(u.audio_filepath), n_mels=n_mels) for u in utts]


@torch.no_grad()
def score(model, utts, batch_size: int, device: str) -> dict[str, float]:
    """BLEU against the English translations, and routing purity (MoE only)."""
    from babelora.evaluate.metrics import bleu

    hyps, refs, right, total = [], [], 0, 0
    n_mels = int(model.encoder.config.num_mel_bins)
    for i in range(0, len(utts), batch_size):
        chunk = utts[i : i + batch_size]
        batch = model.make_batch(
            features(chunk, n_mels),
            [u.task for u in chunk],
            [u.lang for u in chunk],
            [u.target_lang for u in chunk],
            segments=[u.segments for u in chunk],
        ).to(device)
        hyps += model.transcribe(batch)
        refs += [u.reference for u in chunk]
        if batch.frame_labels is not None:
            proj = model.speech_prefix(batch.features, batch.feature_lengths)
            labelled = proj.mask & (batch.frame_labels >= 0)
            right += int(((proj.routing.group_ids == batch.frame_labels) & labelled).sum())
            total += int(labelled.sum())
    out = {"bleu": bleu(hyps, refs, "en").score, "n": len(utts)}
    if total:
        out["purity"] = 100.0 * right / total
    return out


def test_sets(corpus: Path, max_items: int | None) -> dict[str, list]:
    from babelora.data.manifest import read_manifest

    mono = [
        u
        for u in read_manifest(corpus / "test.jsonl")
        if u.task == "st" and u.target_lang == "en" and u.lang != "en"
    ]
    cs = [u for u in read_manifest(corpus / "test_cs.jsonl") if u.task == "st"]
    return {"mono": mono[:max_items], "cs": cs[:max_items]}


def markdown(results: dict[str, dict], header: str) -> str:
    lines = [
        header,
        "",
        "| variant | BLEU mono X->en | BLEU CS->en | purity mono % | purity CS % |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        cells = [
            f"{r[s][k]:.2f}" if k in r[s] else "-"
            for s, k in (("mono", "bleu"), ("cs", "bleu"), ("mono", "purity"), ("cs", "purity"))
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=ROOT / "runs" / "corpus")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "work" / "cs_st")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per stage")
    ap.add_argument("--max-test", type=int, default=None, help="utterances per test set")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)

    from babelora.methods.speech_llm.recipe import load_speech_llm
    from babelora.methods.speech_llm.stages import run_stages

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sets = test_sets(args.corpus, args.max_test)
    results: dict[str, dict] = {}
    for name in args.variants.split(","):
        overrides, multi = VARIANTS[name]
        start = time.time()
        stages = stages_for(args.corpus, args.out / name, multi, [*overrides, *extra], args.steps)
        run_stages(stages, CONFIGS)
        model = load_speech_llm(args.out / name / "cs_st" / "final").to(device)
        results[name] = {k: score(model, v, args.batch_size, device) for k, v in sets.items()}
        results[name]["train_s"] = time.time() - start
        print(name, json.dumps(results[name]), flush=True)
    write_json(args.out / "results.json", results, indent=2)
    header = (
        f"steps/stage {args.steps}, device {device}, test: {len(sets['mono'])} mono, "
        f"{len(sets['cs'])} CS utterances; command: python bench/cs_st.py {' '.join(argv)}"
    )
    (args.out / "results.md").write_text(markdown(results, header))
    record = {
        "benchmark": "cs_st",
        "command": "python bench/cs_st.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
        "device": device,
        "steps_per_stage": args.steps,
        "test_utterances": {k: len(v) for k, v in sets.items()},
        "results": results,
    }
    write_json(RESULTS, record, indent=2)
    print(markdown(results, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
