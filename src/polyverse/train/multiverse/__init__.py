"""Multiverse SFT: tag tokens, Multiverse Attention and positions, LoRA (shared trainer)."""
