"""babelora.methods.speech_llm."""
