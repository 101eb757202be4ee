"""megatron-brrm: Megatron-Core GRPO training and evaluation for BR-RM generative reward models."""

__version__ = "0.1.0"
