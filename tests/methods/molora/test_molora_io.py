"""MoLoRA on Whisper: batch masks, MGRF save/load and bypass, decoding a loaded set, and
teacher-forced training routing equal to cached decode-time routing."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from reference.tiny_models import randomize_experts

from babelora.adapters import ExpertLoRALinear, LoRAConfig, MoLoRAConfig, inject
from babelora.adapters.mgrf import MGRFConfig
from babelora.data.collate import WhisperCollator
from babelora.data.manifest import Utterance
from babelora.decode.routing import adapter_batch_hook
from babelora.decode.runner import Request, RunnerOptions, decode_requests
from babelora.decode.search import DecodeOptions
from babelora.errors import ModelLoadError
from babelora.methods.loading import load_expert_set
from babelora.methods.molora.model import (
    MGRF_CONFIG,
    MGRF_WEIGHTS,
    attach_mgrf,
    decoder_mask,
    encoder_valid_mask,
    has_mgrf,
    load_molora,
    mgrf_of,
    prompt_lengths,
    route_batch,
    save_molora,
)
from babelora.models.whisper import tiny_random_whisper

LANGS = ("de", "fr")


def molora(seed=0, mgrf=True, **cfg):
    handle = tiny_random_whisper(seed=0)
    config = MoLoRAConfig(lora=LoRAConfig(rank=4), languages=LANGS, **cfg)
    adapter = inject(handle.model, config)
    randomize_experts(adapter, seed=seed, scale=0.3)
    module = None
    if mgrf:
        module = attach_mgrf(handle.model, adapter, MGRFConfig())
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return handle, adapter, module


def batch_of(handle, langs=("de", "fr", "de"), tasks=("asr", "st", "st"), seconds=(0.5, 0.9, 0.7)):
    """A collated batch of random audio (padding in the features and in the decoder rows)."""
    collator = WhisperCollator(handle.tokenizer, LANGS, handle.prompt_style)
    texts = ["guten morgen", "bonjour à tous les amis", "ja"]
    items = []
    for i, (lang, task, sec) in enumerate(zip(langs, tasks, seconds)):
        utt = Utterance(
            id=f"u{i}",
            audio_filepath=f"u{i}.wav",
            duration=sec,
            lang=lang,
            task=task,
            text=texts[i],
            translation="hello there" if task == "st" else None,
            target_lang="en" if task == "st" else None,
        )
        feats = torch.randn(80, int(sec * 100), generator=torch.Generator().manual_seed(i))
        items.append({"features": feats, "utt": utt, "pad_seconds": 0.0})
    return collator(items), collator


def logits(model, batch):
    with torch.no_grad():
        return model(
            input_features=batch["input_features"],
            decoder_input_ids=batch["decoder_input_ids"],
            use_cache=False,
        ).logits


def test_masks_against_the_collator():
    handle = tiny_random_whisper(seed=0)
    batch, collator = batch_of(handle)
    assert batch["langs"] == ["de", "fr", "de"]
    lens = prompt_lengths(batch["labels"])
    for b, task in enumerate(batch["tasks"]):
        prompt = collator.prompt_ids(
            Utterance(f"x{b}", "x.wav", 1.0, batch["langs"][b], task, "t", "t", "en")
            if task == "st"
            else Utterance(f"x{b}", "x.wav", 1.0, batch["langs"][b], task, "t")
        )
        assert int(lens[b]) == len(prompt)
    utt = decoder_mask(batch["labels"], "utterance")
    tok = decoder_mask(batch["labels"], "token")
    for b in range(3):
        n = int(lens[b])
        assert utt[b, :n].all() and not utt[b, n:].any()
        valid = n + int((batch["labels"][b] != -100).sum()) - 1  # prompt + targets but the last
        assert tok[b, :valid].all() and not tok[b, valid:].any()
    enc = encoder_valid_mask(torch.tensor([50, 91, 70]), 92)
    assert enc.shape == (3, 46) and enc.sum(1).tolist() == [25, 46, 35]


def test_mgrf_save_load_round_trip_and_bypass(tmp_path):
    handle, adapter, mgrf = molora()
    batch, _ = batch_of(handle)
    route_batch(adapter, batch)
    want = logits(handle.model, batch)
    with adapter.disabled():  # experts and MGRF off: exactly the base model
        off = logits(handle.model, batch)
    base = logits(tiny_random_whisper(seed=0).model, batch)
    assert torch.equal(off, base)
    # MGRF does act: the same experts without it give other outputs
    handle2, adapter2, _ = molora(mgrf=False)
    route_batch(adapter2, batch)
    assert (logits(handle2.model, batch) - want).abs().max() > 1e-3

    save_molora(adapter, tmp_path / "set", mgrf)
    assert has_mgrf(tmp_path / "set") and not has_mgrf(tmp_path)
    fresh = tiny_random_whisper(seed=0)
    loaded = load_molora(fresh, tmp_path / "set")
    assert mgrf_of(fresh.model) is not None and mgrf_of(fresh.model).config == mgrf.config
    route_batch(loaded, batch)
    assert (logits(fresh.model, batch) - want).abs().max() < 1e-5
    via_cli = tiny_random_whisper(seed=0)  # the decode CLI's --experts entry point
    adapter3 = load_expert_set(via_cli, tmp_path / "set")
    route_batch(adapter3, batch)
    assert (logits(via_cli.model, batch) - want).abs().max() < 1e-5


def test_broken_mgrf_files_are_clear_errors(tmp_path):
    handle, adapter, mgrf = molora()
    save_molora(adapter, tmp_path / "set", mgrf)
    (tmp_path / "set" / MGRF_WEIGHTS).unlink()
    with pytest.raises(ModelLoadError, match="needs both"):
        load_molora(tiny_random_whisper(seed=0), tmp_path / "set")
    save_molora(adapter, tmp_path / "set", mgrf)
    (tmp_path / "set" / MGRF_CONFIG).write_text('{"config": {"pooling": "max"}}')
    with pytest.raises(ModelLoadError, match="not a valid MGRF config"):
        load_molora(tiny_random_whisper(seed=0), tmp_path / "set")
    save_molora(adapter, tmp_path / "set", mgrf)
    (tmp_path / "set" / MGRF_WEIGHTS).write_bytes(b"not safetensors")
    model = tiny_random_whisper(seed=0)
    with pytest.raises(ModelLoadError, match="does not fit MGRF"):
        load_molora(model, tmp_path / "set")
    assert mgrf_of(model.model) is None  # the model is given back as it was
    assert not any(isinstance(m, ExpertLoRALinear) for m in model.model.modules())
    save_molora(adapter, tmp_path / "set", mgrf)
    with pytest.raises(ModelLoadError, match="d_model"):
        load_molora(tiny_random_whisper(seed=0, d_model=32), tmp_path / "set")
    with pytest.raises(ModelLoadError, match="not found"):
        load_molora(tiny_random_whisper(seed=0), tmp_path / "missing")


def test_mgrf_attaches_once():
    handle, adapter, _ = molora()
    with pytest.raises(Exception, match="already has MGRF"):
        attach_mgrf(handle.model, adapter, MGRFConfig())


@pytest.mark.parametrize("router", ["learned", "hybrid"])
def test_training_routing_equals_cached_decoding(router):
    """Utterance routing: the teacher-forced forward (decoder pooled over the prompt only) gives
    the logits that incremental decoding with cached per-utterance decisions gives."""
    handle, adapter, _ = molora(router=router, routing_level="utterance", top_k=1)
    model = handle.model
    batch, _ = batch_of(handle, tasks=("st", "st", "st"))  # one prompt length for the batch
    route_batch(adapter, batch)
    full = logits(model, batch)
    n_prompt = int(prompt_lengths(batch["labels"])[0])
    ids = batch["decoder_input_ids"]
    feats = batch["input_features"]
    masks = {"encoder": encoder_valid_mask(batch["feature_lens"], feats.shape[-1])}
    adapter.set_routing(langs=batch["langs"], masks=masks, decoding=True)
    with torch.no_grad():
        enc = model.get_encoder()(feats)
        out = model(encoder_outputs=enc, decoder_input_ids=ids[:, :n_prompt], use_cache=True)
        steps = [out.logits[:, -1]]
        past = out.past_key_values
        for t in range(n_prompt, ids.shape[1]):
            out = model(
                encoder_outputs=enc,
                decoder_input_ids=ids[:, t : t + 1],
                past_key_values=past,
                use_cache=True,
            )
            past = out.past_key_values
            steps.append(out.logits[:, -1])
    inc = torch.stack(steps, dim=1)  # logits at positions n_prompt-1 ..
    valid = batch["labels"][:, n_prompt - 1 :] != -100
    diff = (inc - full[:, n_prompt - 1 :]).abs().amax(-1)[valid]
    assert diff.max() < 1e-4


def test_decode_a_loaded_set_with_mgrf(tmp_path):
    handle, adapter, mgrf = molora(router="learned", routing_level="utterance", top_k=1)
    save_molora(adapter, tmp_path / "set", mgrf)
    reqs = []
    for i, lang in enumerate(("de", "fr", "de")):
        wave = 0.2 * np.random.default_rng(i).standard_normal(int(16000 * (0.5 + 0.3 * i)))
        sf.write(str(tmp_path / f"{i}.wav"), wave.astype(np.float32), 16000)
        reqs.append(Request(f"u{i}", str(tmp_path / f"{i}.wav"), lang=lang))
    opts = RunnerOptions(show_progress=False, min_input_seconds=0.0)
    dec = DecodeOptions(max_new_tokens=5, beam_size=2)
    a = decode_requests(handle, reqs, dec, opts, before_batch=adapter_batch_hook(adapter))
    fresh = tiny_random_whisper(seed=0)
    loaded = load_molora(fresh, tmp_path / "set")
    b = decode_requests(fresh, reqs, dec, opts, before_batch=adapter_batch_hook(loaded))
    assert [r.error for r in a] == [None] * 3
    assert [r.hypothesis for r in a] == [r.hypothesis for r in b]
