"""Extra tiny HF models for the model tests (built locally, reusing the session tokenizer).

The factory initialises every RMSNorm weight to 1 (as transformers does), which would hide
a swapped or missing norm in a logits comparison; the ``*_rn`` fixtures are copies with
random norm weights (1 + 0.2 * N(0, 1), seeded).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def randomize_norms(src: Path, dst: Path, seed: int) -> Path:
    """Copy HF folder ``src`` to ``dst`` with every ``*norm*`` weight set to 1 + 0.2 * N(0, 1)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in weights.items():
        if "norm" in name:
            weights[name] = 1.0 + 0.2 * torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype)
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="session")
def tiny_qwen3_rn_dir(tmp_path_factory, tiny_qwen3_dir) -> Path:
    """The tiny Qwen3 fixture (head_dim 32 != 64/4, 2 query groups) with random norm weights."""
    return randomize_norms(tiny_qwen3_dir, tmp_path_factory.mktemp("models") / "tiny-qwen3-rn", seed=10)


@pytest.fixture(scope="session")
def tiny_llama_rn_dir(tmp_path_factory, tiny_llama_dir) -> Path:
    """The tiny Llama fixture (head_dim 16, 2 query groups) with random norm weights."""
    return randomize_norms(tiny_llama_dir, tmp_path_factory.mktemp("models") / "tiny-llama-rn", seed=11)


@pytest.fixture(scope="session")
def tiny_qwen3_tied_rn_dir(tmp_path_factory, tiny_qwen3_tied_dir) -> Path:
    """The tied-embedding Qwen3 fixture with random norm weights."""
    return randomize_norms(tiny_qwen3_tied_dir, tmp_path_factory.mktemp("models") / "tiny-qwen3-tied-rn", seed=12)


@pytest.fixture(scope="session")
def tiny_llama4_padded_dir(tmp_path_factory, tiny_qwen3_dir) -> Path:
    """Llama, 4 layers (PP=2 x VPP=2 -> one layer per chunk), vocab 2100 (Megatron pads it to
    2176 at TP=1 and 2304 at TP=2, so the vocab-padding rows are exercised), random norms."""
    from megatron_brrm.model.tiny import build_tiny_hf_model

    base = build_tiny_hf_model(tmp_path_factory.mktemp("models") / "tiny-llama4-v2100", arch="llama", seed=3,
                               tokenizer_dir=tiny_qwen3_dir, num_layers=4, head_dim=16, vocab_size=2100)
    return randomize_norms(base, tmp_path_factory.mktemp("models") / "tiny-llama4-v2100-rn", seed=13)
