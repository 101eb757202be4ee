"""Loading streamed ``(hf_name, tensor)`` pairs into a model, and the name/shape manifest of an HF folder.

Both engines accept the refit stream of docs/design.md §3 (full, unsharded tensors with
Hugging Face parameter names). These helpers hold the strict checks: an unknown name raises
``KeyError`` naming it, a shape mismatch raises ``ValueError`` naming it and both shapes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Sequence, Tuple

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


def hf_checkpoint_manifest(model_dir: str | Path) -> Dict[str, Tuple[int, ...]]:
    """``{tensor name: shape}`` of the safetensors weights in an HF model folder (headers only).

    Reads ``model.safetensors`` or every shard listed in ``model.safetensors.index.json``;
    no tensor data is loaded.

    Raises:
        FileNotFoundError: the folder holds no safetensors weights.
    """
    from safetensors import safe_open

    manifest: Dict[str, Tuple[int, ...]] = {}
    for path in _weight_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                manifest[key] = tuple(f.get_slice(key).get_shape())
    return manifest


def _weight_files(model_dir: str | Path) -> List[Path]:
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (model_dir / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{model_dir} holds no model.safetensors or model.safetensors.index.json; "
                                f"save the model with save_pretrained(..., safe_serialization=True)")
    return [model_dir / f for f in files]


def iter_checkpoint_tensors(model_dir: str | Path) -> Iterator[Tuple[str, torch.Tensor]]:
    """Stream ``(name, tensor)`` from an HF folder's safetensors, one tensor at a time (CPU).

    Raises:
        FileNotFoundError: the folder holds no safetensors weights.
    """
    from safetensors import safe_open

    for path in _weight_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


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
