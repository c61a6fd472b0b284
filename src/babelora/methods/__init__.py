"""babelora.methods."""
