"""Which expert group each row of a speech-LLM batch uses: the routing key of MoLoRA in the LLM.

MoLoRA's language experts (AAAI 2026) sit in the LLM; a row's experts are picked by a key that
the config chooses (`SpeechLLMConfig.routing_key`):

- `source`: the spoken language (ASR and X->en rows route by X; En->X rows all by `en`, so
  MuST-C's eight En->X directions would share one expert: wrong for that setting);
- `target`: the output language (ASR: the spoken language; ST: the target; X->en rows all by
  `en`);
- `pair`: the direction `src>tgt` (`de>en`, `en>de`; ASR is `de>de`): one expert per direction;
- `auto` (default): the non-English side - the target for En->X rows (MuST-C's importer writes
  them), the source otherwise. X->en and En->X rows of the same language X share X's experts.

The keys are `MoLoRAConfig.languages` entries (language codes, or `src>tgt` for `pair`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from babelora.languages import check_lang

RoutingKey = Literal["auto", "source", "target", "pair"]
ROUTING_KEYS = ("auto", "source", "target", "pair")


def output_lang(task: str, lang: str, target_lang: str | None) -> str:
    """The language a row's output text is in: ASR -> the spoken one, ST -> the target (en)."""
    return check_lang(lang) if task != "st" else check_lang(target_lang or "en")


def route_key(key: RoutingKey, task: str, lang: str, target_lang: str | None) -> str:
    """A row's routing key (module docstring) from its task, spoken and target language."""
    src, out = check_lang(lang), output_lang(task, lang, target_lang)
    if key == "source":
        return src
    if key == "target":
        return out
    if key == "pair":
        return f"{src}>{out}"
    if key == "auto":
        return out if src == "en" and out != "en" else src
    raise ValueError(f"routing_key must be one of {ROUTING_KEYS}, got {key!r}")


def route_keys(key: RoutingKey, rows: Iterable[tuple[str, str, str | None]]) -> list[str]:
    """The sorted distinct keys of (task, lang, target_lang) rows: one expert group each."""
    return sorted({route_key(key, *row) for row in rows})
