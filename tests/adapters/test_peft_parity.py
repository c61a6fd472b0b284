"""PEFT is the oracle: one expert = PEFT LoRA; mixed-language batches = PEFT per adapter;
exported folds load in plain PEFT with the same outputs; PEFT adapters load into expert slots."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from reference.tiny_models import MLP, make_whisper, randomize_experts, whisper_batch
from transformers.generation.utils import GenerationMixin

from babelora.adapters.config import LoRAConfig, MoLoRAConfig, language_experts
from babelora.adapters.inject import find_targets, inject
from babelora.adapters.peft_io import (
    export_peft,
    load_language_adapters,
    load_peft_expert,
    read_peft_adapter,
)
from babelora.errors import ConfigError, MergeError, ModelLoadError

TOL = 1e-5
LANGS = ("de", "fr", "es")
WHISPER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def logits(model, batch):
    feats, ids = batch
    with torch.no_grad():
        return model(input_features=feats, decoder_input_ids=ids).logits


def peft_adapter(base, path, seed, r=4, alpha=8.0, targets=WHISPER_TARGETS, rslora=False):
    """A random (non-zero B) PEFT adapter on a copy of `base`, saved to `path`."""
    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(targets),
        init_lora_weights=False,
        use_rslora=rslora,
    )
    model = get_peft_model(copy.deepcopy(base), cfg)
    model.save_pretrained(str(path))
    return model


def copy_into_peft(handle, peft_model, expert=0):
    """Put our expert `expert` into PEFT's default adapter (same modules)."""
    inner = peft_model.base_model.model
    with torch.no_grad():
        for name, layer in handle.layers.items():
            mod = inner.get_submodule(name)
            mod.lora_A["default"].weight.copy_(layer.lora_A[expert])
            mod.lora_B["default"].weight.copy_(layer.lora_B[expert])


@pytest.mark.parametrize("rslora", [False, True])
def test_one_expert_is_peft_lora_on_small_module(rslora):
    torch.manual_seed(0)
    base = MLP()
    ours = copy.deepcopy(base)
    handle = inject(
        ours, LoRAConfig(rank=4, alpha=6.0, targets=("lin0", "lin1"), use_rslora=rslora)
    )
    randomize_experts(handle)
    peft = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=4, lora_alpha=6.0, target_modules=["lin0", "lin1"], use_rslora=rslora),
    )
    copy_into_peft(handle, peft)
    x = torch.randn(5, 12)
    with torch.no_grad():
        assert (ours(x) - peft(x)).abs().max() <= TOL
        assert (ours(x) - base(x)).abs().max() > 1e-2


def test_one_expert_is_peft_lora_on_tiny_whisper(tmp_path):
    base = make_whisper()
    batch = whisper_batch()
    peft = peft_adapter(base, tmp_path / "p", seed=3, r=4, alpha=8.0)
    ours = copy.deepcopy(base)
    handle = inject(ours, LoRAConfig(rank=4, alpha=8.0, targets=("whisper-all",)))
    assert set(handle.layers) == {
        n.removeprefix("base_model.model.")
        for n, m in peft.named_modules()
        if hasattr(m, "lora_A") and n.startswith("base_model.model.")
    }
    report = load_peft_expert(handle, tmp_path / "p", expert=0, strict=True)
    assert len(report.loaded) == len(handle.layers) == 32
    diff = (logits(ours, batch) - logits(peft, batch)).abs().max()
    assert diff <= TOL
    assert (logits(ours, batch) - logits(base, batch)).abs().max() > 1e-3


def test_export_single_expert_loads_in_plain_peft(tmp_path):
    base = make_whisper()
    batch = whisper_batch()
    ours = copy.deepcopy(base)
    handle = inject(
        ours, LoRAConfig(rank=3, alpha=5.0, use_rslora=True, targets=("whisper-decoder",))
    )
    randomize_experts(handle, scale=0.3)
    export_peft(handle, tmp_path / "a", base_model_name_or_path="tiny-random")
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "a"))
    assert (logits(ours, batch) - logits(loaded, batch)).abs().max() <= TOL
    cfg = read_peft_adapter(tmp_path / "a").config
    assert cfg["r"] == 3 and cfg["lora_alpha"] == 5.0 and cfg["use_rslora"] is True


