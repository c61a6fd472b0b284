"""The training config: a frozen dataclass tree loaded from YAML with dotted overrides.

`load_train_config("configs/train/lora_tiny.yaml", ["optim.lr=3e-4"])` -> TrainConfig. Unknown
keys and wrong types raise ConfigError naming the dotted key; cross-field rules are checked in
`__post_init__`. Every hyper-parameter the papers leave open is a field here with its default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from babelora.config import load_config
from babelora.data.collate import SpecAugment
from babelora.errors import ConfigError
from babelora.languages import check_lang


@dataclass(frozen=True)
class ModelConfig:
    """Which backbone to start from."""

    name: str | None = None  # offline name (base, tiny.en), folder or HF id; None = base
    tiny_random: bool = False  # use a tiny random-weight Whisper instead (tests, smoke runs)
    tiny_random_seed: int = 0  # weights seed of the tiny random model
    prompt_style: Literal["multilingual", "english"] | None = None  # None = the model's own
    allow_pickle: bool = False  # load .bin/.pt weights (with weights_only=True) when no safetensors


@dataclass(frozen=True)
class DataConfig:
    """Manifests, languages and batching."""

    train: list[str] = field(default_factory=list)  # training manifests (JSONL)
    dev: list[str] = field(default_factory=list)  # dev manifests for periodic evaluation
    data_root: str | None = None  # audio paths may not escape this folder when set
    languages: list[str] = field(default_factory=list)  # [] = those in the train manifests, sorted
    tasks: list[str] = field(default_factory=lambda: ["asr", "st"])  # tasks kept from manifests
    batch_seconds: float = 240.0  # audio per global batch (all ranks, one micro-step)
    budget: Literal["padded", "sum"] = "padded"  # count the padded batch or the sum of audio
    max_batch_items: int | None = None  # cap on utterances per global batch
    min_batch_items: int | None = None  # smallest global batch; null = number of processes
    lang_temperature: float = 1.0  # p_lang ∝ n_lang^(1/T); 1 = natural proportions
    sort_pool: int = 2000  # utterances sorted together when bucketing by duration
    max_duration: float = 30.0  # longer utterances are dropped (Whisper's window is 30 s)
    pad_to_30s: bool = False  # pad features to 3000 frames (the original Whisper front end)
    min_input_seconds: float = 0.0  # pad batches to at least this long (see decode's setting)
    num_workers: int = 0  # DataLoader worker processes (audio decoding, log-mel, collation)
    feature_cache: str | None = None  # log-mel cache (train/feature_cache.py): a folder, `auto`
    # (<cache_dir>/features), or null = off; unused when the encoder states are cached
    spec_augment: SpecAugment = field(default_factory=SpecAugment)
    text_leading_space: bool = True  # " text" as Whisper's own outputs begin
    dev_max_items: int | None = None  # evaluate on N dev utterances, round-robin over languages

    def __post_init__(self) -> None:
        for lang in self.languages:
            check_lang(lang)
        bad = [t for t in self.tasks if t not in ("asr", "st")]
        if bad:
            raise ConfigError(f"data.tasks: unknown task {bad[0]!r}; expected asr or st")
        if self.batch_seconds <= 0:
            raise ConfigError(f"data.batch_seconds must be > 0, got {self.batch_seconds}")
        if self.lang_temperature <= 0:
            raise ConfigError(f"data.lang_temperature must be > 0, got {self.lang_temperature}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW, the learning-rate schedule, accumulation and clipping."""

    lr: float = 1e-4  # peak learning rate
    weight_decay: float = 0.0  # AdamW decay on matrices (biases and norms are never decayed)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0  # linear warm-up from 0 to lr over these optimizer steps
    schedule: Literal["linear", "cosine", "constant"] = "linear"  # decay after warm-up
    min_lr_ratio: float = 0.0  # decay ends at lr * min_lr_ratio
    grad_accum: int = 1  # micro-batches per optimizer step
    clip_norm: float | None = 1.0  # max global gradient norm; null = no clipping

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas needs two numbers, got {self.betas}")
        if self.grad_accum < 1:
            raise ConfigError(f"optim.grad_accum must be >= 1, got {self.grad_accum}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ConfigError(f"optim.clip_norm must be > 0 or null, got {self.clip_norm}")


@dataclass(frozen=True)
class RecipeConfig:
    """What is trained: a registered recipe (see docs/adding_a_recipe.md) and its parameters."""

    name: str = "lora"  # full | lora | ... (babelora.train.recipe.RECIPES)
    params: dict[str, Any] = field(default_factory=dict)  # validated by the recipe itself
    aux_loss_weights: dict[str, float] = field(default_factory=dict)  # weight per auxiliary loss


@dataclass(frozen=True)
class EvalConfig:
    """Periodic evaluation on the dev manifests."""

    every: int = 0  # optimizer steps between evaluations; 0 = only at the end
    hook: str | None = None  # extra metrics: `decode` = per-language WER/CER and BLEU
    batch_seconds: float | None = None  # eval batch budget; null = data.batch_seconds
    beam_size: int = 1  # `decode` hook: 1 = greedy
    max_new_tokens: int = 128  # `decode` hook: longest hypothesis


@dataclass(frozen=True)
class CheckpointConfig:
    """When to save and what to keep."""

    save_every: int = 500  # optimizer steps between checkpoints (one is always saved at the end)
    keep_last: int = 2  # newest checkpoints kept
    keep_best: int = 1  # best checkpoints kept in addition (by best_metric); 0 = none
    best_metric: str = "dev_loss"  # an evaluation metric name
    best_mode: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        if self.save_every < 1:
            raise ConfigError(f"checkpoint.save_every must be >= 1, got {self.save_every}")
        if self.keep_last < 1:
            raise ConfigError(f"checkpoint.keep_last must be >= 1, got {self.keep_last}")
        if self.keep_best < 0:
            raise ConfigError(f"checkpoint.keep_best must be >= 0, got {self.keep_best}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run."""

    output_dir: str = "runs/train"  # run folder: config, logs, checkpoints, final export
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    max_steps: int | None = None  # optimizer steps; or give epochs
    epochs: float | None = None  # passes over the (temperature-sampled) training data
    seed: int = 0  # model init, data order, dropout
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto = bf16 on a GPU
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    ddp_find_unused_parameters: bool = False  # DDP: true when some trainable weights may get no
    # gradient in a step (language experts, MoE); costs an extra graph traversal per step
    log_every: int = 10  # optimizer steps between metric lines
    progress_bar: bool = True  # tqdm bar on rank 0
    resume: bool = False  # continue from the newest checkpoint in output_dir
    stop_after_steps: int | None = None  # save and stop at this step (schedule still max_steps)
    encoder_cache: Literal["auto", "on", "off"] = "auto"  # train the decoder on cached encoder
    # states when no encoder parameter trains (train/encoder_cache.py); on = error if impossible
    encoder_cache_dtype: Literal["float16", "float32"] = "float16"  # stored encoder states
    cache_dir: str | None = None  # encoder/feature caches; null = babelora's cache folder/train

    def __post_init__(self) -> None:
        if (self.max_steps is None) == (self.epochs is None):
            raise ConfigError("give exactly one of max_steps and epochs")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if self.log_every < 1:
            raise ConfigError(f"log_every must be >= 1, got {self.log_every}")
        if not self.data.train:
            raise ConfigError("data.train: give at least one training manifest")
        if self.eval.every < 0:
            raise ConfigError(f"eval.every must be >= 0, got {self.eval.every}")
        ckpt = self.checkpoint
        unevaluated = self.eval.every == 0 or ckpt.save_every % self.eval.every
        if ckpt.keep_best > 0 and self.data.dev and unevaluated:
            raise ConfigError(
                "checkpoint.keep_best needs every checkpoint evaluated: make "
                "checkpoint.save_every a multiple of eval.every (or set keep_best: 0)"
            )


def load_train_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """YAML + dotted overrides -> TrainConfig (ConfigError on unknown keys or bad values)."""
    return load_config(path, TrainConfig, overrides)
