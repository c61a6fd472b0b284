"""babelora.methods.experts."""
