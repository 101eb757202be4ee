"""Load model weights from a Megatron ``dist_checkpointing`` folder into this rank's model.

The folder is a model checkpoint written by ``tools/convert_hf_to_megatron.py`` (global
tensors, any TP/PP can read it). Training checkpoints (``checkpoint/train_ckpt.py``) hold
model + optimizer state and are resumed with ``load_train_checkpoint`` instead.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch


class ModelLoadError(ValueError):
    """The folder is not a loadable model checkpoint (message names the folder and the fix)."""


def load_model_weights(model_chunks: Sequence[torch.nn.Module], path: str | os.PathLike) -> None:
    """Overwrite every parameter of ``model_chunks`` (unwrapped GPTModel chunks of this rank)
    with the checkpoint at ``path`` (collective over all ranks).

    Raises:
        ModelLoadError: no checkpoint at ``path``, or virtual pipeline chunks (not supported here:
            load from the HF folder instead).
    """
    from megatron.core import dist_checkpointing  # lazy: heavy, only needed on this path

    path = Path(path)
    if not (path / "metadata.json").is_file():
        raise ModelLoadError(f"model.megatron_path={path} is not a Megatron dist_checkpointing folder "
                             "(no metadata.json); write one with tools/convert_hf_to_megatron.py")
    if len(model_chunks) != 1:
        raise ModelLoadError("model.megatron_path with virtual pipeline parallelism is not supported; "
                             "unset model.megatron_path to load from model.hf_path")
    model = model_chunks[0]
    state = dist_checkpointing.load(model.sharded_state_dict(), str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise ModelLoadError(f"{path}: checkpoint does not match the model: missing {missing[:5]}, "
                             f"unexpected {list(unexpected)[:5]}")
