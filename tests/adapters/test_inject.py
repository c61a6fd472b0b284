"""inject(): targets, streams, freezing, the handle, saved expert sets, KV-cached decoding."""

from __future__ import annotations

import copy

import pytest
import torch
from reference.tiny_models import MLP, make_whisper, randomize_experts, whisper_batch

from babelora.adapters.config import LoRAConfig, MoLoRAConfig
from babelora.adapters.inject import default_stream, find_targets, inject
from babelora.adapters.peft_io import load_adapter_set, save_adapter_set
from babelora.errors import ConfigError, ModelLoadError

LANGS = ("de", "fr", "es")


def molora(**kw) -> MoLoRAConfig:
    kw.setdefault("lora", LoRAConfig(rank=2, alpha=4.0))
    return MoLoRAConfig(**kw)


def sharpen_routers(handle, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in handle.layers.values():
            for p in layer.router.parameters():
                p.copy_(torch.randn(p.shape, generator=g))


def test_inject_freezes_base_and_counts_parameters():
    model = make_whisper()
    handle = inject(model, molora(languages=LANGS, num_shared=1, router="learned", top_k=2))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or ".router." in n for n in trainable)
    per_layer = 4 * 2 * (64 + 64)  # 4 experts, rank 2, square 64x64 projections
    assert handle.layers["model.encoder.layers.0.self_attn.q_proj"].lora_A.numel() == 4 * 2 * 64
    assert handle.num_trainable() == sum(
        p.numel() for n, p in model.named_parameters() if p.requires_grad
    )
    assert per_layer > 0


def test_streams_follow_what_each_layer_reads():
    assert default_stream("model.encoder.layers.0.fc1") == "encoder"
    assert default_stream("model.decoder.layers.1.encoder_attn.k_proj") == "encoder"
    assert default_stream("model.decoder.layers.1.encoder_attn.v_proj") == "encoder"
    assert default_stream("model.decoder.layers.1.encoder_attn.q_proj") == "decoder"
    assert default_stream("model.decoder.layers.1.self_attn.k_proj") == "decoder"
    assert default_stream("llm.model.layers.0.self_attn.q_proj") == "default"


def test_target_errors_are_clear():
    model = make_whisper()
    with pytest.raises(ConfigError, match="match no linear layer"):
        find_targets(model, ["nothing_here"])
    with pytest.raises(ConfigError, match="not nn.Linear"):
        find_targets(model, [r"model\.encoder\.conv1"])
    with pytest.raises(ConfigError, match="not a preset or valid regex"):
        find_targets(model, ["q_proj("])
    inject(model, LoRAConfig(targets=("fc1",)))
    with pytest.raises(ConfigError, match="already has expert adapters"):
        inject(model, LoRAConfig(targets=("fc1",)))


def test_exclude_and_regex_targets():
    model = make_whisper()
    names = find_targets(model, ["whisper-all"], exclude=[r".*encoder\.layers\.0\..*"])
    assert len(names) == 26
    regex = find_targets(model, [r"model\.decoder\.layers\.\d+\.fc\d"])
    assert regex == [
        "model.decoder.layers.0.fc1",
        "model.decoder.layers.0.fc2",
        "model.decoder.layers.1.fc1",
        "model.decoder.layers.1.fc2",
    ]


def test_causal_lm_preset_and_training_step():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(cfg)
    handle = inject(
        model,
        molora(
            lora=LoRAConfig(rank=2, targets=("causal-lm-all",)),
            num_experts=4,
            router="learned",
            top_k=2,
        ),
    )
    assert len(handle.layers) == 14  # 7 projections x 2 layers
    model.train()
    ids = torch.randint(0, 50, (2, 7))
    out = model(input_ids=ids, labels=ids)
    loss = out.loss + handle.aux_loss()
    loss.backward()
    grads = [p.grad for p in handle.trainable_parameters()]
    assert all(g is not None for g in grads)
    assert all(
        p.grad is None
        for n, p in model.named_parameters()
        if "lora_" not in n and "router" not in n
    )


def test_adapter_set_roundtrip(tmp_path):
    base = make_whisper()
    batch = whisper_batch()
    model = copy.deepcopy(base)
    cfg = molora(
        languages=LANGS, num_shared=1, router="hybrid", routing_level="utterance", learn_prior=True
    )
    handle = inject(model, cfg)
    randomize_experts(handle, scale=0.2)
    sharpen_routers(handle)
    save_adapter_set(handle, tmp_path / "set")
    other = load_adapter_set(copy.deepcopy(base), tmp_path / "set")
    assert other.config == cfg
    feats, ids = batch
    with (
        torch.no_grad(),
        handle.routing(langs=["de", "es", "fr"]),
        other.routing(langs=["de", "es", "fr"]),
    ):
        a = model(input_features=feats, decoder_input_ids=ids).logits
        b = other.model(input_features=feats, decoder_input_ids=ids).logits
    assert torch.equal(a, b)
    with pytest.raises(ModelLoadError, match="not a saved expert set"):
        load_adapter_set(copy.deepcopy(base), tmp_path / "nope")
    with pytest.raises(ConfigError, match="adapter state mismatch"):
        handle.load_adapter_state_dict({})


@pytest.mark.parametrize("level", ["utterance", "token"])
def test_kv_cached_decoding_equals_full_forward(level):
    """Per-utterance decisions are computed on the prompt, cached, and reused step by step;
    a full (teacher-forced) forward with the decoder mask on the prompt gives the same logits."""
    model = make_whisper()
    handle = inject(
        model,
        molora(
            languages=LANGS,
            num_shared=1,
            router="hybrid",
            top_k=2,
            routing_level=level,
            prior_strength=1.0,
        ),
    )
    randomize_experts(handle, scale=0.3)
    sharpen_routers(handle)
    feats, ids = whisper_batch(rows=3, tokens=7)
    P = 3  # prompt length
    langs = ["fr", "de", "es"]
    prompt_mask = torch.zeros(3, 7, dtype=torch.bool)
    prompt_mask[:, :P] = True
    with torch.no_grad(), handle.routing(langs=langs, masks={"decoder": prompt_mask}):
        full = model(input_features=feats, decoder_input_ids=ids).logits
    with torch.no_grad(), handle.routing(langs=langs, decoding=True):
        enc = model.model.encoder(input_features=feats)
        out = model(encoder_outputs=enc, decoder_input_ids=ids[:, :P], use_cache=True)
        steps, past = [out.logits], out.past_key_values
        for t in range(P, 7):
            out = model(
                encoder_outputs=enc,
                decoder_input_ids=ids[:, t : t + 1],
                past_key_values=past,
                use_cache=True,
            )
            steps.append(out.logits)
            past = out.past_key_values
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-4
    assert handle.aux_losses() == {}  # nothing collected while decoding (eval mode too)


def test_lora_config_on_mlp_and_unload():
    torch.manual_seed(0)
    base = MLP()
    model = copy.deepcopy(base)
    handle = inject(model, LoRAConfig(rank=3, targets=("lin0", "head")))
    randomize_experts(handle)
    x = torch.randn(4, 12)
    with torch.no_grad():
        before = model(x)
        plain = handle.unload()
        assert type(plain.lin0) is torch.nn.Linear
        # merged weights round differently from the factored path (values here are O(10))
        assert (plain(x) - before).abs().max() <= 1e-4
