"""A fine-tuned model exported by `babelora export --format ct2` decodes in faster-whisper
exactly as babelora decodes the model it came from (greedy, same prompt, same tokens)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from reference.export_models import multilingual_tiny, random_lora

from babelora.cli.main import main
from babelora.decode.runner import Request, RunnerOptions, decode_requests
from babelora.decode.search import DecodeOptions
from babelora.methods.loading import apply_peft_adapter
from babelora.models.whisper import load_whisper, tiny_random_whisper

SR = 16000


def _clip(path, seed: int = 3):
    """30 s exactly: neither side pads (faster-whisper pads log-mels, babelora audio)."""
    rng = np.random.default_rng(seed)
    t = np.arange(30 * SR) / SR
    wave = 0.3 * np.sin(2 * np.pi * 300 * t) * (1 + np.sin(2 * np.pi * 0.5 * t))
    sf.write(str(path), (wave + 0.05 * rng.standard_normal(t.size)).astype(np.float32), SR)
    return path


def _faster_whisper(folder, clip, language, eot, vocab, suppress):
    """faster-whisper's greedy, no-timestamp decode with babelora's suppression rules
    (never a special token; no blank or end first) and no fallbacks; text and token ids."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(folder), device="cpu", compute_type="float32", cpu_threads=1)
    segments, _ = model.transcribe(
        str(clip),
        language=language,
        task="transcribe",
        beam_size=1,
        temperature=0.0,
        without_timestamps=True,
        condition_on_previous_text=False,
        suppress_tokens=sorted(set(suppress) | set(range(eot + 1, vocab))),
        suppress_blank=True,
        max_new_tokens=40,
        vad_filter=False,
        compression_ratio_threshold=None,
        log_prob_threshold=None,
        no_speech_threshold=None,
    )
    segments = list(segments)
    return "".join(s.text for s in segments).strip(), [t for s in segments for t in s.tokens]


@pytest.mark.parametrize("vocab", ["multilingual", "english"])
def test_faster_whisper_decodes_the_export_as_babelora_does(tmp_path, vocab):
    pytest.importorskip("faster_whisper")
    handle = multilingual_tiny(seed=1) if vocab == "multilingual" else tiny_random_whisper(seed=1)
    base = tmp_path / "base"  # the base as a transformers folder, loadable by --model
    handle.model.save_pretrained(str(base))
    handle.tokenizer.save_pretrained(str(base))
    lora = random_lora(handle.model, tmp_path / "lora")
    out = tmp_path / "ct2"
    argv = ["export", "--format", "ct2", "--model", str(base), "--adapter", str(lora)]
    assert main([*argv, "--out", str(out), "--dtype", "float32"]) == 0

    clip = _clip(tmp_path / "clip.wav")
    config = handle.model.config
    fw_text, fw_tokens = _faster_whisper(
        out, clip, "de", config.eos_token_id, config.vocab_size, config.suppress_tokens or []
    )
    assert len(fw_tokens) >= 8 and all(t < config.eos_token_id for t in fw_tokens)

    # babelora on the fine-tuned model itself (not the export): base + the LoRA merged
    tuned = load_whisper(base)  # *.en vocabulary -> the bare prompt, as faster-whisper uses
    assert tuned.prompt_style == vocab
    apply_peft_adapter(tuned, lora)
    result = decode_requests(
        tuned,
        [Request("clip", str(clip), lang="de")],
        DecodeOptions(max_new_tokens=len(fw_tokens), repetition_guard=0),
        RunnerOptions(pad_to_30s=True, show_progress=False),
    )[0]
    assert result.error is None
    assert result.hypothesis == fw_text
    assert tuned.tokenizer.decode(fw_tokens, skip_special_tokens=True).strip() == fw_text
