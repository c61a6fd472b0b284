"""Speech-LLM: training, KV-cache decoding, the Whisper decoder as an LM, prompts, limits."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
from reference.speech_llm_beam import speech_llm_beam
from reference.speech_llm_greedy import greedy_full_recompute, row_nll
from transformers import LlamaConfig, LlamaForCausalLM

from babelora.data.prompts import llm_prompt
from babelora.decode.search import returned_cache
from babelora.errors import ConfigError, ModelLoadError
from babelora.methods.speech_llm.losses import ProjectorLossConfig
from babelora.methods.speech_llm.model import SpeechLLM, SpeechLLMConfig
from babelora.methods.speech_llm.moe_projector import MoEProjectorConfig
from babelora.methods.speech_llm.projector import ProjectorConfig
from babelora.methods.speech_llm.whisper_lm import WhisperDecoderLM, whisper_decoder_lm
from babelora.models.whisper import tiny_random_whisper

MOE = ProjectorConfig(kind="moe", downsample=4, moe=MoEProjectorConfig(group_langs=("de", "en")))


@pytest.fixture(scope="module")
def whisper():
    return tiny_random_whisper(seed=0)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=51865,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=50256,
        bos_token_id=50256,
        tie_word_embeddings=True,  # half the (51865-word) vocabulary cost
    )
    return LlamaForCausalLM(cfg).eval()


def speech_llm(whisper, lm: str = "llama", **cfg_kw) -> SpeechLLM:
    cfg = SpeechLLMConfig(**{"projector": ProjectorConfig(downsample=4), **cfg_kw})
    model = tiny_llama() if lm == "llama" else whisper_decoder_lm(whisper.model)
    torch.manual_seed(1)
    encoder = copy.deepcopy(whisper.model.get_encoder())  # the fixture stays untouched
    return SpeechLLM(encoder, model, whisper.tokenizer, cfg).eval()


def make_batch(model, lengths=(120, 120), seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(80, n, generator=g) for n in lengths]
    meta = dict(
        tasks=["asr", "st", "asr"][: len(lengths)],
        langs=["de", "de", "en"][: len(lengths)],
        target_langs=[None, "en", None][: len(lengths)],
        targets=["hallo welt", "hello world, again", "yes"][: len(lengths)],
    )
    meta.update(kw)
    return model.make_batch(feats, **meta)


def train(model, batch, steps=8, lr=3e-3) -> list[float]:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        out = model(batch)
        loss, _ = model.total_loss(out, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    model.eval()
    return losses


@pytest.mark.parametrize("lm, projector", [("llama", None), ("llama", MOE), ("whisper", MOE)])
def test_trains_then_kv_cache_decoding_equals_full_recompute(whisper, lm, projector):
    kw = {"projector": projector} if projector else {}
    model = speech_llm(whisper, lm, freeze_lm=False, **kw)
    batch = make_batch(model)
    losses = train(model, batch, steps=6, lr=5e-3)
    assert losses[-1] < losses[0] - 1.0, losses
    for eos in (model.eos_id, -1):  # -1: no token ends the output, so all 6 steps are compared
        model.eos_id = eos
        cached = model.generate(batch, max_new_tokens=6)
        assert cached == greedy_full_recompute(model, batch, 6)  # no padding/cache, one by one
    assert [len(ids) for ids in cached] == [6, 6]


def random_head(model: SpeechLLM, eos_bias: float, seed: int = 3) -> SpeechLLM:
    """Give the LM a random untied output layer with a bias towards <eos>: a tiny random LM with
    tied embeddings repeats its input token, so beams never compete; with this one they do, and
    rows and beams end at different steps."""
    name = "lm_head" if hasattr(model.lm, "lm_head") else "proj_out"
    old = getattr(model.lm, name)
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g))
        head.bias.zero_()
        head.bias[model.eos_id] = eos_bias
    setattr(model.lm, name, head)
    return model


@pytest.fixture(scope="module")
def beam_models(whisper):
    """Speech-LLMs (Llama and Whisper-decoder LM) whose beams compete, and three utterances of
    different lengths and prompts (left padding)."""
    models = {}
    for lm, bias in (("llama", 13.5), ("whisper", 22.0)):
        model = random_head(speech_llm(whisper, lm), bias)
        models[lm] = (model, make_batch(model, lengths=(80, 120, 100)))
    return models


@pytest.mark.parametrize("lm, beams", [("llama", 2), ("llama", 3), ("whisper", 2), ("whisper", 3)])
def test_beam_search_equals_full_recompute_reference(beam_models, lm, beams):
    model, batch = beam_models[lm]
    out = model.generate(batch, max_new_tokens=10, num_beams=beams)
    assert out == speech_llm_beam(model, batch, 10, beams)  # one by one, no padding or cache
    assert len({len(ids) for ids in out}) > 1, "utterances should end at different steps"
    assert out != model.generate(batch, max_new_tokens=10), "beams should change something"
    assert model.transcribe(batch, max_new_tokens=10, num_beams=beams) == [
        model.decode_text(ids) for ids in out
    ]


@pytest.mark.parametrize("lm, length_penalty", [("llama", 0.0), ("whisper", 1.0)])
def test_beam_length_penalty_follows_the_shared_rule(beam_models, lm, length_penalty):
    model, batch = beam_models[lm]
    gnmt = copy.copy(model)  # shares the weights; only the config differs
    gnmt.cfg = dataclasses.replace(model.cfg, length_penalty=length_penalty)
    out = gnmt.generate(batch, max_new_tokens=10, num_beams=3)
    assert out == speech_llm_beam(gnmt, batch, 10, 3)
    assert out != model.generate(batch, max_new_tokens=10, num_beams=3), "penalty should matter"


def test_generate_needs_a_new_token(beam_models):
    model, batch = beam_models["llama"]
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        model.generate(batch, max_new_tokens=0)


def test_decoding_raises_no_deprecation_warning(beam_models):
    """transformers deprecates `past_key_values` (a FutureWarning on every forward)."""
    for model, batch in beam_models.values():
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            model.generate(batch, max_new_tokens=3)
            model.generate(batch, max_new_tokens=3, num_beams=2)


def test_loss_is_target_token_ce_and_batch_equals_rows(whisper):
    model = speech_llm(whisper, "whisper")
    batch = make_batch(model)  # same audio length, different prompts and targets (padding)
    with torch.no_grad():
        out = model(batch)
        rows = [row_nll(model, batch, b) for b in range(2)]
    assert out.num_tokens == sum(len(t) for t in batch.target_ids)
    assert out.num_tokens == sum(n for _, n in rows)
    expected = sum(nll for nll, _ in rows) / out.num_tokens
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)


def test_prompt_comes_from_llm_prompt_and_target_ends_with_eos(whisper):
    model = speech_llm(whisper, "llama")
    ids = model.prompt_ids("st", "de", "en")
    assert model.tokenizer.decode(ids) == llm_prompt("st", "de", "en")
    target = model.target_ids("Hallo Welt")
    assert target[-1] == model.eos_id and model.decode_text(target) == "Hallo Welt"
    wmodel = speech_llm(whisper, "whisper")  # Whisper LM: Whisper's start tokens follow
    assert wmodel.whisper_prefix == "english"
    assert wmodel.tokenizer.decode(wmodel.prompt_ids("asr", "de")) == (
        llm_prompt("asr", "de") + "<|startoftranscript|><|notimestamps|>"
    )


def test_only_projector_trains_by_default(whisper):
    model = speech_llm(whisper, "llama", projector=MOE)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, make_batch(model), steps=1)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("projector.") for n in changed)
    assert not model.encoder.training


def test_whisper_lm_matches_decoder_when_cross_attention_adds_nothing(whisper):
    """With its cross-attention output projection zeroed, the encoder-decoder's decoder ignores
    the encoder, so it must equal the decoder-only LM for any encoder states. Zero *encoder
    states* would not do: the value/output biases still add a constant vector."""
    lm = whisper_decoder_lm(whisper.model).eval()
    ids = torch.tensor([[50257, 50362, 400, 1000, 2000, 3000]])
    ref_model = tiny_random_whisper(seed=0).model
    with torch.no_grad():
        for layer in ref_model.model.decoder.layers:  # pretrained biases are not zero
            layer.encoder_attn.v_proj.bias.normal_()
            layer.encoder_attn.out_proj.bias.normal_()
        zeros = ref_model.model.encoder.embed_positions.weight.new_zeros(1, 10, 64)
        plain = ref_model(encoder_outputs=(zeros,), decoder_input_ids=ids).logits
        assert not torch.allclose(plain, lm(input_ids=ids).logits, atol=1e-4)
        for layer in ref_model.model.decoder.layers:
            layer.encoder_attn.out_proj.weight.zero_()
            layer.encoder_attn.out_proj.bias.zero_()
        for enc in (zeros, torch.randn(1, 10, 64)):
            ref = ref_model(encoder_outputs=(enc,), decoder_input_ids=ids).logits
            torch.testing.assert_close(lm(input_ids=ids).logits, ref, atol=1e-5, rtol=0)
        embeds = lm.get_input_embeddings()(ids)
        torch.testing.assert_close(lm(inputs_embeds=embeds).logits, ref, atol=1e-5, rtol=0)
        first = lm(input_ids=ids[:, :4], use_cache=True)  # KV cache continues exactly
        step = lm(input_ids=ids[:, 4:], cache=returned_cache(first))
        torch.testing.assert_close(step.logits, ref[:, 4:], atol=1e-5, rtol=0)
    assert not any("encoder_attn" in n for n, _ in lm.named_parameters())
    assert lm.proj_out.weight is lm.model.decoder.embed_tokens.weight


def test_whisper_lm_position_limit(whisper):
    lm = whisper_decoder_lm(whisper.model)
    with pytest.raises(ConfigError, match="449 positions .* has 448"):
        lm(input_ids=torch.zeros(1, 449, dtype=torch.long))
    with pytest.raises(ValueError, match="no cross-attention"):
        lm(input_ids=torch.zeros(1, 3, dtype=torch.long), encoder_outputs=torch.zeros(1, 2, 64))


def test_too_long_input_raises_clear_error(whisper):
    model = speech_llm(whisper, "whisper", projector=ProjectorConfig(downsample=2))
    # 3000 mel frames -> 1500 encoder frames -> 750 LM positions > 448
    batch = make_batch(model, lengths=(3000,), ids=["utt-long"])
    with pytest.raises(ConfigError, match=r"utt-long: speech prefix 750 .* projector.downsample"):
        model(batch)
    with pytest.raises(ConfigError, match="utt-long"):
        model.generate(batch)
    ok = speech_llm(whisper, "whisper", projector=ProjectorConfig(downsample=4))
    batch = make_batch(ok, lengths=(3000,))  # 375 + prompt fits: generation stops at the limit
    out = ok.generate(batch, max_new_tokens=500)
    prefix = 375 + len(batch.prompt_ids[0])
    assert len(out[0]) <= 448 - prefix


def test_transition_reference_router_across_stages(whisper):
    losses = ProjectorLossConfig(transition_weight=1.0)
    stage1 = speech_llm(whisper, "llama", projector=MOE)
    train(stage1, make_batch(stage1), steps=3)
    stage2 = speech_llm(whisper, "llama", projector=MOE, losses=losses)
    stage2.load_previous_stage(stage1.state_dict())
    moe = stage2.projector.moe
    torch.testing.assert_close(moe.reference_router.weight, stage1.projector.moe.router.weight)
    batch = make_batch(stage2, replay=[True, False])
    with torch.no_grad():
        out = stage2(batch)
    assert float(out.aux_losses["transition"]) == pytest.approx(0.0, abs=1e-6)
    train(stage2, batch, steps=3, lr=3e-2)
    with torch.no_grad():
        out = stage2(batch)
    assert float(out.aux_losses["transition"]) > 0
    _, logs = stage2.total_loss(out, step=250)
    assert logs["transition_weight"] == pytest.approx(0.5)  # linear anneal over 500 steps
    with pytest.raises(ModelLoadError, match="do not fit"):
        stage2.load_previous_stage({"nope.weight": torch.zeros(1)})


def test_frame_labels_in_batch(whisper):
    model = speech_llm(whisper, "llama", projector=MOE)
    segs = [
        None,
        [{"start": 0.0, "end": 0.5, "lang": "en"}, {"start": 0.5, "end": 9, "lang": "de"}],
    ]
    batch = make_batch(model, lengths=(80, 200), segments=segs)
    # 200 mel frames -> 100 encoder frames -> 25 projector frames of 80 ms
    assert batch.frame_labels.shape == (2, 25)
    assert batch.frame_labels[0].tolist() == [0] * 10 + [-100] * 15
    assert batch.frame_labels[1].tolist() == [1] * 6 + [0] * 19
    assert isinstance(speech_llm(whisper, "whisper").lm, WhisperDecoderLM)


def test_lora_injects_into_the_exposed_lm(whisper):
    from babelora.adapters.config import LoRAConfig
    from babelora.adapters.inject import inject

    model = speech_llm(whisper, "llama")
    batch = make_batch(model)
    with torch.no_grad():
        before = float(model(batch).loss)
    handle = inject(model.lm, LoRAConfig(rank=4, targets=("causal-lm-attn",)))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    in_lm = [n.removeprefix("lm.") for n in trainable if n.startswith("lm.")]
    assert in_lm and all(any(n.startswith(f"{k}.") for k in handle.layers) for n in in_lm)
    assert all(n.startswith(("lm.", "projector.")) for n in trainable)
    with torch.no_grad():  # LoRA starts at B = 0: the same model
        assert float(model(batch).loss) == pytest.approx(before, abs=1e-5)
    train(model, batch, steps=1)
