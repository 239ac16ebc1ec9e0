"""CLLM: Jacobi trajectory collection, consistency + AR losses, LoRA fit, evaluation."""
