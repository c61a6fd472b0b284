"""README.md model and adapter cards for exported folders (Hugging Face's card layout: YAML
front matter, then Markdown).

A card says what the folder is (base model, method, languages, format), how to load it, the
training configuration when the run folder has its config.yaml, the evaluation table of a
`babelora evaluate` report when one is given, and the licences of the base model and of the
training data. Unknown facts are written as unknown, never guessed: the data licence is what
the user states (--data-license).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babelora.errors import ConfigError
from babelora.export.sources import ExportSource

RUN_CONFIG = "config.yaml"
METHODS = {
    "base": "the base model's weights as loaded (e.g. a merge result)",
    "lora": "LoRA fine-tuning (a PEFT adapter), merged into the base weights",
    "language-experts": "LoRA language experts (one LoRA expert per language)",
    "molora": "MoLoRA (shared and per-language LoRA experts)",
}
OPENAI_LICENSE = "MIT (OpenAI Whisper)"


@dataclass
class CardInfo:
    """What the user adds to a card: the run's config, an evaluation table, the licences."""

    run_config: str | None = None  # config.yaml text
    run_config_path: str | None = None
    report: str | None = None  # Markdown
    report_path: str | None = None
    base_license: str | None = None
    data_license: str | None = None


def find_run_config(*folders: str | Path | None, explicit: str | None = None) -> Path | None:
    """The training run's config.yaml: in `explicit` (a run folder or the file itself), else in
    one of `folders` or its parent (an expert set is a run's `final/`)."""
    if explicit:
        path = Path(explicit)
        path = path / RUN_CONFIG if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"--run {explicit}: no {RUN_CONFIG} there")
        return path
    for folder in folders:
        if not folder:
            continue
        for candidate in (Path(folder), Path(folder).parent):
            if (candidate / RUN_CONFIG).is_file():
                return candidate / RUN_CONFIG
    return None


