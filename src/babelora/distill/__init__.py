"""babelora.distill."""
