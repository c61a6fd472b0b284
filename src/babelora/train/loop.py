"""`train(cfg)`: the one training loop, on Hugging Face Accelerate (CPU, one GPU, DDP, ...).

Each optimizer step:
    1. take `grad_accum` micro-batches (this rank's share of each global batch);
    2. count the target tokens of all of them on all ranks (one small all-reduce);
    3. per micro-batch: forward, loss = summed token loss / global tokens (+ weighted aux
       losses), backward (gradients synchronised on the last micro-batch only);
    4. clip, optimizer step, scheduler step;
    5. log, evaluate, save, as configured.
Step 2 makes the update the gradient of the token mean over the whole global batch, so N
processes compute what one process computes with the same global batch.

Resume restores trainable weights, optimizer, scheduler, the sampler position and every RNG, so
a resumed run continues bitwise like an uninterrupted one on CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from babelora.config import dump_config, to_dict
from babelora.data.collate import FRAMES_PER_SECOND, IGNORE_INDEX
from babelora.errors import ConfigError, ModelLoadError
from babelora.train import checkpoint as ckpt
from babelora.train.caches import fill_encoder_cache, plan_caches
from babelora.train.config import TrainConfig
from babelora.train.data import RunData, build_run_data
from babelora.train.encoder_cache import trained_parts, trains_label
from babelora.train.evaluation import EvaluateFn, build_eval_hook, dev_loss_sums
from babelora.train.logging import MetricLogger
from babelora.train.optim import build_optimizer, build_scheduler
from babelora.train.recipe import Recipe, RecipeBuilder

log = logging.getLogger("babelora.train")


@dataclass
class RunResult:
    """What a run did."""

    output_dir: Path
    step: int  # optimizer steps done
    total_steps: int
    finished: bool  # False when stopped early by stop_after_steps
    train_loss: float | None  # last logged training loss
    eval_metrics: dict[str, float] = field(default_factory=dict)  # last evaluation
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    final_dir: Path | None = None  # the recipe's export of the final model
    languages: list[str] = field(default_factory=list)
    trains: str = ""  # decoder, encoder+decoder, ... (trained_parts of the recipe's model)
    encoder_cache: bool = False  # the decoder trained on cached encoder states


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    position: int = 0  # global batches of `epoch` consumed
    eval_metrics: dict[str, float] = field(default_factory=dict)
    eval_step: int = -1
    train_loss: float | None = None


def make_accelerator(cfg: TrainConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    precision = cfg.mixed_precision
    if precision == "auto":
        gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        precision = "bf16" if gpu_bf16 else "no"
    return Accelerator(
        gradient_accumulation_steps=cfg.optim.grad_accum,
        mixed_precision=precision,
        cpu=_cpu_processes(),
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=cfg.ddp_find_unused_parameters)
        ],
    )


def _cpu_processes() -> bool:
    """Launched as several processes (torchrun / accelerate launch) on a machine without a GPU:
    Accelerate needs `cpu=True` to join them with gloo, or each would train alone."""
    gpu = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not gpu


def _lock(cfg: TrainConfig, accelerator: Any) -> ckpt.RunLock | None:
    """Main process takes the run folder's lock; every rank learns whether it succeeded."""
    from accelerate.utils import broadcast_object_list

    lock, error = None, [None]
    if accelerator.is_main_process:
        try:
            lock = ckpt.RunLock(cfg.output_dir).acquire()
        except ConfigError as err:
            error = [str(err)]
    if accelerator.num_processes > 1:
        broadcast_object_list(error)
    if error[0]:
        raise ConfigError(error[0])
    return lock


def _batches(data: RunData, epoch: int, position: int) -> Iterator[tuple[int, int, dict]]:
    """Endless stream of (epoch, batches consumed in it, batch), starting at a saved position."""
    while True:
        data.train_sampler.set_epoch(epoch, position)
        data.train_collator.set_epoch(epoch)
        for batch in data.train_loader:
            position += 1
            yield epoch, position, batch
        epoch, position = epoch + 1, 0


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