def read_report(path: str | Path) -> str:
    """An evaluation report as Markdown: report.md as written, or report.json rendered (a folder:
    its report.md, else its report.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.md" if (path / "report.md").is_file() else path / "report.json"
    if not path.is_file():
        raise ConfigError(f"--report {path}: no such report (give report.md or report.json)")
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".json":
        return text
    from babelora.evaluate.markdown import report_markdown

    try:
        return report_markdown(json.loads(text))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(
            f"--report {path}: not a babelora evaluation report ({type(err).__name__}: {err})"
        ) from None


def base_license(base: str, given: str | None = None) -> str | None:
    """The base model's licence: as given, MIT for OpenAI's Whisper (offline names and
    openai/whisper-* ids), else None (unknown)."""
    if given:
        return given
    from babelora.models.offline import OFFLINE_MODELS

    if base in OFFLINE_MODELS or base.startswith("openai/whisper-"):
        return OPENAI_LICENSE
    return None


def _hub_base(base: str) -> str | None:
    from babelora.models.base_check import hub_name

    name = hub_name(base)
    return name if name and not Path(name).is_absolute() else None


def _front_matter(source: ExportSource, library: str, languages: list[str], lic: str | None):
    spdx = "mit" if lic == OPENAI_LICENSE else "other"
    lines = ["---", f"license: {spdx}", f"library_name: {library}"]
    hub = _hub_base(source.base)
    if hub:
        lines.append(f"base_model: {hub}")
    if languages:
        lines.append("language:")
        lines += [f"- {lang}" for lang in languages]
    tags = ["whisper", "babelora", "automatic-speech-recognition"]
    if source.method != "base":
        tags.append("lora")
    lines.append("tags:")
    lines += [f"- {t}" for t in tags]
    lines += ["pipeline_tag: automatic-speech-recognition", "---", ""]
    return lines


def _table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]


def _usage(fmt: str, source: ExportSource, lang: str | None) -> list[str]:
    language = f'language="{lang}", ' if lang else ""
    if fmt == "ct2":
        code = [
            "from faster_whisper import WhisperModel",
            "",
            'model = WhisperModel("path/to/this/folder", compute_type="float32")  # or "int8"',
            f'segments, info = model.transcribe("audio.wav", {language}beam_size=1)',
            'print(" ".join(s.text for s in segments))',
        ]
        also = "babelora reads this folder too: `babelora transcribe --model FOLDER ...`."
    else:
        code = [
            "from transformers import WhisperForConditionalGeneration",
            "",
            'model = WhisperForConditionalGeneration.from_pretrained("path/to/this/folder")',
        ]
        also = (
            "babelora: `babelora transcribe --model FOLDER ...`; CTranslate2: "
            "`babelora export --format ct2 --model FOLDER --out OUT`."
        )
    fence = "```"
    return ["## Use", "", f"{fence}python", *code, fence, "", also, ""]


def model_card(
    source: ExportSource,
    fmt: str,
    dtype: str,
    info: CardInfo,
    adapters: list[str] | None = None,
) -> str:
    """README.md for an exported model folder (`fmt` "ct2" or "hf"); `adapters` lists the
    per-language PEFT adapters written beside the base (expert-set hf exports)."""
    lang = source.language
    languages = [lang] if lang else list(adapters or source.languages)
    lic = base_license(source.base, info.base_license)
    library = "ctranslate2" if fmt == "ct2" else "transformers"
    title = f"Whisper ({source.base})" + (f", {lang}" if lang else "")
    out = _front_matter(source, library, languages, lic)
    out += [f"# {title}", ""]
    method = METHODS.get(source.method, source.method)
    if adapters:
        method = METHODS.get(source.details.get("method", ""), "experts")
        what = f"{method}: the base weights, and each language's experts as a PEFT adapter"
    elif lang:
        what = f"{method}; the `{lang}` experts folded into the base weights"
    else:
        what = method
    out += [f"Exported by babelora: {what}.", ""]
    rows = [
        ("base model", f"`{source.base}`"),
        ("method", method),
        ("language(s)", ", ".join(languages) if languages else "not recorded"),
        (
            "format",
            f"CTranslate2 ({dtype})" if fmt == "ct2" else f"transformers, safetensors ({dtype})",
        ),
    ]
    if source.adapter:
        rows.append(("adapter", f"`{Path(source.adapter).name}`"))
    for key in ("rank", "alpha", "targets", "router", "num_shared"):
        if key in source.details:
            rows.append((key, f"`{source.details[key]}`"))
    out += ["## Model", "", *_table(rows)]
    if adapters:
        out += ["## Language adapters", ""]
        out += [
            "One PEFT LoRA adapter per language in `adapters/<lang>/` (each with its card); load "
            'one on this base with `peft.PeftModel.from_pretrained(model, "adapters/de")` or '
            "`babelora transcribe --model FOLDER --adapter FOLDER/adapters/de`.",
            "",
        ]
    if fmt == "ct2" and source.config.vocab_size < 51865:
        out += [
            "Note: the vocabulary is Whisper's English-only one, so faster-whisper decodes "
            "without language and task tokens.",
            "",
        ]
    out += _usage(fmt, source, lang)
    out += _training(info) + _evaluation(info) + _licences(lic, info.data_license)
    return "\n".join(out).rstrip() + "\n"


def adapter_card(source: ExportSource, lang: str, info: CardInfo, peft_base: str | None) -> str:
    """README.md for one language's PEFT adapter of an expert set."""
    lic = base_license(source.base, info.base_license)
    out = _front_matter(source, "peft", [lang], lic)
    out += [f"# {lang} LoRA expert on Whisper ({source.base})", ""]
    method = METHODS.get(source.details.get("method", ""), "experts")
    out += [
        f"The `{lang}` expert of a babelora expert set ({method}) as a PEFT LoRA adapter: "
        "the shared experts and this language's, summed exactly.",
        "",
    ]
    rows = [("base model", f"`{source.base}`"), ("language", lang)]
    for key in ("rank", "alpha", "targets"):
        if key in source.details:
            rows.append((key, f"`{source.details[key]}`"))
    out += ["## Adapter", "", *_table(rows)]
    fence = "```"
    base = peft_base or "BASE"
    out += [
        "## Use",
        "",
        f"{fence}python",
        "from peft import PeftModel",
        "from transformers import WhisperForConditionalGeneration",
        "",
        f'base = WhisperForConditionalGeneration.from_pretrained("{base}")',
        'model = PeftModel.from_pretrained(base, "path/to/this/folder").merge_and_unload()',
        fence,
        "",
        "The adapter's `babelora_base.json` names the base it was trained on; babelora checks "
        "it when loading (`babelora transcribe --adapter FOLDER`).",
        "",
    ]
    out += _training(info) + _licences(lic, info.data_license)
    return "\n".join(out).rstrip() + "\n"


def _training(info: CardInfo) -> list[str]:
    if not info.run_config:
        return []
    fence = "```"
    where = (
        f" (`{Path(info.run_config_path).name}` of the training run)"
        if info.run_config_path
        else ""
    )
    return [
        "## Training configuration",
        "",
        f"As trained{where}:",
        "",
        f"{fence}yaml",
        info.run_config.rstrip(),
        fence,
        "",
    ]


def _evaluation(info: CardInfo) -> list[str]:
    if not info.report:
        return []
    body = []
    for line in info.report.rstrip().splitlines():
        if line.startswith("#"):  # one level below the card's sections
            line = "#" + line if line.startswith("##") else "##" + line
        body.append(line)
    return ["## Evaluation", "", *body, ""]


def _licences(base: str | None, data: str | None) -> list[str]:
    return [
        "## Licence",
        "",
        f"- Base model: {base or 'unknown (check the base model card; set --base-license)'}",
        f"- Training data: {data or 'not stated (set --data-license when exporting)'}",
        "",
    ]


def card_info(
    run_folders: list[Any],
    run: str | None = None,
    report: str | None = None,
    base_license_text: str | None = None,
    data_license: str | None = None,
) -> CardInfo:
    """Collect the card's extras: the run's config.yaml, the report, the licences."""
    info = CardInfo(base_license=base_license_text, data_license=data_license)
    config = find_run_config(*run_folders, explicit=run)
    if config is not None:
        info.run_config = config.read_text(encoding="utf-8")
        info.run_config_path = str(config)
    if report:
        info.report = read_report(report)
        info.report_path = str(report)
    return info
