"""Frozen-encoder training: encode each training utterance once, train the decoder on the states.

When a recipe trains no encoder parameter (decoder-side LoRA, language experts or MoLoRA on the
decoder, the decoder-only fine-tunes LoRS merges), the encoder computes the same states for an
utterance at every step. `train.encoder_cache` (`auto`, default) then encodes every training
and dev utterance once before training, stores the states on disk and trains on them.

What one utterance's encoder sees (the input-length policy): its log-mel features padded with
Whisper's silence value to `frames(n) = 3000` with `data.pad_to_30s`, else to
`max(n, data.min_input_seconds * 100)` rounded up to even; a cached batch pads the states to its
longest row and masks every row's cross-attention to its own positions (`masked_cross_attention`).
Live training pads each batch to its longest item instead, so the two agree exactly when
`data.min_input_seconds` is at least the longest utterance (or with pad_to_30s: the usual
setting, since decoding pads to at least 10 s); otherwise a cached row no longer sees the extra
padding its batch-mates would have given it, which only depended on the batch.

Entries (`cache_store`, crash-safe and checksummed) live under
`<cache_dir>/encoder/<model key>/<policy>/` and are keyed by the audio file's content hash, the
encoder's exact weights (a digest of every encoder tensor: another checkpoint, a fine-tuned or
merged base, another dtype all miss), the compute precision and the input-length policy.
The cache is refused (auto: not used, on: ConfigError) when any encoder parameter trains (an
encoder-side adapter, MGRF, a full fine-tune), when the encoder holds non-Whisper modules or
hooks (adapter layers whose routing depends on the batch), when it is stochastic in training
(dropout, layerdrop) and when SpecAugment changes the features every epoch.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babelora.data.audio import N_FRAMES, load_audio, log_mel
from babelora.data.collate import FRAMES_PER_SECOND, WhisperCollator
from babelora.data.manifest import Utterance
from babelora.errors import AudioError, BabeloraError
from babelora.train.cache_store import file_digest, read_entry, write_entry

log = logging.getLogger("babelora.train")

VERSION = "1"  # bump when the front end, the padding or the entry layout changes
_WRAPPERS = re.compile(r"^(?:module\.|_orig_mod\.|base_model\.model\.)+")


# -- what a recipe trains -------------------------------------------------------------------------
def trained_parts(model: nn.Module) -> dict[str, int]:
    """Trainable parameter count per part: `encoder` and `decoder` of Whisper (anything under a
    module named so), else the top-level module the parameter belongs to (e.g. `projector`)."""
    parts: dict[str, int] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        short = _WRAPPERS.sub("", name)
        match = re.search(r"(?:^|\.)(encoder|decoder)\.", short)
        part = match.group(1) if match else short.removeprefix("model.").split(".")[0]
        parts[part] = parts.get(part, 0) + p.numel()
    return parts


def trains_label(parts: dict[str, int]) -> str:
    """`decoder`, `encoder+decoder`, ... (encoder, decoder first, then the rest, sorted)."""
    order = [p for p in ("encoder", "decoder") if p in parts]
    order += sorted(p for p in parts if p not in ("encoder", "decoder"))
    return "+".join(order) or "nothing"


# -- the input-length policy ----------------------------------------------------------------------
@dataclass(frozen=True)
class InputPolicy:
    """How many mel frames the encoder sees for an utterance of n frames (module docstring)."""

    pad_to_30s: bool = False
    min_frames: int = 0

    def frames(self, n: int) -> int:
        if self.pad_to_30s:
            return N_FRAMES
        frames = min(N_FRAMES, max(n, self.min_frames))
        return frames + frames % 2

    @property
    def tag(self) -> str:
        return "pad30" if self.pad_to_30s else f"min{self.min_frames}"


def pad_features(feats: torch.Tensor, frames: int) -> torch.Tensor:
    """(n_mels, n) -> (n_mels, frames) padded with Whisper's silence value, as the collator does."""
    out = torch.empty(feats.shape[0], frames, dtype=torch.float32)
    out[:, : feats.shape[-1]] = feats
    out[:, feats.shape[-1] :] = feats.max() - 2.0
    return out


