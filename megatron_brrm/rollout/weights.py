"""Loading streamed ``(hf_name, tensor)`` pairs into a model, and checking them against a manifest.

Both engines accept the refit stream of docs/design.md §3 (full, unsharded tensors with
Hugging Face parameter names). These helpers hold the strict checks: an unknown name raises
``KeyError`` naming it, a shape mismatch raises ``ValueError`` naming it and both shapes.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence, Tuple

import torch


def copy_named_tensors(params: Mapping[str, torch.Tensor], named_tensors: Iterable[Tuple[str, torch.Tensor]],
                       where: str = "model") -> Tuple[int, int]:
    """Copy each streamed tensor into the parameter of the same name, in place.

    Tensors are consumed one at a time (``param.copy_`` converts dtype/device), so no second
    full copy of the model is ever held. Tied parameters may be addressed by any of their
    names (pass ``named_parameters(remove_duplicate=False)``).

    Args:
        params: ``{hf_name: parameter}`` of the target model.
        named_tensors: iterator of ``(hf_name, tensor)``; each tensor has the parameter's shape.
        where: what to call the target in error messages.

    Returns:
        ``(number of tensors copied, bytes copied)`` (bytes counted in the source dtype).

    Raises:
        KeyError: a name is not a parameter of the model (tensors before it were already
            copied: a failed refit leaves the model partially updated; reload or refit again).
        ValueError: a tensor's shape differs from the parameter's.
    """
    count = nbytes = 0
    with torch.no_grad():
        for name, tensor in named_tensors:
            param = params.get(name)
            if param is None:
                known = sorted(params)
                raise KeyError(f"update_weights: {where} has no parameter named {name!r} "
                               f"({len(known)} known names, e.g. {known[:3]}); the refit stream must use "
                               f"Hugging Face parameter names of the same architecture")
            if tuple(tensor.shape) != tuple(param.shape):
                raise ValueError(f"update_weights: shape mismatch for {name!r}: got {tuple(tensor.shape)}, "
                                 f"{where} expects {tuple(param.shape)}")
            param.copy_(tensor)
            count += 1
            nbytes += tensor.numel() * tensor.element_size()
    return count, nbytes


def check_against_manifest(manifest: Mapping[str, Tuple[int, ...]], name: str, shape: Sequence[int],
                           where: str = "the engine's checkpoint") -> None:
    """Raise ``KeyError``/``ValueError`` (as :func:`copy_named_tensors`) if a tensor ``name`` of
    ``shape`` does not fit ``manifest``."""
    expected = manifest.get(name)
    if expected is None:
        known = sorted(manifest)
        raise KeyError(f"update_weights: {where} has no tensor named {name!r} ({len(known)} known names, "
                       f"e.g. {known[:3]}); the refit stream must use Hugging Face parameter names")
    if tuple(shape) != tuple(expected):
        raise ValueError(f"update_weights: shape mismatch for {name!r}: got {tuple(shape)}, "
                         f"{where} expects {tuple(expected)}")
