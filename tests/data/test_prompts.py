"""Whisper decoder prompts with the real tokenizers: multilingual base (language + task tokens,
`<|translate|>` for X->en) and English-only tiny.en (bare prefix); training builds the prompt that
decoding uses."""

from __future__ import annotations

import numpy as np
import pytest
from reference.corpus import base_config, write_corpus
from reference.ct2_writer import write_ct2

from babelora.config import build_dataclass
from babelora.data.manifest import read_manifest
from babelora.data.prompts import whisper_prompt_ids, whisper_prompt_tokens
from babelora.models import offline
from babelora.models.whisper import _load_tokenizer, load_whisper, tiny_random_whisper

# Whisper's special token ids: the multilingual vocabulary (51865) and the *.en one (51864)
BASE = {"sot": 50258, "en": 50259, "de": 50261, "fr": 50265, "translate": 50358,
        "transcribe": 50359, "notimestamps": 50363}  # fmt: skip
TINY_EN = {"sot": 50257, "de": 50260, "translate": 50357, "transcribe": 50358,
           "notimestamps": 50362}  # fmt: skip
# a tiny random Whisper with the multilingual vocabulary (base's tokenizer fits it)
MULTILINGUAL = dict(vocab_size=51865, decoder_start_token_id=50258, eos_token_id=50257,
                    pad_token_id=50257, bos_token_id=50257,
                    begin_suppress_tokens=[220, 50257])  # fmt: skip


@pytest.fixture(scope="module")
def base_tokenizer_json():
    """base's tokenizer.json straight from its package (no join: it is small)."""
    if not offline.OFFLINE_MODELS["base"].installed():
        pytest.skip("Whisper base packages not installed")
    item = next(f for f in offline.WHISPER_BASE.extras if f.path.endswith("tokenizer.json"))
    return offline._locate(item, "Whisper base")


@pytest.fixture(scope="module")
def base_tok(base_tokenizer_json):
    return _load_tokenizer(base_tokenizer_json.parent)


@pytest.fixture(scope="module")
def tiny_en_tok():
    return _load_tokenizer(offline.offline_model_path("tiny.en"))


def test_prompt_tokens():
    assert whisper_prompt_tokens("de") == [
        "<|startoftranscript|>",
        "<|de|>",
        "<|transcribe|>",
        "<|notimestamps|>",
    ]
    assert whisper_prompt_tokens("de", "st", "en")[2] == "<|translate|>"
    assert whisper_prompt_tokens("de", "st", style="english") == [
        "<|startoftranscript|>",
        "<|notimestamps|>",
    ]


def test_base_prompts_carry_language_and_task(base_tok):
    b = BASE
    assert whisper_prompt_ids(base_tok, "de") == [
        b["sot"],
        b["de"],
        b["transcribe"],
        b["notimestamps"],
    ]
    assert whisper_prompt_ids(base_tok, "en") == [
        b["sot"],
        b["en"],
        b["transcribe"],
        b["notimestamps"],
    ]
    # speech translation X->en is Whisper's own <|translate|> task: no target token
    assert whisper_prompt_ids(base_tok, "de", "st", "en") == [
        b["sot"],
        b["de"],
        b["translate"],
        b["notimestamps"],
    ]
    assert whisper_prompt_ids(base_tok, "de", "st") == whisper_prompt_ids(
        base_tok, "de", "st", "en"
    )
    # into another language (babelora's fine-tuned ST): the target's language token follows
    assert whisper_prompt_ids(base_tok, "de", "st", "fr") == [
        b["sot"],
        b["de"],
        b["translate"],
        b["fr"],
        b["notimestamps"],
    ]


def test_tiny_en_prompts(tiny_en_tok):
    t = TINY_EN
    assert whisper_prompt_ids(tiny_en_tok, "en", style="english") == [t["sot"], t["notimestamps"]]
    assert whisper_prompt_ids(tiny_en_tok, "de", style="english") == [t["sot"], t["notimestamps"]]
    # babelora's experts train tiny.en with language/task tokens too (its vocabulary has them)
    assert whisper_prompt_ids(tiny_en_tok, "de") == [
        t["sot"],
        t["de"],
        t["transcribe"],
        t["notimestamps"],
    ]
    assert whisper_prompt_ids(tiny_en_tok, "de", "st")[2] == t["translate"]


def test_each_model_gets_its_own_prompt_style(tmp_path, base_tokenizer_json):
    """load_whisper picks the style from the vocabulary: *.en -> english, else multilingual."""
    tiny = tiny_random_whisper(seed=0)
    folder = write_ct2(
        tiny.model,
        tmp_path / "en",
        offline.offline_model_path("tiny.en") / "tokenizer.json",
        np.float32,
    )
    assert load_whisper(folder).prompt_style == "english"
    multi = tiny_random_whisper(seed=0, **MULTILINGUAL).model
    folder = write_ct2(multi, tmp_path / "multi", base_tokenizer_json, np.float32)
    assert load_whisper(folder).prompt_style == "multilingual"


def test_fine_tuning_trains_with_the_prompt_decoding_uses(
    tmp_path, monkeypatch, base_tokenizer_json
):
    """A multilingual model (base's vocabulary and tokenizer, tiny random weights) fine-tuned by
    the `full` recipe: the collator's training prompt is the prompt the decoder is given."""
    from babelora.data.collate import SpeechDataset
    from babelora.decode import runner
    from babelora.decode.search import DecodeOptions
    from babelora.methods.registry import build_recipe
    from babelora.train.config import TrainConfig
    from babelora.train.data import make_collator

    folder = write_ct2(
        tiny_random_whisper(seed=1, **MULTILINGUAL).model,
        tmp_path / "m",
        base_tokenizer_json,
        np.float32,
    )
    utts = read_manifest(write_corpus(tmp_path / "corpus", {"de": 1}))
    cfg = build_dataclass(
        TrainConfig,
        base_config(
            tmp_path / "corpus",
            tmp_path / "run",
            **{"model": {"name": str(folder)}, "recipe": {"name": "full", "params": {}}},
        ),
    )
    recipe = build_recipe(cfg)
    assert recipe.prompt_style == "multilingual"
    batch = make_collator(cfg, recipe, ["de"], train=True)([SpeechDataset(utts)[0]])
    trained = batch["decoder_input_ids"][0, :4].tolist()
    assert trained == [BASE["sot"], BASE["de"], BASE["transcribe"], BASE["notimestamps"]]

    seen = []

    def record(*args, **kwargs):
        ids = whisper_prompt_ids(*args, **kwargs)
        seen.append(ids)
        return ids

    monkeypatch.setattr(runner, "whisper_prompt_ids", record)
    handle = load_whisper(folder)
    reqs = [runner.Request("u", utts[0].audio_filepath, "de")]
    out = runner.decode_requests(
        handle, reqs, DecodeOptions(max_new_tokens=2), runner.RunnerOptions(show_progress=False)
    )
    assert out[0].error is None and seen == [trained]
