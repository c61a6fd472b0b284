"""babelora.evaluate: scoring like the papers (WER/CER after Whisper's normalizers, sacreBLEU
BLEU/chrF with signatures, per-language tables with macro averages, language confusion)."""

from babelora.evaluate.metrics import bleu, cer, chrf, error_rate, wer
from babelora.evaluate.report import Report, ScoreConfig, score, score_results, write_report

__all__ = [
    "Report",
    "ScoreConfig",
    "bleu",
    "cer",
    "chrf",
    "error_rate",
    "score",
    "score_results",
    "wer",
    "write_report",
]