# -- when the encoder may be cached ---------------------------------------------------------------
def whisper_encoder(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_encoder", None)
    try:
        return getter() if callable(getter) else None
    except (AttributeError, NotImplementedError):
        return None


def cache_blockers(model: nn.Module, recipe_accepts: bool, spec_augment: bool) -> list[str]:
    """Why this model's encoder states cannot be computed once and reused (empty: they can)."""
    if not recipe_accepts:
        return ["the recipe does not take encoder states (its loss reads the features)"]
    encoder = whisper_encoder(model)
    if encoder is None:
        return ["the model has no Whisper encoder"]
    why = []
    if any(p.requires_grad for p in encoder.parameters()):
        why.append("encoder parameters train (encoder-side adapter, MGRF or fine-tune)")
    foreign = sorted(
        {
            type(m).__name__
            for m in encoder.modules()
            if not type(m).__module__.startswith(("torch.", "transformers."))
        }
    )
    if foreign:
        why.append(f"the encoder holds non-Whisper modules ({', '.join(foreign)})")
    if any(m._forward_hooks or m._forward_pre_hooks for m in encoder.modules()):
        why.append("the encoder has forward hooks")
    cfg = getattr(model, "config", None) or getattr(encoder, "config", None)
    stochastic = {
        k: getattr(cfg, k, 0.0)
        for k in ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop")
    }
    noisy = [k for k, v in stochastic.items() if v]
    if noisy:
        why.append(f"the encoder is stochastic in training ({', '.join(noisy)} > 0)")
    if spec_augment:
        why.append("data.spec_augment changes the features every epoch")
    return why


def encoder_key(encoder: nn.Module, precision: str) -> str:
    """Exact digest of the encoder's tensors (names, dtypes, shapes, bytes) and how it runs."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"v{VERSION}|{precision}|{getattr(encoder, 'variable_length', False)}".encode())
    for name, t in sorted(encoder.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# -- the store ------------------------------------------------------------------------------------
class EncoderStateStore:
    """Encoder states of one encoder under one input policy, one entry per audio content."""

    def __init__(self, root: Path, key: str, policy: InputPolicy, dtype: torch.dtype) -> None:
        self.folder = Path(root) / "encoder" / key / policy.tag
        self.key = key
        self.policy = policy
        self.dtype = dtype

    def path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def meta(self, digest: str) -> dict[str, str]:
        return {
            "audio": digest,
            "encoder": self.key,
            "policy": self.policy.tag,
            "dtype": str(self.dtype),
        }

    def load(self, digest: str) -> dict[str, torch.Tensor] | None:
        """{"states": (T', D), "feature_len": ()} or None (missing, or damaged and removed)."""
        return read_entry(self.path(digest), self.meta(digest))

    def save(self, digest: str, states: torch.Tensor, feature_len: int) -> None:
        write_entry(
            self.path(digest),
            {
                "states": states.to(self.dtype),
                "feature_len": torch.tensor(feature_len, dtype=torch.int64),
            },
            self.meta(digest),
        )


@dataclass
class FillStats:
    """What one pass over the cache did."""

    hits: int = 0
    encoded: int = 0
    seconds: float = 0.0


def audio_digests(utts: list[Utterance]) -> list[str]:
    """Content hash of every utterance's audio file (read once per run)."""
    memo: dict[str, str] = {}
    out = []
    for u in utts:
        if u.audio_filepath not in memo:
            memo[u.audio_filepath] = file_digest(u.audio_filepath)
        out.append(memo[u.audio_filepath])
    return out


def _check_disk(store: EncoderStateStore, utts: list[Utterance], d_model: int) -> None:
    need = 0
    for u in utts:
        frames = store.policy.frames(int(u.duration * FRAMES_PER_SECOND) + 1)
        need += (frames // 2) * d_model * torch.finfo(store.dtype).bits // 8
    store.folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(store.folder).free
    if need > 0.9 * free:
        raise BabeloraError(
            f"encoder cache: {need / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB free under "
            f"{store.folder}; set cache_dir elsewhere or encoder_cache: off"
        )


def fill(
    store: EncoderStateStore,
    utts: list[Utterance],
    digests: list[str],
    encoder: nn.Module,
    n_mels: int,
    device: torch.device,
    autocast: Any = None,
    batch_frames: int = 12000,
) -> FillStats:
    """Make sure every utterance has a valid entry: verify the existing ones (checksum), encode
    the rest. Utterances are encoded in fixed chunks (equal input length, sorted by content
    hash, `batch_frames` mel frames per call) whatever is missing, so an entry's bytes do not
    depend on which others were present: a run killed mid-fill and re-run writes the same cache."""
    import contextlib
    import time

    start = time.perf_counter()
    stats = FillStats()
    frames_of: dict[str, int] = {}
    missing: set[str] = set()
    feats: dict[str, torch.Tensor] = {}
    utt_of: dict[str, Utterance] = {}
    for utt, digest in zip(utts, digests):
        if digest in utt_of:
            continue
        utt_of[digest] = utt
        entry = store.load(digest)
        if entry is not None:
            stats.hits += 1
            frames_of[digest] = 2 * int(entry["states"].shape[0])
            continue
        n = int(_features(utt, n_mels).shape[-1])  # recomputed when encoded: memory stays flat
        frames_of[digest] = store.policy.frames(n)
        missing.add(digest)
    if missing:
        _check_disk(store, [utt_of[d] for d in missing], _d_model(encoder))
    by_len: dict[int, list[str]] = {}
    for digest, frames in frames_of.items():
        by_len.setdefault(frames, []).append(digest)
    was_training = encoder.training
    encoder.eval()
    dtype = next(encoder.parameters()).dtype
    try:
        for frames, group in sorted(by_len.items()):
            group.sort()
            per_call = max(1, batch_frames // frames)
            for i in range(0, len(group), per_call):
                chunk = group[i : i + per_call]
                if not missing.intersection(chunk):
                    continue
                for d in chunk:
                    if d not in feats:
                        feats[d] = _features(utt_of[d], n_mels)
                x = torch.stack([pad_features(feats[d], frames) for d in chunk])
                x = x.to(device=device, dtype=dtype)
                with torch.no_grad(), autocast() if autocast else contextlib.nullcontext():
                    states = encoder(x).last_hidden_state
                for d, s in zip(chunk, states.float().cpu()):
                    if d in missing:
                        store.save(d, s, int(feats[d].shape[-1]))
                        stats.encoded += 1
                for d in chunk:
                    feats.pop(d, None)
    finally:
        encoder.train(was_training)
    stats.seconds = time.perf_counter() - start
    return stats


def _features(utt: Utterance, n_mels: int) -> torch.Tensor:
    feats = log_mel(load_audio(utt.audio_filepath), n_mels=n_mels)
    if feats.shape[-1] > N_FRAMES:
        raise AudioError(
            f"{utt.audio_filepath}: audio is {feats.shape[-1] / FRAMES_PER_SECOND:.1f} s, "
            f"longer than Whisper's 30 s window (utterance {utt.id!r})"
        )
    return feats


def _d_model(encoder: nn.Module) -> int:
    return int(getattr(encoder.config, "d_model", 0) or encoder.layer_norm.weight.shape[0])


# -- dataset and collator -------------------------------------------------------------------------
class EncoderStateDataset(torch.utils.data.Dataset):
    """Utterances with their cached encoder states (the entries must exist: see `fill`)."""

    def __init__(self, utts: list[Utterance], digests: list[str], store: EncoderStateStore):
        self.utts = utts
        self.digests = digests
        self.store = store

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, key: int | tuple[int, float]) -> dict[str, Any]:
        index = key[0] if isinstance(key, tuple) else key
        entry = self.store.load(self.digests[index])
        if entry is None:
            raise BabeloraError(
                f"encoder cache entry of utterance {self.utts[index].id!r} is missing or was "
                f"damaged during the run ({self.store.path(self.digests[index])}); run again "
                "(with --resume) to rebuild it"
            )
        return {
            "states": entry["states"],
            "feature_len": int(entry["feature_len"]),
            "utt": self.utts[index],
        }


class EncoderStateCollator:
    """Items of `EncoderStateDataset` -> a batch: `encoder_states` (B, T', D) padded with zeros,
    `encoder_lens` (B,) valid positions per row, `feature_lens`, and the targets of `collator`."""

    def __init__(self, collator: WhisperCollator) -> None:
        self.collator = collator

    def set_epoch(self, epoch: int) -> None:
        self.collator.set_epoch(epoch)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        states = [it["states"] for it in items]
        width = max(s.shape[0] for s in states)
        out = states[0].new_zeros(len(items), width, states[0].shape[1])
        for b, s in enumerate(states):
            out[b, : s.shape[0]] = s
        return {
            "encoder_states": out,
            "encoder_lens": torch.tensor([s.shape[0] for s in states], dtype=torch.long),
            "feature_lens": torch.tensor([it["feature_len"] for it in items], dtype=torch.long),
            **self.collator.targets([it["utt"] for it in items]),
        }


# -- decoding from states -------------------------------------------------------------------------
def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    from transformers.models.whisper.modeling_whisper import WhisperDecoderLayer

    return [m for m in model.modules() if isinstance(m, WhisperDecoderLayer)]


@contextmanager
def masked_cross_attention(model: nn.Module, lens: torch.Tensor, width: int) -> Iterator[None]:
    """Inside: every decoder layer's cross-attention of row b sees only its first `lens[b]` of
    `width` encoder positions (nothing changes when every row is full)."""
    if bool((lens >= width).all()):
        yield
        return
    layers = _decoder_layers(model)
    valid = torch.arange(width, device=lens.device)[None, :] < lens[:, None]  # (B, T')
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
    if impl == "eager":
        mask = torch.zeros(valid.shape, dtype=torch.float32, device=lens.device)
        mask = mask.masked_fill(~valid, torch.finfo(torch.float32).min)[:, None, None, :]
    else:
        mask = valid[:, None, None, :]

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "encoder_attention_mask": mask}

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def encoder_frames(batch: dict[str, Any]) -> int:
    """Mel frames the encoder saw for this batch (live features or cached states)."""
    if "encoder_states" in batch:
        return 2 * int(batch["encoder_states"].shape[1])
    return int(batch["input_features"].shape[-1])
