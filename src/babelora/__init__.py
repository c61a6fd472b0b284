"""babelora: multilingual ASR and speech translation with parameter-efficient language experts."""

from babelora.errors import BabeloraError

__version__ = "0.1.0"
__all__ = ["BabeloraError", "__version__"]