class Trainer:
    """The state of one run; `run()` is the loop. Use `train(cfg, build)`."""

    def __init__(
        self,
        cfg: TrainConfig,
        build: RecipeBuilder,
        accelerator: Any,
        evaluate_fn: EvaluateFn | None,
    ) -> None:
        from accelerate.utils import set_seed

        self.acc = accelerator
        self.out = Path(cfg.output_dir)
        self.ckpt_root = self.out / ckpt.CKPT_DIR
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        set_seed(cfg.seed)
        self.recipe: Recipe = build(cfg)
        self.parts = trained_parts(self.recipe.model)
        self.caches = plan_caches(
            cfg, self.recipe, accelerator.device, str(accelerator.mixed_precision)
        )
        self.data = build_run_data(
            cfg, self.recipe, accelerator.num_processes, accelerator.process_index, self.caches
        )
        languages = list(self.data.languages)  # resolved: saved with the run
        self.cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, languages=languages))
        self.evaluate_fn = evaluate_fn or build_eval_hook(self.cfg)
        self.total_steps = self._total_steps()
        model = self.recipe.model
        optimizer = build_optimizer(model, self.cfg.optim, self.recipe.param_groups)
        self.scheduler = build_scheduler(optimizer, self.cfg.optim, self.total_steps)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        fill_encoder_cache(
            self.caches,
            self.data.train_utts + self.data.dev_utts,
            self.unwrapped,
            self.recipe.n_mels,
            accelerator,
        )
        self.aux_weights = {**self.recipe.aux_loss_weights, **self.cfg.recipe.aux_loss_weights}
        self.state = _State()

    @property
    def trains(self) -> str:
        """Which parts train: `decoder`, `encoder+decoder`, ... (from requires_grad)."""
        return trains_label(self.parts)

    def write_run_info(self) -> None:
        """`run_info.json`: what trains (benchmark tables state it per row) and the input path."""
        import json

        info = {
            "recipe": self.cfg.recipe.name,
            "trains": self.trains,
            "trainable_parameters": self.parts,
            **self.caches.info,
            "num_workers": self.cfg.data.num_workers,
            "mixed_precision": str(self.acc.mixed_precision),
            "device": str(self.acc.device),
        }
        (self.out / "run_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        used = info["encoder_cache"]["used"]
        log.info(
            "trains: %s (%d parameters); encoder states %s",
            self.trains,
            sum(self.parts.values()),
            "cached" if used else f"computed live ({info['encoder_cache']['reason']})",
        )

    def _total_steps(self) -> int:
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        per_epoch = len(self.data.train_sampler.plan(0))
        return max(1, int(-(-self.cfg.epochs * per_epoch // self.cfg.optim.grad_accum)))

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.acc.unwrap_model(self.model)

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        dev = self.acc.device
        return {
            k: v.to(dev, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
        }

    # -- resume and save ----------------------------------------------------------------------
    def resume_or_start(self) -> None:
        """Load the newest checkpoint (with `resume`), or refuse to overwrite an earlier run."""
        if self.acc.is_main_process:
            ckpt.clean_temporary(self.ckpt_root)
        self.acc.wait_for_everyone()
        latest = ckpt.latest_checkpoint(self.ckpt_root)
        if latest is None:
            if self.cfg.resume:
                log.info("resume: no checkpoint in %s, starting from step 0", self.ckpt_root)
            return
        if not self.cfg.resume:
            raise ConfigError(
                f"output_dir {str(self.out)!r} already holds checkpoints ({latest.name}): pass "
                "--resume (resume=true) to continue that run, or choose another output_dir"
            )
        loaded = ckpt.load_checkpoint(latest, self.acc.process_index)
        wanted = _trainable(self.unwrapped)
        missing = sorted(set(wanted) - set(loaded.trainable))
        extra = sorted(set(loaded.trainable) - set(wanted))
        if missing or extra:
            raise ModelLoadError(
                f"{latest}: checkpoint does not match the model "
                f"(missing {missing[:2]}, unexpected {extra[:2]}); was the recipe changed?"
            )
        self.unwrapped.load_state_dict(loaded.trainable, strict=False)
        self.optimizer.load_state_dict(loaded.optimizer)
        self.scheduler.load_state_dict(loaded.scheduler)
        if loaded.rng is not None:
            ckpt.restore_rng(loaded.rng)
        else:
            log.warning(
                "%s: no RNG state for rank %d; results will differ", latest, self.acc.process_index
            )
        ts = loaded.trainer_state
        self.state = _State(
            ts["step"],
            ts["epoch"],
            ts["position"],
            ts.get("eval_metrics", {}),
            ts.get("eval_step", -1),
        )
        log.info("resumed from %s (step %d)", latest, self.state.step)

    def save(self) -> Path:
        """A checkpoint of the current step (collective: every rank calls it)."""
        s = self.state
        path = ckpt.save_checkpoint(
            self.ckpt_root,
            s.step,
            trainable=_trainable(self.unwrapped) if self.acc.is_main_process else {},
            optimizer=self.optimizer.state_dict() if self.acc.is_main_process else {},
            scheduler=self.scheduler.state_dict(),
            trainer_state={
                "step": s.step,
                "epoch": s.epoch,
                "position": s.position,
                "total_steps": self.total_steps,
                "eval_metrics": s.eval_metrics,
                "eval_step": s.eval_step,
                "languages": self.cfg.data.languages,
            },
            config_yaml=(self.out / "config.yaml").read_text(encoding="utf-8"),
            rank=self.acc.process_index,
            is_main=self.acc.is_main_process,
            barrier=self.acc.wait_for_everyone,
        )
        if self.acc.is_main_process:
            c = self.cfg.checkpoint
            ckpt.prune_checkpoints(
                self.ckpt_root, c.keep_last, c.keep_best, c.best_metric, c.best_mode
            )
        self.acc.wait_for_everyone()
        return path

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Dev loss on all ranks (reduced) and the metric hook on the main process."""
        metrics: dict[str, float] = {}
        if self.data.dev_loader is None:
            return metrics
        model = self.unwrapped
        model.eval()
        with self.acc.autocast():
            sums = dev_loss_sums(model, self.recipe.loss_fn, self.data.dev_loader, self.to_device)
        sums = self.acc.reduce(sums.to(self.acc.device), "sum").cpu()
        metrics["dev_loss"] = float(sums[0] / sums[1].clamp(min=1))
        if self.evaluate_fn is not None and self.acc.is_main_process:
            with torch.no_grad(), self.acc.autocast():
                metrics.update(
                    self.evaluate_fn(model, self.recipe, self.data.dev_utts, step=self.state.step)
                )
        model.train()
        self.state.eval_metrics, self.state.eval_step = metrics, self.state.step
        return metrics

    # -- one optimizer step ---------------------------------------------------------------------
    def train_step(self, micro: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Forward/backward over the micro-batches, clip, step. Returns unreduced sums."""
        acc, world = self.acc, self.acc.num_processes
        local = torch.tensor([float((b["labels"] != IGNORE_INDEX).sum()) for b in micro]).sum()
        tokens = acc.reduce(local.to(acc.device), "sum") if world > 1 else local.to(acc.device)
        scale = world * len(micro) / tokens.clamp(min=1)  # backward divides by grad_accum again
        stats = {"loss_sum": torch.zeros((), device=acc.device)}
        grad_norm = None
        for batch in micro:
            with acc.accumulate(self.model):
                batch = {**self.to_device(batch), "step": self.state.step}  # 0-based, resumable
                out = self.recipe.loss_fn(self.model, batch)
                loss = out.loss * scale
                for name, value in out.aux_losses.items():
                    if name not in self.aux_weights:
                        raise ConfigError(
                            f"recipe.aux_loss_weights: no weight for auxiliary loss {name!r}"
                        )
                    loss = loss + self.aux_weights[name] * value
                    stats[f"aux/{name}"] = stats.get(f"aux/{name}", 0.0) + value.detach() / len(
                        micro
                    )
                acc.backward(loss)
                stats["loss_sum"] += out.loss.detach()
                if acc.sync_gradients and self.cfg.optim.clip_norm is not None:
                    grad_norm = acc.clip_grad_norm_(self.params, self.cfg.optim.clip_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        stats["lr"] = torch.tensor(
            self.scheduler.get_last_lr()[0], dtype=torch.float64
        )  # this step's
        self.scheduler.step()
        stats["tokens"] = local.to(acc.device)
        frames = sum(float(b["feature_lens"].sum()) for b in micro)
        stats["audio_s"] = torch.tensor(frames / FRAMES_PER_SECOND)
        if grad_norm is not None:
            stats["grad_norm"] = (
                grad_norm.detach() if torch.is_tensor(grad_norm) else torch.tensor(grad_norm)
            )
        return stats

    def _log(
        self, logger: MetricLogger, window: dict[str, torch.Tensor], steps: int, seconds: float
    ) -> None:
        """Reduce the accumulated window over ranks and write one metric row."""
        acc = self.acc
        keys = sorted(window)
        vec = torch.stack([window[k].detach().cpu().double() for k in keys])  # the only device sync
        if acc.num_processes > 1:
            vec = acc.reduce(vec.to(acc.device), "sum").cpu()
        total = dict(zip(keys, vec.tolist()))
        row = {
            "train/loss": total["loss_sum"] / max(total["tokens"], 1.0),
            "train/lr": total["lr"] / (steps * acc.num_processes),
            "train/audio_s_per_s": total["audio_s"] / max(seconds, 1e-9),
            "train/step_time_s": seconds / steps,
            "train/epoch": self.state.epoch,
        }
        if "grad_norm" in total:
            row["train/grad_norm"] = total["grad_norm"] / (steps * acc.num_processes)
        for k in keys:
            if k.startswith("aux/"):
                row[f"train/{k}"] = total[k] / (steps * acc.num_processes)
        self.state.train_loss = row["train/loss"]
        logger.log(self.state.step, row)

    def _log_eval(self, logger: MetricLogger) -> None:
        metrics = self.evaluate()
        if metrics:
            logger.log(self.state.step, {f"eval/{k}": v for k, v in metrics.items()})

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> RunResult:
        cfg, acc, s = self.cfg, self.acc, self.state
        logger = MetricLogger(
            self.out, acc.is_main_process, s.step, self.total_steps, cfg.progress_bar
        )
        stop_at = min(self.total_steps, cfg.stop_after_steps or self.total_steps)
        stream = _batches(self.data, s.epoch, s.position)
        self.model.train()
        window: dict[str, torch.Tensor] = {}
        window_steps, window_start = 0, time.perf_counter()
        last_saved = s.step if ckpt.latest_checkpoint(self.ckpt_root) else None
        try:
            while s.step < stop_at:
                micro = []
                for _ in range(cfg.optim.grad_accum):
                    s.epoch, s.position, batch = next(stream)
                    micro.append(batch)
                stats = self.train_step(micro)
                s.step += 1
                for k, v in stats.items():
                    window[k] = window.get(k, 0.0) + v
                window_steps += 1
                logger.advance()
                if s.step % cfg.log_every == 0 or s.step == stop_at:
                    self._log(logger, window, window_steps, time.perf_counter() - window_start)
                    window, window_steps, window_start = {}, 0, time.perf_counter()
                if cfg.eval.every and s.step % cfg.eval.every == 0:
                    self._log_eval(logger)
                if s.step % cfg.checkpoint.save_every == 0:
                    self.save()
                    last_saved = s.step
            finished = s.step >= self.total_steps
            evaluated_now = finished and s.eval_step != s.step
            if evaluated_now:
                self._log_eval(logger)
            if last_saved != s.step or evaluated_now:
                self.save()
        finally:
            logger.close()
        return self._finish(finished)

    def _finish(self, finished: bool) -> RunResult:
        c = self.cfg.checkpoint
        last = ckpt.latest_checkpoint(self.ckpt_root)
        best = (
            ckpt.best_checkpoint(self.ckpt_root, c.best_metric, c.best_mode)
            if c.keep_best
            else None
        )
        final_dir = None
        if finished and self.acc.is_main_process:
            final_dir = self._export(self.out / "final")
            if best is not None:
                trainable = ckpt.load_checkpoint(best).trainable
                self.unwrapped.load_state_dict(trainable, strict=False)
                self._export(self.out / "best")
        self.acc.wait_for_everyone()
        return RunResult(
            self.out,
            self.state.step,
            self.total_steps,
            finished,
            self.state.train_loss,
            self.state.eval_metrics,
            last,
            best,
            final_dir,
            list(self.cfg.data.languages),
            self.trains,
            self.caches.encoder is not None,
        )

    def _export(self, target: Path) -> Path:
        """The recipe's export, written to a temporary folder and renamed into place."""
        import shutil

        tmp = target.with_name(f".tmp-{target.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.recipe.export(self.unwrapped, tmp)
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
        return target


def train(
    cfg: TrainConfig, build: RecipeBuilder, evaluate_fn: EvaluateFn | None = None
) -> RunResult:
    """Run (or resume) the training described by `cfg` with the recipe `build(cfg)` returns (the
    engine knows no method: `babelora.methods.registry.train` passes the registered builder)."""
    accelerator = make_accelerator(cfg)
    lock = _lock(cfg, accelerator)
    try:
        trainer = Trainer(cfg, build, accelerator, evaluate_fn)
        trainer.resume_or_start()  # refuses a folder with checkpoints unless resuming
        if accelerator.is_main_process:
            _check_resumed_config(trainer)
            dump_config(trainer.cfg, trainer.out / "config.yaml")
            trainer.write_run_info()
        accelerator.wait_for_everyone()
        return trainer.run()
    finally:
        if lock is not None:
            lock.release()


def _check_resumed_config(trainer: Trainer) -> None:
    """Warn when a resumed run's config differs from the one saved in the run folder."""
    import yaml

    path = trainer.out / "config.yaml"
    if not (trainer.cfg.resume and path.is_file()):
        return
    old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    new = to_dict(trainer.cfg)
    changed = sorted(_diff(old, new))
    harmless = {"resume", "stop_after_steps", "progress_bar"}
    changed = [k for k in changed if k not in harmless]
    if changed:
        log.warning("resume: config differs from the saved run in %s", ", ".join(changed))


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = set(old) | set(new)
        return [d for k in keys for d in _diff(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]
