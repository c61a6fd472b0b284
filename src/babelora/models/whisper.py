"""Load Whisper by offline name, from a CTranslate2 or transformers folder or a hub id; any length.

Names in `models/offline.py` come first: `load_whisper(None)` gives the offline default,
multilingual Whisper `base`, and `load_whisper("tiny.en")` the small English-only model (tests);
both come from PyPI packages in CTranslate2 format and are converted here in memory.

Whisper pads every input to 30 s. `enable_variable_length` swaps the encoder's forward for one
that accepts any number of log-mel frames up to 3000 and adds the first positions of the
positional table, so a 3 s utterance costs 3 s of encoder work; `pad_to_30s` in the front end
keeps the exact original behaviour.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babelora.errors import ModelLoadError
from babelora.models.ct2 import is_ct2_dir, load_ct2_whisper
from babelora.models.offline import DEFAULT_MODEL, OFFLINE_MODELS, offline_model_path

log = logging.getLogger(__name__)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@dataclass
class WhisperHandle:
    """A loaded Whisper: the transformers model, its tokenizer, where it came from, and whether
    its decoder prompt carries language/task tokens (`multilingual`) or not (`english`, *.en)."""

    model: Any  # transformers.WhisperForConditionalGeneration
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    name: str
    prompt_style: str = "multilingual"

    @property
    def n_mels(self) -> int:
        return int(self.model.config.num_mel_bins)

    @property
    def eot_id(self) -> int:
        return int(self.model.config.eos_token_id)


def default_model_path() -> Path:
    """CTranslate2 folder of the offline default model (`DEFAULT_MODEL`, base; joined on first
    use), for tools that read the folder themselves (faster-whisper)."""
    return offline_model_path(DEFAULT_MODEL)


def _encoder_forward(self, input_features: torch.Tensor, attention_mask=None, **kwargs):
    """WhisperEncoder.forward for inputs of any length <= max_source_positions * 2 frames."""
    from transformers.modeling_outputs import BaseModelOutput

    max_frames = self.config.max_source_positions * self.conv1.stride[0] * self.conv2.stride[0]
    if input_features.shape[-1] > max_frames:
        raise ValueError(
            f"input has {input_features.shape[-1]} mel frames; the encoder takes at most "
            f"{max_frames} ({max_frames // 100} s): chunk the audio"
        )
    x = nn.functional.gelu(self.conv1(input_features))
    x = nn.functional.gelu(self.conv2(x))
    x = x.permute(0, 2, 1)  # (B, T', D)
    x = x + self.embed_positions.weight[: x.shape[1]]
    x = nn.functional.dropout(x, p=self.dropout, training=self.training)
    for layer in self.layers:
        if self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop:
            continue
        x = layer(x, None)
        if isinstance(x, tuple):
            x = x[0]
    return BaseModelOutput(last_hidden_state=self.layer_norm(x))


def enable_variable_length(model: nn.Module) -> nn.Module:
    """Let `model`'s Whisper encoder take inputs shorter than 30 s (in place; returns model)."""
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else model
    encoder.forward = _encoder_forward.__get__(encoder)
    encoder.variable_length = True
    return model


def _load_tokenizer(path: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    tok_file = path / "tokenizer.json"
    if tok_file.is_file():
        tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_file))
        tok.pad_token = tok.eos_token = "<|endoftext|>"
        return tok
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _from_ct2(path: Path, dtype: torch.dtype) -> WhisperHandle:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    state, kwargs, _ = load_ct2_whisper(path)
    config = WhisperConfig(**kwargs)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ModelLoadError(f"{path}: CTranslate2 model lacks tensors for {missing[:3]}")
    model = model.to(dtype)
    style = "english" if config.vocab_size < 51865 else "multilingual"
    return WhisperHandle(model, _load_tokenizer(path), str(path), style)


