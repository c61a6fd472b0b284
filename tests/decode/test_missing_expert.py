"""Rows whose language has no expert: an error unless the caller says what to do, and a label
naming what decoded each row (a language's experts, only MoLoRA's shared ones, or none)."""

from __future__ import annotations

import pytest

from babelora.adapters import LoRAConfig, MoLoRAConfig, inject, language_experts
from babelora.decode.routing import (
    check_expert_languages,
    expert_label,
    route_lang,
)
from babelora.decode.runner import Request
from babelora.errors import LanguageError
from babelora.models.whisper import tiny_random_whisper

LORA = LoRAConfig(rank=2, targets=("fc1",))


def adapter_for(**molora):
    config = MoLoRAConfig(lora=LORA, **molora) if molora else language_experts(LORA, ("de", "fr"))
    return inject(tiny_random_whisper(seed=0).model, config)


@pytest.fixture(scope="module")
def experts():
    return adapter_for()


def reqs(*langs: str) -> list[Request]:
    return [Request(f"u{i}", f"{i}.wav", lang=lang) for i, lang in enumerate(langs)]


def test_a_missing_language_is_an_error_naming_it_and_the_experts(experts):
    with pytest.raises(LanguageError) as err:
        check_expert_languages(experts, reqs("de", "es", "es", "it"))
    msg = str(err.value)
    assert "no experts for language 'es' (2 utterances: 'u1', 'u2'; also 'it')" in msg
    assert "the expert set has de, fr" in msg and "--missing-expert base" in msg
    with pytest.raises(LanguageError, match="no experts for language 'es'"):
        route_lang(experts, "es")  # the batch hook's own guard
    check_expert_languages(experts, reqs("de", "fr"))


def test_base_and_another_language(experts):
    check_expert_languages(experts, reqs("es"), "base")
    assert route_lang(experts, "es", "base") is None
    assert [expert_label(experts, r, "base") for r in reqs("de", "es")] == ["de", "base"]
    assert route_lang(experts, "es", "fr") == "fr"
    assert expert_label(experts, reqs("es")[0], "fr") == "fr"
    with pytest.raises(LanguageError, match="no 'it' experts"):
        check_expert_languages(experts, reqs("es"), "it")


def test_molora_base_means_the_shared_experts():
    adapter = adapter_for(languages=("de", "fr"), num_shared=1, router="language")
    assert expert_label(adapter, reqs("es")[0], "base") == "shared"
    assert expert_label(adapter, reqs("de")[0], "base") == "de"


def test_routers_that_ignore_the_language_never_miss_an_expert():
    adapter = adapter_for(languages=("de",), num_experts=2, router="learned", num_shared=0)
    check_expert_languages(adapter, reqs("es"))  # the router, not the language, picks experts
    assert expert_label(adapter, reqs("es")[0]) == "learned"
    hybrid = adapter_for(languages=("de", "fr"), num_shared=0, router="hybrid", top_k=1)
    with pytest.raises(LanguageError):
        check_expert_languages(hybrid, reqs("es"))
    assert expert_label(hybrid, reqs("es")[0], "base") == "learned"  # no language prior


def test_a_posterior_routes_without_a_language(experts):
    req = Request("u", "a.wav", lang="es", lang_probs=(0.5, 0.5))
    check_expert_languages(experts, [req])
    assert expert_label(experts, req) == "posterior"
