"""babelora.cli."""
