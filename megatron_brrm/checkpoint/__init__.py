"""Checkpoint io: HF safetensors (streaming), Megatron dist_checkpointing (model and training state)."""
import warnings


def quiet_library_warnings() -> None:
    """Hide Megatron's CPU-install notices (no TE/Apex) and torch DCP deprecation notices.

    For the command-line tools; call it before importing Megatron (this package module is light).
    """
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|cuda_graph_scope).*", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
