"""The errors babelora raises for bad input: each names the item (file, line, field) at fault.

Every class derives from `BabeloraError`, which the CLI turns into a one-line message and a
non-zero exit code instead of a traceback.
"""

from __future__ import annotations


class BabeloraError(Exception):
    """Base class for user-facing errors (bad input, bad config, missing dependency)."""


class ManifestError(BabeloraError, ValueError):
    """A manifest line is malformed; the message names file, line and field."""


class AudioError(BabeloraError, ValueError):
    """An audio file is missing, unreadable, empty, non-finite or too long."""


class LanguageError(BabeloraError, ValueError):
    """An unknown or unsupported language code."""


class ConfigError(BabeloraError, ValueError):
    """A config or recipe is malformed: unknown key, wrong type, bad value."""


class ModelLoadError(BabeloraError, ValueError):
    """A model, checkpoint or adapter cannot be loaded (missing, mismatched or unsafe)."""


class MergeError(BabeloraError, ValueError):
    """Merge inputs are incompatible (architecture, shapes, missing tensors, base mismatch)."""


class DependencyError(BabeloraError, RuntimeError):
    """An external tool or optional package is missing; the message says how to install it."""
