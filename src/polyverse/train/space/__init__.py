"""SPACE: semi-autoregressive SFT with [MASK] tokens (data transform, LoRA fit, evaluation)."""
