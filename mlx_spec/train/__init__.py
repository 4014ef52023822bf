"""Training: tokenizer, causal LMs for the shipped models, and (later) drafter distillation."""
