"""babelora.models."""
