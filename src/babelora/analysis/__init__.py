"""babelora.analysis: looking inside trained models (expert routing per language)."""
