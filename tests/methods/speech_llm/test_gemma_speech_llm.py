"""Speech-LLM on a (tiny random) Gemma 3: loss at target positions only, beam search, MoLoRA in
the LLM against the per-row loop reference, routing keys (En->X by target), MGRF feeding the LLM,
and clear errors. The real Gemma 3 270M is used only by the `slow` test at the end."""

from __future__ import annotations

import copy

import pytest
import torch
from reference.expert_loop import reference_layer
from reference.speech_llm_beam import speech_llm_beam
from reference.speech_llm_greedy import row_nll
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from babelora.adapters import MoLoRAConfig
from babelora.adapters.config import LoRAConfig
from babelora.adapters.mgrf import MGRFConfig
from babelora.errors import ConfigError, ModelLoadError
from babelora.methods.speech_llm.model import SpeechLLM, SpeechLLMConfig
from babelora.methods.speech_llm.projector import ProjectorConfig
from babelora.methods.speech_llm.recipe import attach_lm_experts
from babelora.methods.speech_llm.routing import route_key, route_keys
from babelora.models.whisper import tiny_random_whisper

EOS = 50256  # the Whisper tokenizer's <|endoftext|>, used as the tiny Gemma's eos


@pytest.fixture(scope="module")
def whisper():
    return tiny_random_whisper(seed=0)


def tiny_gemma(seed: int = 0, hidden: int = 64, softcap: float | None = None):
    """A random Gemma 3 (2 layers, one with a 6-token sliding window) over Whisper's vocabulary;
    `softcap`: final-logit soft-capping (the real 270M has none; the sliced loss must apply it,
    and 0.05 is tight enough to change the tiny model's logits)."""
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=51865,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=256,
        sliding_window=6,
        layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=softcap,
        eos_token_id=EOS,
        bos_token_id=EOS,
        pad_token_id=EOS,
        tie_word_embeddings=True,
    )
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    return model


def speech_llm(whisper, lm=None, **cfg_kw) -> SpeechLLM:
    cfg = SpeechLLMConfig(**{"projector": ProjectorConfig(downsample=4), **cfg_kw})
    torch.manual_seed(1)
    encoder = copy.deepcopy(whisper.model.get_encoder())
    return SpeechLLM(encoder, lm or tiny_gemma(), whisper.tokenizer, cfg).eval()


def make_batch(model, lengths=(120, 90, 100), seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(80, n, generator=g) for n in lengths]
    meta = dict(
        tasks=["asr", "st", "st"],
        langs=["de", "de", "en"],
        target_langs=[None, "en", "fr"],
        targets=["hallo welt", "hello world, again", "bonjour"],
    )
    meta = {k: v[: len(lengths)] for k, v in {**meta, **kw}.items()}
    return model.make_batch(feats, **meta)


