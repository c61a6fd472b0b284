"""babelora.decode."""
