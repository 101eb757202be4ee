"""megatron-brrm: Megatron-Core GRPO training and evaluation for BR-RM generative reward models."""

__version__ = "0.1.0"

from megatron_brrm.megatron_import_hook import install as _install_megatron_import_hook

_install_megatron_import_hook()  # Megatron's import-time torch.compile off on a CPU-only torch (see the module)