def _refuse_pickles(path: Path, allow_pickle: bool) -> None:
    has_safe = any(path.glob("*.safetensors"))
    pickles = [p.name for p in path.glob("*") if p.suffix in PICKLE_SUFFIXES]
    if pickles and not has_safe and not allow_pickle:
        raise ModelLoadError(
            f"{path}: holds only pickle weights ({pickles[0]}), which can run code when loaded; "
            "convert to safetensors or pass allow_pickle=True (--allow-pickle) to load them "
            "with torch.load(weights_only=True)"
        )


def _from_transformers(name: str, dtype: torch.dtype, allow_pickle: bool) -> WhisperHandle:
    from transformers import WhisperForConditionalGeneration

    path = Path(name)
    if path.is_dir():
        _refuse_pickles(path, allow_pickle)
    try:
        model = WhisperForConditionalGeneration.from_pretrained(
            name, dtype=dtype, use_safetensors=None if allow_pickle else True
        )
    except OSError as err:
        raise ModelLoadError(
            f"cannot load Whisper model {name!r}: {str(err).splitlines()[0]}"
        ) from None
    except pickle.UnpicklingError as err:  # allow_pickle: torch.load(weights_only=True) refused
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or ["?"]
        why = next((line for line in lines if "GLOBAL" in line), lines[0])
        raise ModelLoadError(
            f"{name}: pickle weights hold more than tensors; torch.load(weights_only=True) "
            f"refused them and nothing was run ({why[:200]})"
        ) from None
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise ModelLoadError(f"cannot load the tokenizer of {name!r}: {err}") from None
    style = "english" if model.config.vocab_size < 51865 else "multilingual"
    return WhisperHandle(model, tok, name, style)


def load_whisper(
    name_or_path: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    prompt_style: str | None = None,
    variable_length: bool = True,
    allow_pickle: bool = False,
) -> WhisperHandle:
    """Load Whisper as a transformers model.

    `name_or_path`, resolved in this order: an offline model name (`base`, `tiny.en`: see
    models/offline.py; None = `DEFAULT_MODEL`, base), a CTranslate2 folder (model.bin +
    config.json + tokenizer.json), a transformers folder, a hub id. `prompt_style` overrides
    the prompt (`english` = Whisper *.en's bare prefix; `multilingual` = with language and task
    tokens, which babelora's multilingual experts are trained with, also on tiny.en).
    Pickle weights are refused unless `allow_pickle`.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    name = str(name_or_path)
    path = Path(name).expanduser()
    if isinstance(name_or_path, str) and name in OFFLINE_MODELS:
        handle = _from_ct2(offline_model_path(name), dtype)
        handle.name = name
    elif path.exists() and not path.is_dir():
        raise ModelLoadError(f"{path}: a model must be a folder or a hub id, not a file")
    elif path.is_dir() and is_ct2_dir(path):
        handle = _from_ct2(path, dtype)
    elif path.is_dir() or ("/" in name and not name.startswith((".", "/"))):
        handle = _from_transformers(str(path) if path.is_dir() else name, dtype, allow_pickle)
    else:
        raise ModelLoadError(
            f"model {name!r} not found: give an offline model name ({', '.join(OFFLINE_MODELS)}; "
            "see `babelora models`), a CTranslate2 or transformers folder, or a hub id such as "
            "openai/whisper-small"
        )
    if prompt_style is not None:
        handle.prompt_style = prompt_style
    if variable_length:
        enable_variable_length(handle.model)
    handle.model.to(device).eval()
    log.debug("loaded %s (%s prompt)", handle.name, handle.prompt_style)
    return handle


def tiny_random_whisper(seed: int = 0, **overrides: Any) -> WhisperHandle:
    """A tiny random-weight Whisper (d_model 64, 2+2 layers) with the tiny.en tokenizer (tests)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    kwargs = dict(
        vocab_size=51864,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=50257,
        eos_token_id=50256,
        pad_token_id=50256,
        bos_token_id=50256,
        begin_suppress_tokens=[220, 50256],
        suppress_tokens=[],
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**kwargs))
    enable_variable_length(model)
    model.eval()
    tok = _load_tokenizer(offline_model_path("tiny.en"))
    return WhisperHandle(model, tok, f"tiny-random-whisper(seed={seed})", "multilingual")
