"""Every prompt babelora renders, from one place, so training and inference never disagree.

Whisper prompt (decoder prefix):
    <|startoftranscript|> <|lang|> <|transcribe|>|<|translate|> [<|target|>] <|notimestamps|>
`<|target|>` is added only for ST into a language other than English (Whisper's own
`<|translate|>` means "into English"). With style `english` (Whisper *.en checkpoints as
released) the prefix is `<|startoftranscript|> <|notimestamps|>`: no language or task token.
`load_whisper` gives each model its own style (`english` for a *.en vocabulary, else
`multilingual`, e.g. base); training (the collator) and decoding (the runner) both render the
prompt here with the model's style, so a fine-tuned model decodes with the prompt it learned.

Speech-LLM prompt (text after the speech prefix): `llm_prompt(task, lang, target_lang)`.
"""

from __future__ import annotations

from typing import Any, Literal

from babelora.languages import LANG_NAMES, check_lang

PromptStyle = Literal["multilingual", "english"]
SOT = "<|startoftranscript|>"
EOT = "<|endoftext|>"
TRANSCRIBE = "<|transcribe|>"
TRANSLATE = "<|translate|>"
NO_TIMESTAMPS = "<|notimestamps|>"


def token_id(tokenizer: Any, token: str) -> int:
    """Id of a special token; raises KeyError when the vocabulary lacks it."""
    idx = tokenizer.convert_tokens_to_ids(token)
    if idx is None or idx == getattr(tokenizer, "unk_token_id", -1):
        raise KeyError(f"tokenizer has no token {token}")
    return int(idx)


def whisper_prompt_tokens(
    lang: str,
    task: str = "asr",
    target_lang: str | None = None,
    style: PromptStyle = "multilingual",
) -> list[str]:
    """The decoder prefix as token strings (see module docstring)."""
    if style == "english":
        return [SOT, NO_TIMESTAMPS]
    lang = check_lang(lang)
    tokens = [SOT, f"<|{lang}|>", TRANSLATE if task == "st" else TRANSCRIBE]
    if task == "st" and target_lang and check_lang(target_lang) != "en":
        tokens.append(f"<|{check_lang(target_lang)}|>")
    tokens.append(NO_TIMESTAMPS)
    return tokens


def whisper_prompt_ids(
    tokenizer: Any,
    lang: str,
    task: str = "asr",
    target_lang: str | None = None,
    style: PromptStyle = "multilingual",
) -> list[int]:
    """The decoder prefix as token ids for `tokenizer`."""
    return [token_id(tokenizer, t) for t in whisper_prompt_tokens(lang, task, target_lang, style)]


def llm_prompt(task: str, lang: str, target_lang: str | None = None) -> str:
    """Instruction text for the speech-LLM, e.g. 'Transcribe the German speech.'."""
    source = LANG_NAMES[check_lang(lang)].title()
    if task == "st":
        target = LANG_NAMES[check_lang(target_lang or "en")].title()
        return f"Translate the {source} speech into {target}."
    return f"Transcribe the {source} speech."
