"""Multi-stage training: run a list of training configs in order, each stage starting from the
previous stage's export, with replay of earlier stages' data (arXiv 2511.10670: monolingual
ASR -> monolingual ST -> code-switched ST; configs/speech_llm/stages.yaml).

A stages file:

    output_dir: runs/speech_llm
    overrides: [model.name=null]          # applied to every stage
    stages:
      - {name: asr, config: asr.yaml}
      - {name: st, config: st.yaml, replay_ratio: 0.2}
      - {name: cs_st, config: cs_st.yaml, replay_ratio: 0.3}

Stage i trains in `<output_dir>/<name>/` with `recipe.params.init_from` set to stage i-1's
`final/` export. With `replay_ratio` r > 0, its training manifest is `<name>/train_mix.jsonl`:
the stage's own utterances plus a seeded random sample of earlier stages' training utterances
(`replay_from`, default all earlier stages) making up a share r of the mix, marked
`"replay": true` (the transition loss is computed on those). A finished stage (its `final/`
exists) is skipped, an interrupted one resumes from its newest checkpoint, so re-running the
same command after a crash continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from babelora.config import apply_overrides, build_dataclass, load_config, read_yaml
from babelora.data.manifest import Utterance, read_manifest, write_manifest
from babelora.errors import ConfigError
from babelora.methods.registry import train, validate
from babelora.methods.speech_llm.recipe import replace_params
from babelora.train.checkpoint import CKPT_DIR
from babelora.train.config import TrainConfig
from babelora.train.loop import RunResult

log = logging.getLogger("babelora.train")


@dataclass(frozen=True)
class StageConfig:
    """One stage: a training config file plus what changes for it."""

    name: str
    config: str  # TrainConfig YAML, relative to the stages file
    overrides: list[str] = field(default_factory=list)  # dotted overrides for this stage only
    replay_ratio: float = 0.0  # share of this stage's training utterances replayed from earlier
    replay_from: list[str] = field(default_factory=list)  # earlier stage names; [] = all
    init_from_previous: bool = True  # start from the previous stage's export

    def __post_init__(self) -> None:
        if not 0.0 <= self.replay_ratio < 1.0:
            raise ConfigError(
                f"stages.{self.name}.replay_ratio must be in [0, 1), got {self.replay_ratio}"
            )


@dataclass(frozen=True)
class StagesConfig:
    """The stages of a multi-stage run, in order."""

    output_dir: str = "runs/stages"
    stages: list[StageConfig] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # applied to every stage (before its own)
    seed: int = 0  # replay sampling

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError("stages: give at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"stages: stage names must be unique, got {names}")
        for i, stage in enumerate(self.stages):
            unknown = [n for n in stage.replay_from if n not in names[:i]]
            if unknown:
                raise ConfigError(
                    f"stages.{stage.name}.replay_from: {unknown[0]!r} is not an earlier stage"
                )


def load_stages(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StagesConfig:
    data = read_yaml(path)
    apply_overrides(data, list(overrides))
    return build_dataclass(StagesConfig, data)


def replay_mix(
    own: list[Utterance], pool: list[Utterance], ratio: float, seed: int
) -> list[Utterance]:
    """own + a random sample of `pool` (ids not in `own`) so that the sample is a share `ratio`
    of the result: n_replay = round(ratio / (1 - ratio) * len(own)), capped by the pool."""
    if ratio <= 0:
        return list(own)
    ids = {u.id for u in own}
    candidates = [u for u in pool if u.id not in ids]
    want = round(ratio / (1.0 - ratio) * len(own))
    if want > len(candidates):
        log.warning("replay: wanted %d utterances, earlier stages have %d", want, len(candidates))
    picked = random.Random(seed).sample(candidates, min(want, len(candidates)))
    replayed = [dataclasses.replace(u, extra={**u.extra, "replay": True}) for u in picked]
    return list(own) + replayed


def _own_utterances(cfg: TrainConfig) -> list[Utterance]:
    """The stage's training utterances, filtered by its tasks and languages as the loop does."""
    langs = set(cfg.data.languages)
    return [
        u
        for path in cfg.data.train
        for u in read_manifest(path, data_root=cfg.data.data_root)
        if u.task in cfg.data.tasks and (not langs or u.lang in langs)
    ]


def _with_mix(cfg: TrainConfig, manifest: Path, mix: list[Utterance]) -> TrainConfig:
    """Train on the mixed manifest; widen tasks/languages so replayed utterances are kept."""
    data = cfg.data
    tasks = sorted(set(data.tasks) | {u.task for u in mix})
    langs = sorted(set(data.languages) | {u.lang for u in mix}) if data.languages else []
    data = dataclasses.replace(data, train=[str(manifest)], tasks=tasks, languages=langs)
    return dataclasses.replace(cfg, data=data)


def _stage_train_config(
    stages: StagesConfig, stage: StageConfig, base_dir: Path, overrides: list[str]
) -> TrainConfig:
    path = Path(stage.config)
    if not path.is_absolute():
        path = base_dir / path
    out = Path(stages.output_dir) / stage.name
    return validate(
        load_config(
            path,
            TrainConfig,
            [*stages.overrides, *stage.overrides, *overrides, f"output_dir={out}"],
        )
    )


def run_stages(
    stages: StagesConfig,
    base_dir: str | Path = ".",
    overrides: list[str] | tuple[str, ...] = (),
) -> list[RunResult | None]:
    """Run every stage in order (see module docstring); None for stages already finished."""
    base_dir = Path(base_dir)
    results: list[RunResult | None] = []
    train_sets: dict[str, list[Utterance]] = {}
    previous_final: Path | None = None
    for i, stage in enumerate(stages.stages):
        cfg = _stage_train_config(stages, stage, base_dir, list(overrides))
        out = Path(cfg.output_dir)
        own = _own_utterances(cfg)
        train_sets[stage.name] = own
        if stage.replay_ratio > 0 and i > 0:
            sources = stage.replay_from or [s.name for s in stages.stages[:i]]
            pool = [u for name in sources for u in train_sets[name]]
            mix = replay_mix(own, pool, stage.replay_ratio, stages.seed + i)
            manifest = out / "train_mix.jsonl"
            if not manifest.is_file():  # keep the mix of an interrupted stage
                write_manifest(mix, manifest)
            cfg = _with_mix(cfg, manifest, mix)
        if stage.init_from_previous and previous_final is not None:
            cfg = replace_params(cfg, init_from=str(previous_final))
        final = out / "final"
        if final.is_dir():
            log.info("stage %s: already finished (%s), skipped", stage.name, final)
            results.append(None)
        else:
            resume = (out / CKPT_DIR).is_dir()
            log.info(
                "stage %s (%d/%d)%s",
                stage.name,
                i + 1,
                len(stages.stages),
                " resuming" if resume else "",
            )
            results.append(train(dataclasses.replace(cfg, resume=resume)))
        previous_final = final
    return results