def _language_setup(tmp_path, num_shared=0):
    base = make_whisper()
    paths = {lang: tmp_path / lang for lang in LANGS}
    for seed, lang in enumerate(LANGS):
        peft_adapter(base, paths[lang], seed=10 + seed)
    ours = copy.deepcopy(base)
    cfg = language_experts(LoRAConfig(rank=4, alpha=8.0), LANGS)
    if num_shared:
        cfg = MoLoRAConfig(lora=cfg.lora, languages=LANGS, num_shared=num_shared)
    handle = inject(ours, cfg)
    load_language_adapters(handle, paths)
    return base, ours, handle, paths


def test_mixed_language_batch_equals_each_language_alone_and_peft(tmp_path):
    base, ours, handle, paths = _language_setup(tmp_path)
    feats, ids = whisper_batch(rows=4)
    langs = ["de", "es", "fr", "de"]
    with handle.routing(langs=langs):
        mixed = logits(ours, (feats, ids))
    for lang in LANGS:
        rows = [i for i, code in enumerate(langs) if code == lang]
        with handle.routing(langs=[lang] * len(rows)):
            alone = logits(ours, (feats[rows], ids[rows]))
        assert (mixed[rows] - alone).abs().max() <= TOL
        single = PeftModel.from_pretrained(copy.deepcopy(base), str(paths[lang]))
        assert (mixed[rows] - logits(single, (feats[rows], ids[rows]))).abs().max() <= TOL
    # PEFT's own mixed batch (one forward per adapter inside) agrees too, "__base__" included
    peft = PeftModel.from_pretrained(copy.deepcopy(base), str(paths["de"]), adapter_name="de")
    for lang in ("fr", "es"):
        peft.load_adapter(str(paths[lang]), adapter_name=lang)
    with torch.no_grad():
        ref = peft(
            input_features=feats,
            decoder_input_ids=ids,
            adapter_names=["de", "es", "fr", "__base__"],
        ).logits
    with handle.routing(langs=["de", "es", "fr", None]):
        ours_mixed = logits(ours, (feats, ids))
    assert (ours_mixed - ref).abs().max() <= TOL


def test_beam_search_generate_on_mixed_batch_equals_per_language(tmp_path):
    """generate() expands the decoder rows to beams after the encoder ran: routing follows."""
    base, ours, handle, paths = _language_setup(tmp_path)
    feats, ids = whisper_batch(rows=3)
    prompt = ids[:, :2]
    langs = ["fr", "de", "es"]
    kwargs = dict(num_beams=3, max_new_tokens=5, do_sample=False, early_stopping=False)
    with handle.routing(langs=langs, decoding=True):
        mixed = GenerationMixin.generate(
            ours, input_features=feats, decoder_input_ids=prompt, **kwargs
        )
    for row, lang in enumerate(langs):
        single = PeftModel.from_pretrained(copy.deepcopy(base), str(paths[lang])).get_base_model()
        ref = GenerationMixin.generate(
            single,
            input_features=feats[row : row + 1],
            decoder_input_ids=prompt[row : row + 1],
            **kwargs,
        )
        assert torch.equal(mixed[row], ref[0])


@pytest.mark.parametrize("num_shared", [0, 1])
def test_export_language_fold_loads_in_peft_and_folds_into_base(tmp_path, num_shared):
    base, ours, handle, _ = _language_setup(tmp_path, num_shared=num_shared)
    if num_shared:
        randomize_experts(handle, seed=5, scale=0.2)
    batch = whisper_batch()
    with handle.routing(langs=["fr"] * 3):
        routed = logits(ours, batch)
    out = export_peft(handle, tmp_path / "fold_fr", lang="fr")
    cfg = read_peft_adapter(out).config
    assert cfg["r"] == 4 * (1 + num_shared)
    folded = PeftModel.from_pretrained(copy.deepcopy(base), str(out))
    assert (logits(folded, batch) - routed).abs().max() <= TOL
    merged = folded.merge_and_unload()  # PEFT's own merge of our export
    assert (logits(merged, batch) - routed).abs().max() <= 1e-4
    plain = handle.unload(lang="fr")  # our fold into the base weights
    assert (logits(plain, batch) - routed).abs().max() <= 1e-4
    assert not any(hasattr(m, "lora_A") for m in plain.modules())


