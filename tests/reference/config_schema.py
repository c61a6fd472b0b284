"""A small nested config schema for the config-loader tests and fuzzing."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Inner:
    rank: int = 8
    alpha: float = 16.0


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    langs: tuple[str, ...] = ("de",)
    lora: Inner = field(default_factory=Inner)
    flag: bool = False
    note: str | None = None
