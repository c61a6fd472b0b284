"""babelora.methods.finetune: full and LoRA fine-tuning baselines."""