def randomize_experts(handle, seed=5):
    """Non-zero experts, and router weights large enough that the routed gates depend on the
    input (so a router that pools the wrong positions changes the output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in handle.layers.values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.05)
            weight = getattr(layer.router, "weight", None)
            if isinstance(weight, torch.nn.Parameter):
                weight.copy_(torch.randn(weight.shape, generator=g) * 0.5)


# ---- the loss at target positions only ---------------------------------------------------------
@pytest.mark.parametrize("softcap", [None, 0.05])
def test_sliced_target_logits_equal_the_full_lm_row_by_row(whisper, softcap):
    model = speech_llm(whisper, tiny_gemma(softcap=softcap))
    assert model._sliced  # the hidden states are sliced before the output layer
    batch = make_batch(model)
    with torch.no_grad():
        out = model(batch)
    rows = [row_nll(model, batch, b) for b in range(3)]  # full LM logits, one row, no padding
    assert out.num_tokens == sum(n for _, n in rows) == out.logits.shape[0]
    assert out.logits.shape[1] == 51865
    expected = sum(nll for nll, _ in rows) / out.num_tokens
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)


def test_gemma_speech_llm_trains(whisper):
    model = speech_llm(whisper, freeze_lm=False)
    batch = make_batch(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    losses = []
    for _ in range(5):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss))
    assert losses[-1] < losses[0] - 1.0, losses


# ---- beam search ----------------------------------------------------------------------------
def eos_head(model: SpeechLLM, bias: float = 3.25, seed: int = 5) -> SpeechLLM:
    """An untied random output layer biased to <eos>, so beams compete and end at different
    steps (a tiny random LM with tied embeddings repeats its input)."""
    old = model.lm.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.1)
        head.bias.zero_()
        head.bias[model.eos_id] = bias
    model.lm.lm_head = head
    model.lm.config.final_logit_softcapping = None
    return model


@pytest.fixture(scope="module")
def beam_model(whisper):
    model = eos_head(speech_llm(whisper, tiny_gemma(softcap=None)))
    return model, make_batch(model, lengths=(80, 120, 100))


@pytest.mark.parametrize("beams", [1, 2, 3, 4])
def test_every_beam_width_equals_the_naive_reference(beam_model, beams):
    model, batch = beam_model
    out = model.generate(batch, max_new_tokens=8, num_beams=beams)
    assert out == speech_llm_beam(model, batch, 8, beams)  # one row, no padding, no cache
    assert len({len(ids) for ids in out}) > 1, "rows should end at different steps"


# ---- routing keys -----------------------------------------------------------------------------
def test_routing_keys():
    rows = [("asr", "de", None), ("st", "de", "en"), ("st", "en", "fr"), ("asr", "en", None)]
    assert [route_key("source", *r) for r in rows] == ["de", "de", "en", "en"]
    assert [route_key("target", *r) for r in rows] == ["de", "en", "fr", "en"]
    assert [route_key("pair", *r) for r in rows] == ["de>de", "de>en", "en>fr", "en>en"]
    assert [route_key("auto", *r) for r in rows] == ["de", "de", "fr", "en"]
    assert route_keys("target", rows) == ["de", "en", "fr"]


# ---- MoLoRA in the LLM ------------------------------------------------------------------------
EN_X = dict(  # MuST-C style: English speech into two target languages
    tasks=["st", "st", "st"],
    langs=["en", "en", "en"],
    target_langs=["de", "fr", "de"],
    targets=["guten tag", "bonjour", "hallo"],
)


def molora_model(
    whisper, router="language", key="target", level="token", langs=("de", "fr"), top_k=None
):
    model = speech_llm(whisper, routing_key=key)
    cfg = MoLoRAConfig(
        lora=LoRAConfig(rank=4, alpha=8.0, targets=("causal-lm-all",)),
        languages=langs,
        num_shared=1,
        router=router,
        routing_level=level,
        top_k=top_k or len(langs),  # default dense: the gates (not only the argmax) matter
        prior_strength=1.0,
    )
    handle = attach_lm_experts(model, cfg)
    randomize_experts(handle)
    return model, handle


def loop_reference_logits(model, handle, batch, b: int) -> torch.Tensor:
    """Row b alone, every expert layer computed by the per-row loop reference
    (tests/reference/expert_loop.py) with that row's expert group."""
    key = batch.route_keys[b]
    lang_ids = torch.tensor([handle.context.lang_index(key)])
    embed = model.lm.get_input_embeddings()
    proj = model.speech_prefix(batch.features[b : b + 1], batch.feature_lengths[b : b + 1])
    speech = proj.embeds[0, : int(proj.mask[0].sum())]
    prompt, target = batch.prompt_ids[b], batch.target_ids[b]
    seq = torch.cat([speech, embed(torch.tensor(prompt)), embed(torch.tensor(target[:-1]))])
    prefix = len(speech) + len(prompt)
    originals = {}

    def loop_forward(layer):
        def forward(x):
            mask = torch.zeros(1, x.shape[1], dtype=torch.bool)
            mask[:, :prefix] = True  # utterance routers pool speech + prompt
            return reference_layer(layer, x, lang_ids=lang_ids, mask=mask).to(x.dtype)

        return forward

    for layer in handle.layers.values():
        originals[layer] = layer.forward
        layer.forward = loop_forward(layer)
    try:
        logits = model.lm(inputs_embeds=seq.unsqueeze(0), use_cache=False).logits[0]
    finally:
        for layer, fwd in originals.items():
            layer.forward = fwd
    return logits[-len(target) :]


@pytest.mark.parametrize(
    "router, level", [("language", "token"), ("hybrid", "token"), ("hybrid", "utterance")]
)
def test_molora_in_the_llm_equals_the_per_row_loop_reference(whisper, router, level):
    model, handle = molora_model(whisper, router=router, level=level)
    batch = make_batch(model, **EN_X)
    assert batch.route_keys == ["de", "fr", "de"]  # En->X rows route by their target language
    with torch.no_grad():
        out = model(batch)
        assert handle.context.lang_ids.tolist() == [0, 1, 0]
        refs = [loop_reference_logits(model, handle, batch, b) for b in range(3)]
    torch.testing.assert_close(out.logits, torch.cat(refs), atol=2e-4, rtol=1e-4)
    # and the experts matter: the loss changes when the rows swap their target languages
    with torch.no_grad():
        swapped = copy.copy(batch)
        swapped.route_keys = ["fr", "de", "fr"]
        assert not torch.allclose(model(swapped).logits, out.logits, atol=1e-3)


def test_source_routing_sends_en_to_x_rows_to_one_expert_or_refuses(whisper):
    model, _ = molora_model(whisper, key="source", langs=("de", "fr"))
    batch = make_batch(model, **EN_X)
    assert batch.route_keys == ["en", "en", "en"]
    with pytest.raises(ConfigError, match="routing key 'en'.*no experts.*unknown_route"):
        model(batch)


def test_pair_routing_uses_direction_experts(whisper):
    model, handle = molora_model(whisper, key="pair", langs=("en>de", "en>fr"))
    batch = make_batch(model, **EN_X)
    assert batch.route_keys == ["en>de", "en>fr", "en>de"]
    with torch.no_grad():
        model(batch)
    assert handle.context.lang_ids.tolist() == [0, 1, 0]


