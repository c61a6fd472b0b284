"""The `speech_llm` recipe on a Gemma-style LM with its own tokenizer (no Whisper tokens), with
MoLoRA in the LLM and MGRF feeding it: train, export (+ per-key PEFT folds), reload, and
`babelora evaluate --speech-llm`. A tiny random Gemma 3 and a tiny BPE tokenizer stand in for
Gemma 3 270M."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference.corpus import write_corpus
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

from babelora.cli.main import main
from babelora.config import build_dataclass
from babelora.data.manifest import read_manifest, write_manifest
from babelora.methods.registry import build_recipe, train
from babelora.methods.speech_llm.recipe import CollatorTokenizer, load_speech_llm
from babelora.train.config import TrainConfig

TEXTS = ["hallo welt", "bonjour le monde", "hello world", "guten tag", "salut", "good day"]


def tiny_gemma_folder(folder: Path) -> Path:
    """A random 2-layer Gemma 3 and a byte-level BPE tokenizer whose eos is `<eos>`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS * 20 + ["Transcribe the German speech into English."], trainer)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>"
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        eos_token_id=fast.eos_token_id,
        bos_token_id=fast.bos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    Gemma3ForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma_recipe")
    lm = tiny_gemma_folder(root / "gemma")
    asr = read_manifest(write_corpus(root, {"de": 3, "fr": 3}, name="asr"))
    rows = []
    for i, u in enumerate(asr):  # X->en and En->X rows over the same audio
        rows.append(u)
        base = {**u.__dict__, "task": "st"}
        rows.append(
            u.__class__(
                **{**base, "id": f"{u.id}-x2en", "translation": "hello world", "target_lang": "en"}
            )
        )
        rows.append(
            u.__class__(
                **{
                    **base,
                    "id": f"{u.id}-en2x",
                    "lang": "en",
                    "translation": "guten tag" if i % 2 else "salut",
                    "target_lang": "de" if i % 2 else "fr",
                }
            )
        )
    write_manifest(rows, root / "train.jsonl")
    return root, lm


def config(root: Path, lm: Path, out: Path) -> dict:
    return {
        "output_dir": str(out),
        "model": {"tiny_random": True},
        "data": {
            "train": [str(root / "train.jsonl")],
            "languages": ["de", "fr", "en"],
            "tasks": ["asr", "st"],
            "batch_seconds": 12.0,
            "text_leading_space": False,
        },
        "optim": {"lr": 3e-3, "warmup_steps": 0, "schedule": "constant"},
        "recipe": {
            "name": "speech_llm",
            "params": {
                "model": {
                    "lm": str(lm),
                    "target_leading_space": False,
                    "projector": {"kind": "linear", "downsample": 4},
                    "routing_key": "auto",
                    "mgrf": {"pooling": "attention", "fusion": "gated"},
                    "mgrf_at": "projector",
                },
                "molora": {"lora": {"rank": 4, "alpha": 8.0}, "router": "language"},
            },
        },
        "checkpoint": {"save_every": 3, "keep_last": 1, "keep_best": 0},
        "max_steps": 3,
        "log_every": 1,
        "progress_bar": False,
        "mixed_precision": "no",
    }


def test_collator_gets_the_lms_tokens_and_routing_keys_come_from_the_data(setup, tmp_path):
    root, lm = setup
    recipe = build_recipe(build_dataclass(TrainConfig, config(root, lm, tmp_path)))
    assert isinstance(recipe.tokenizer, CollatorTokenizer)
    model = recipe.model
    assert model.experts.context.languages == ("de", "fr")  # auto: en->X rows by their target
    assert {"load_balance", "z_loss"} <= set(recipe.aux_loss_weights)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".lora_A" in n for n in names) and any(n.startswith("mgrf.") for n in names)
    assert not any(n.startswith("lm.") and "lora_" not in n for n in names)  # LM frozen


@pytest.mark.slow
def test_train_export_reload_and_evaluate_with_the_speech_llm(setup, tmp_path):
    root, lm = setup
    out = tmp_path / "run"
    result = train(build_dataclass(TrainConfig, config(root, lm, out)))
    final = Path(result.final_dir)
    assert (final / "speech_llm.safetensors").is_file()
    folds = sorted(p.name for p in (final / "lm_peft").iterdir())
    assert folds == ["de", "fr", "shared"]
    assert (final / "lm_peft" / "de" / "adapter_model.safetensors").is_file()
    model = load_speech_llm(final)
    assert model.experts is not None and model.mgrf is not None
    report = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--speech-llm",
            str(final),
            "-m",
            str(root / "train.jsonl"),
            "-o",
            str(report),
            "--max-new-tokens",
            "3",
            "--no-progress",
            "--limit",
            "6",
        ]
    )
    assert code == 0
    rows = [json.loads(x) for x in (report / "hypotheses.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all("route_key" in r for r in rows)
