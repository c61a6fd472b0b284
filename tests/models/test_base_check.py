"""The base signature (babelora_base.json): what it accepts (the same base in fp16/bf16) and what
it refuses (another architecture, another checkpoint, a perturbed or fine-tuned copy)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from babelora.errors import MergeError, ModelLoadError
from babelora.models.base_check import (
    BASE_FILE,
    BaseMismatchError,
    check_base,
    check_base_tensors,
    hub_name,
    write_base_signature,
)
from babelora.models.whisper import tiny_random_whisper


@pytest.fixture(scope="module")
def base():
    return tiny_random_whisper(seed=0).model


@pytest.fixture
def signed(base, tmp_path):
    write_base_signature(tmp_path, base, "tiny-random-whisper(seed=0)")
    return tmp_path


def perturbed(model, rel: float, seed: int = 5):
    """A copy with Gaussian noise of `rel` times each tensor's RMS added to every weight."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            rms = p.float().pow(2).mean().sqrt()
            p.add_(torch.randn(p.shape, generator=g) * rel * rms)
    return out


def test_the_same_base_passes_also_in_half_precision(base, signed):
    check_base(signed, base, "same")
    for dtype in (torch.float16, torch.bfloat16):
        check_base(signed, copy.deepcopy(base).to(dtype), f"the base in {dtype}")


def test_another_checkpoint_of_the_same_architecture_fails(signed):
    other = tiny_random_whisper(seed=1).model
    with pytest.raises(BaseMismatchError) as err:
        check_base(signed, other, "tiny-random-whisper(seed=1)")
    msg = str(err.value)
    assert "\n" not in msg
    assert "trained on tiny-random-whisper(seed=0), not on tiny-random-whisper(seed=1)" in msg
    assert "sampled values differ" in msg and str(signed) in msg


@pytest.mark.parametrize("rel", [0.01, 0.05])
def test_a_perturbed_copy_fails(base, signed, rel):
    """A fine-tuned or noised copy has the same shapes and nearly the same norms: the old
    norm/projection sketch (5 % tolerance) let 1 % noise through."""
    with pytest.raises(BaseMismatchError, match="sampled values differ"):
        check_base(signed, perturbed(base, rel), "a perturbed copy")


def test_one_changed_matrix_fails(base, signed):
    model = copy.deepcopy(base)
    with torch.no_grad():
        model.model.decoder.layers[1].fc2.weight.mul_(1.03)
    with pytest.raises(BaseMismatchError, match=r"decoder\.layers\.1\.fc2\.weight"):
        check_base(signed, model)


def test_another_architecture_names_the_field(signed):
    small = tiny_random_whisper(seed=0, d_model=32, encoder_attention_heads=2).model
    with pytest.raises(BaseMismatchError, match="d_model=64 there, d_model=32 here"):
        check_base(signed, small, "small")


def test_the_error_is_a_load_and_a_merge_error(signed):
    with pytest.raises(ModelLoadError):
        check_base(signed, tiny_random_whisper(seed=1).model)
    with pytest.raises(MergeError):
        check_base(signed, tiny_random_whisper(seed=1).model)


def test_tensors_read_one_at_a_time_are_checked_alike(base, signed):
    """The merge streams its base from safetensors: state-dict names, no module."""
    state = tiny_random_whisper(seed=1).model.state_dict()
    with pytest.raises(BaseMismatchError, match="not on streamed"):
        check_base_tensors(signed, state, state.__getitem__, None, "streamed")
    state = base.state_dict()
    check_base_tensors(signed, state, state.__getitem__, base.config.to_dict(), "streamed")


def test_wrapped_models_sign_like_the_bare_model(base, tmp_path):
    """Expert layers (base_layer) and PEFT's wrapping name the same base tensors."""
    from peft import LoraConfig, get_peft_model

    from babelora.adapters import LoRAConfig, inject, language_experts

    wrapped = copy.deepcopy(base)
    inject(wrapped, language_experts(LoRAConfig(rank=2), ("de",)))
    (tmp_path / "experts").mkdir()
    write_base_signature(tmp_path / "experts", base)
    check_base(tmp_path / "experts", wrapped)
    peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["fc1"]))
    check_base(tmp_path / "experts", peft)
    (tmp_path / "peft").mkdir()
    write_base_signature(tmp_path / "peft", peft)
    check_base(tmp_path / "peft", base)


def test_no_signature_passes_and_a_broken_one_is_named(base, tmp_path):
    check_base(tmp_path, tiny_random_whisper(seed=1).model)  # e.g. PEFT adapters from elsewhere
    (tmp_path / BASE_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match=f"{BASE_FILE}: not valid JSON"):
        check_base(tmp_path, base)


def test_a_format_1_signature_is_still_checked(base, signed):
    """Signatures written before the samples existed: shapes and projections only."""
    data = json.loads((signed / BASE_FILE).read_text())
    del data["samples"], data["format"]
    (signed / BASE_FILE).write_text(json.dumps(data))
    check_base(signed, base)
    with pytest.raises(BaseMismatchError, match="norm or projections differ"):
        check_base(signed, tiny_random_whisper(seed=1).model)


def test_peft_base_name_is_filled_in(base, tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": None}))
    write_base_signature(tmp_path, base, "tiny.en")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "openai/whisper-tiny.en"
    assert hub_name("tiny-random-whisper(seed=0)") is None
    assert hub_name("openai/whisper-small") == "openai/whisper-small"
    assert hub_name(str(tmp_path)) == str(tmp_path.resolve())