def test_merge_is_unmerged_forward_on_whisper(tmp_path):
    base, ours, handle, _ = _language_setup(tmp_path, num_shared=1)
    batch = whisper_batch()
    with handle.disabled():  # experts off: exactly the base model
        assert torch.equal(logits(ours, batch), logits(base, batch))
    with handle.routing(langs=["es"] * 3):
        routed = logits(ours, batch)
    handle.merge(lang="es")
    handle.merge(lang="es")  # no-op
    assert (logits(ours, batch) - routed).abs().max() <= 1e-4
    handle.unmerge()
    with handle.routing(langs=["es"] * 3):
        assert (logits(ours, batch) - routed).abs().max() <= 1e-5
    with handle.disabled():  # merge + unmerge restores the base weights up to rounding
        assert (logits(ours, batch) - logits(base, batch)).abs().max() <= 1e-5


def test_load_pads_smaller_rank_and_absorbs_alpha(tmp_path):
    base = make_whisper()
    batch = whisper_batch()
    peft = peft_adapter(base, tmp_path / "r2", seed=7, r=2, alpha=7.0, targets=["q_proj", "v_proj"])
    ours = copy.deepcopy(base)
    handle = inject(
        ours, MoLoRAConfig(lora=LoRAConfig(rank=4, alpha=8.0), languages=LANGS, num_shared=1)
    )
    randomize_experts(handle, seed=1)
    report = load_peft_expert(handle, tmp_path / "r2", lang="fr")
    assert len(report.loaded) == 12 and len(report.missing) == 20  # q/v of 12 attention blocks
    with torch.no_grad():  # shared expert off: compare the French expert alone
        for layer in handle.layers.values():
            layer.lora_B[0].zero_()
    with handle.routing(langs=["fr"] * 3):
        assert (logits(ours, batch) - logits(peft, batch)).abs().max() <= TOL
    pad = handle.layers["model.decoder.layers.0.self_attn.q_proj"]
    assert (
        torch.count_nonzero(pad.lora_A[2, 2:]) > 0
        and torch.count_nonzero(pad.lora_B[2, :, 2:]) == 0
    )
    with pytest.raises(ModelLoadError, match="lacks"):
        load_peft_expert(handle, tmp_path / "r2", lang="de", strict=True)


def test_load_errors_name_the_problem(tmp_path):
    base = make_whisper()
    peft_adapter(base, tmp_path / "all", seed=1, r=8)
    peft_adapter(base, tmp_path / "r2", seed=1, r=2)
    handle = inject(copy.deepcopy(base), LoRAConfig(rank=4, targets=("whisper-decoder",)))
    with pytest.raises(ModelLoadError, match="no expert layer for"):
        load_peft_expert(handle, tmp_path / "r2", expert=0)
    handle = inject(copy.deepcopy(base), LoRAConfig(rank=4))
    with pytest.raises(ModelLoadError, match="rank 8 > expert rank 4"):
        load_peft_expert(handle, tmp_path / "all", expert=0)
    with pytest.raises(ModelLoadError, match="not a PEFT adapter folder"):
        load_peft_expert(handle, tmp_path / "missing", expert=0)
    dora = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=2, target_modules=["fc1"], use_dora=True)
    )
    dora.save_pretrained(str(tmp_path / "dora"))
    with pytest.raises(ModelLoadError, match="use_dora"):
        read_peft_adapter(tmp_path / "dora")


def test_export_errors(tmp_path):
    model = make_whisper()
    handle = inject(model, MoLoRAConfig(lora=LoRAConfig(rank=2), languages=LANGS, router="hybrid"))
    with pytest.raises(MergeError, match="language router"):
        export_peft(handle, tmp_path / "x", lang="de")
    with pytest.raises(ConfigError, match="at most one"):
        export_peft(handle, tmp_path / "x", lang="de", expert=1)
    with pytest.raises(MergeError, match="every expert weight is 0"):
        export_peft(handle, tmp_path / "x", weights=torch.zeros(4))


def test_whisper_presets_select_the_documented_modules():
    model = make_whisper()
    every = find_targets(model, ["whisper-all"])
    assert len(every) == 32 and "proj_out" not in every
    assert set(every) == set(find_targets(model, WHISPER_TARGETS))
    enc = find_targets(model, ["whisper-encoder"])
    assert len(enc) == 12 and all(".encoder." in n for n in enc)
    cross = find_targets(model, ["whisper-decoder-cross-attn"])
    assert len(cross) == 8 and all("encoder_attn" in n for n in cross)
    assert len(find_targets(model, ["whisper-qv"])) == 12
    assert set(find_targets(model, ["whisper-encoder", "whisper-decoder"])) == set(every)
