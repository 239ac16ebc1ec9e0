"""Training pipelines: CLLM consistency distillation (cllm/)."""
