"""babelora.methods.molora."""