def test_molora_trains_experts_and_routers_only_and_returns_aux_losses(whisper):
    model, handle = molora_model(whisper, router="hybrid", top_k=1)  # sparse: load balance
    trainable = {n for n, p in model.lm.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or ".router." in n for n in trainable)
    model.train()
    out = model(make_batch(model, **EN_X))
    aux = handle.aux_losses()
    assert set(aux) == {"load_balance", "z_loss"}
    (out.loss + aux["load_balance"]).backward()
    layer = next(iter(handle.layers.values()))
    assert layer.lora_A.grad is not None and layer.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("beams", [1, 3])
def test_molora_beam_search_with_cached_routing_equals_the_naive_reference(whisper, beams):
    model, handle = molora_model(whisper, router="hybrid", level="utterance")
    eos_head(model)
    batch = make_batch(model, lengths=(80, 120, 100), **EN_X)
    out = model.generate(batch, max_new_tokens=6, num_beams=beams)
    expected = []
    for b in range(3):  # each row alone, its routing set, the full sequence re-run every step
        row = copy.copy(batch)  # row b, with the batch's padded features (as the encoder saw)
        for name in ("features", "feature_lengths", "prompt_ids", "target_ids", "route_keys"):
            setattr(row, name, getattr(batch, name)[b : b + 1])
        _route_on_prefix(model, handle, row)  # utterance router: the prefix decides
        expected += speech_llm_beam(model, row, 6, beams)
    handle.clear_routing()
    assert out == expected


def _route_on_prefix(model, handle, row):
    """Cache each layer's utterance decision on the row's speech + prompt, as decoding does."""
    embed = model.lm.get_input_embeddings()
    proj = model.speech_prefix(row.features, row.feature_lengths)
    speech = proj.embeds[0, : int(proj.mask[0].sum())]  # real frames only, as the reference
    seq = torch.cat([speech, embed(torch.tensor(row.prompt_ids[0]))]).unsqueeze(0)
    handle.context.set(langs=row.route_keys, decoding=True)
    with torch.no_grad():
        model.lm(inputs_embeds=seq, use_cache=False, logits_to_keep=1)


# ---- MGRF feeding the LLM -----------------------------------------------------------------------
@pytest.mark.parametrize("at", ["projector", "encoder"])
def test_mgrf_before_the_llm_shapes_identity_start_and_gradients(whisper, at):
    plain = speech_llm(whisper)
    model = speech_llm(whisper, mgrf=MGRFConfig(), mgrf_at=at)
    model.projector.load_state_dict(plain.projector.state_dict())
    model.lm = plain.lm
    width = 64 if at == "projector" else int(whisper.model.config.d_model)
    assert model.mgrf.proj.in_features == width
    batch = make_batch(model)
    with torch.no_grad():
        fused = model.speech_prefix(batch.features, batch.feature_lengths)
        base = plain.speech_prefix(batch.features, batch.feature_lengths)
    assert fused.embeds.shape == base.embeds.shape  # (B, T', 64)
    torch.testing.assert_close(fused.embeds, base.embeds)  # zero-initialised: identity
    assert (fused.embeds[~fused.mask] == 0).all()  # padding frames stay zero
    model.train()
    model(batch).loss.backward()
    grads = {n: p.grad for n, p in model.mgrf.named_parameters()}
    assert grads["proj.weight"] is not None and grads["proj.weight"].abs().sum() > 0
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    # after a step the sentence vector changes every real frame of the LLM input
    with torch.no_grad():
        model.mgrf.proj.weight.add_(torch.randn_like(model.mgrf.proj.weight) * 0.1)
        moved = model.speech_prefix(batch.features, batch.feature_lengths)
    assert not torch.allclose(moved.embeds[moved.mask], base.embeds[base.mask])
    assert (moved.embeds[~moved.mask] == 0).all()


# ---- errors ---------------------------------------------------------------------------------
def test_a_projector_saved_for_another_hidden_size_is_a_one_line_error(whisper):
    small = speech_llm(whisper, tiny_gemma(hidden=32))
    model = speech_llm(whisper)  # hidden 64
    state = {k: v for k, v in small.state_dict().items() if k.startswith("projector.")}
    with pytest.raises(ModelLoadError) as err:
        model.load_previous_stage(state, partial=True, source="runs/x/final")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("runs/x/final: tensor projector.")
    assert "hidden size 64" in msg


# ---- the real Gemma 3 270M ------------------------------------------------------------------
@pytest.mark.slow
def test_real_gemma_speech_llm_step_and_beam_decoding():
    from babelora.methods.speech_llm.model import build_speech_llm

    cfg = SpeechLLMConfig(lm="gemma3-270m", encoder="tiny.en", target_leading_space=False)
    model = build_speech_llm(cfg)
    assert model.projector_width == 640 and model.lm.config.vocab_size == 262144
    batch = make_batch(model, targets=["Hallo Welt", "Hello world", "Bonjour"])
    model.train()
    out = model(batch)
    out.loss.backward()
    assert out.logits.shape == (out.num_tokens, 262144)
    assert not any(p.grad is not None for p in model.lm.parameters())  # frozen
    model.eval()
    ids = model.generate(batch, max_new_tokens=4, num_beams=2)
    assert len(ids) == 3
