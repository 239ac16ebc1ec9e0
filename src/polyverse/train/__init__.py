"""Training pipelines: CLLM consistency distillation (cllm/), SPACE SFT (space/), Multiverse SFT
(multiverse/), the self-distilled data they train on (distill), and the shared trainer (common)."""
