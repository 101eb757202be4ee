"""Shared fixtures: repository paths and tiny locally-built HF models (nothing downloaded)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "samples"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES_DIR


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen3 HF folder (2 layers, hidden 64, 4 heads / 2 KV groups, head_dim 32)."""
    from megatron_brrm.model.tiny import build_tiny_hf_model

    return build_tiny_hf_model(tmp_path_factory.mktemp("models") / "tiny-qwen3", arch="qwen3", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_qwen3_dir) -> Path:
    """A tiny random Llama HF folder sharing the Qwen3 fixture's tokenizer."""
    from megatron_brrm.model.tiny import build_tiny_hf_model

    return build_tiny_hf_model(tmp_path_factory.mktemp("models") / "tiny-llama", arch="llama", seed=1,
                               tokenizer_dir=tiny_qwen3_dir, head_dim=16)


@pytest.fixture(scope="session")
def tiny_qwen3_tied_dir(tmp_path_factory, tiny_qwen3_dir) -> Path:
    """A tiny random Qwen3 HF folder with tied input/output embeddings."""
    from megatron_brrm.model.tiny import build_tiny_hf_model

    return build_tiny_hf_model(tmp_path_factory.mktemp("models") / "tiny-qwen3-tied", arch="qwen3", seed=2,
                               tokenizer_dir=tiny_qwen3_dir, tie_word_embeddings=True)
