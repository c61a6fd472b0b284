"""babelora.train."""
