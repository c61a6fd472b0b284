"""Hypotheses files: JSONL, one decoded utterance a line, matched to a manifest by `id`.

A line is `{"id", "hypothesis", "lang_used"?, "lang_source"?, "lang_prob"?, "expert"?}`:
`lang_used` (or `lang`, as `babelora.decode.runner` writes it) is the language the decoder put in
the prompt, `lang_source` says whether that language was `given` (oracle) or `predicted` (LID),
`lang_prob` the LID's probability of its prediction (babelora.decode.language), `expert` what
decoded it with an expert set (a language's experts, `base`, `shared`, `posterior`: see
babelora.decode.routing.expert_label). NeMo's `pred_text` and the short `hyp` are accepted for
`hypothesis`. A line with an `error` records a failed utterance: it is scored as an empty output
and counted as failed.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babelora.errors import LanguageError, ManifestError
from babelora.languages import check_lang

LANG_SOURCES = ("given", "predicted")
HYP_ALIASES = ("hypothesis", "hyp", "pred_text")


@dataclass(frozen=True)
class Hypothesis:
    """One system output."""

    id: str
    hypothesis: str
    lang_used: str | None = None
    lang_source: str | None = None  # "given" | "predicted" | None (not said)
    error: str | None = None  # why decoding failed (then `hypothesis` is "")
    expert: str | None = None  # what decoded it with an expert set (None: no set, or not said)
    lang_prob: float | None = None  # LID probability of the predicted `lang_used`


def parse_hypothesis(row: Any, where: str) -> Hypothesis:
    """Validate one decoded JSON object; `where` names the file and line in errors."""
    if isinstance(row, Hypothesis):
        return row
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(row).__name__}")
    uid = row.get("id")
    if isinstance(uid, bool) or not isinstance(uid, (str, int)) or not str(uid).strip():
        raise ManifestError(f"{where}: field 'id' is missing or not a non-empty string")
    key = next((k for k in HYP_ALIASES if k in row), None)
    error = row.get("error")
    if key is None and error is None:
        raise ManifestError(f"{where}: field 'hypothesis' is missing")
    text = row.get(key, "") if key else ""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ManifestError(f"{where}: field '{key}' must be a string, got {type(text).__name__}")
    lang_used = row.get("lang_used", row.get("lang")) or None
    if lang_used is not None:
        try:
            lang_used = check_lang(lang_used)
        except LanguageError as err:
            raise ManifestError(f"{where}: field 'lang_used': {err}") from None
    source = row.get("lang_source")
    if source is not None and source not in LANG_SOURCES:
        raise ManifestError(f"{where}: field 'lang_source' must be one of {LANG_SOURCES}")
    expert = row.get("expert")
    if expert is not None and not isinstance(expert, str):
        raise ManifestError(
            f"{where}: field 'expert' must be a string, got {type(expert).__name__}"
        )
    prob = row.get("lang_prob")
    if prob is not None and (
        isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0
    ):
        raise ManifestError(f"{where}: field 'lang_prob' must be a number in [0, 1], got {prob!r}")
    err = None if error is None else str(error)
    prob = None if prob is None else float(prob)
    return Hypothesis(str(uid), text, lang_used, source, err, expert or None, prob)


def read_hypotheses(path: str | Path) -> dict[str, Hypothesis]:
    """Read a hypotheses JSONL (or .jsonl.gz) into {id: Hypothesis}; ManifestError names file,
    line and field."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: hypotheses file not found")
    out: dict[str, Hypothesis] = {}
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{where}: not valid JSON ({err.msg})") from None
            hyp = parse_hypothesis(row, where)
            if hyp.id in out:
                raise ManifestError(f"{where}: field 'id' {hyp.id!r} is a duplicate")
            out[hyp.id] = hyp
    return out
