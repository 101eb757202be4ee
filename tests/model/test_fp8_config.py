"""FP8 training keys: validated on any machine (no GPU), mapped onto Megatron's TransformerConfig."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from megatron_brrm.config import ModelConfig, ParallelConfig, load_config
from megatron_brrm.model.build import ModelBuildError, transformer_config_from_hf
from megatron_brrm.model.fp8 import (FP8ConfigError, check_fp8_config, fp8_device_problem, fp8_dim_problems,
                                     fp8_token_multiple, fp8_transformer_kwargs)

REPO_ROOT = Path(__file__).resolve().parents[2]
TE = dict(params_dtype="bf16", transformer_impl="auto")


@pytest.mark.parametrize("fmt", ["e4m3", "hybrid"])
@pytest.mark.parametrize("recipe", ["delayed", "tensorwise", "blockwise", "mxfp8"])
def test_valid_combinations_pass_and_map_to_megatron(fmt, recipe):
    m = ModelConfig(fp8=fmt, fp8_recipe=recipe, **TE)
    check_fp8_config(m, ParallelConfig())
    kw = fp8_transformer_kwargs(m)
    assert (kw["fp8"], kw["fp8_recipe"], kw["fp8_param"]) == (fmt, recipe, False)
    # the amax history only exists for delayed scaling
    assert ("fp8_amax_history_len" in kw) == (recipe == "delayed")
    if recipe == "delayed":
        assert (kw["fp8_amax_history_len"], kw["fp8_amax_compute_algo"]) == (1024, "max")


@pytest.mark.parametrize("kwargs, match", [
    (dict(fp8="e5m2", **TE), r"model.fp8='e5m2' is not one of \['e4m3', 'hybrid'\]"),
    (dict(fp8="e4m3", fp8_recipe="rowwise", **TE), "model.fp8_recipe='rowwise' is not one of"),
    (dict(fp8="e4m3", fp8_amax_compute_algo="mean", **TE), "model.fp8_amax_compute_algo='mean'"),
    (dict(fp8="e4m3", fp8_amax_history_len=0, **TE), "model.fp8_amax_history_len=0 must be an integer >= 1"),
    (dict(fp8="e4m3", params_dtype="fp32", transformer_impl="auto"), "model.params_dtype=bf16"),
    (dict(fp8="e4m3", params_dtype="bf16", transformer_impl="local"), "model.transformer_impl"),
    (dict(fp8=None, fp8_param=True, **TE), "model.fp8_param=true needs model.fp8"),
])
def test_invalid_settings_name_the_key(kwargs, match):
    with pytest.raises(FP8ConfigError, match=match):
        check_fp8_config(ModelConfig(**kwargs), ParallelConfig())


def test_fp8_param_needs_the_distributed_optimizer():
    m = ModelConfig(fp8="e4m3", fp8_param=True, **TE)
    check_fp8_config(m, ParallelConfig(use_distributed_optimizer=True))
    with pytest.raises(FP8ConfigError, match="parallel.use_distributed_optimizer=true"):
        check_fp8_config(m, ParallelConfig(use_distributed_optimizer=False))


def test_gemm_dimensions_per_rank():
    # Qwen3-8B at TP=2: qkv 6144/2 x 4096, proj 4096 x 4096/2, fc1 24576/2 x 4096, fc2 4096 x 12288/2:
    # all multiples of 16
    shapes = {"linear_qkv": (6144, 4096), "linear_proj": (4096, 4096), "linear_fc1": (24576, 4096),
              "linear_fc2": (4096, 12288)}
    assert fp8_dim_problems(shapes, tp=2) == []
    # an intermediate size of 100 -> fc1 (200 / 2 = 100) x 64 and fc2 64 x 100 / 2 = 50: neither fits
    bad = fp8_dim_problems({"linear_fc1": (200, 64), "linear_fc2": (64, 100)}, tp=2)
    assert bad == ["model.fp8: linear_fc1 is 100 x 64 per TP rank (TP=2); TE's FP8 GEMMs need every dimension to "
                   "be a multiple of 16",
                   "model.fp8: linear_fc2 is 64 x 50 per TP rank (TP=2); TE's FP8 GEMMs need every dimension to "
                   "be a multiple of 16"]
    assert (fp8_token_multiple("delayed"), fp8_token_multiple("mxfp8")) == (16, 32)


def test_device_capability_rules():
    assert fp8_device_problem("delayed", (9, 0)) is None and fp8_device_problem("blockwise", (9, 0)) is None
    assert "compute capability >= 10.0" in fp8_device_problem("mxfp8", (9, 0))
    assert "compute capability >= 8.9" in fp8_device_problem("tensorwise", (8, 0))
    assert fp8_device_problem("delayed", None) == "no CUDA device"


def test_build_checks_the_keys_before_asking_for_a_gpu(tiny_qwen3_dir):
    from megatron_brrm.model.build import load_hf_config

    hf = load_hf_config(tiny_qwen3_dir)
    with pytest.raises(ModelBuildError, match="model.fp8_recipe='nope'"):
        transformer_config_from_hf(hf, ModelConfig(fp8="e4m3", fp8_recipe="nope", **TE), ParallelConfig())
    # valid keys on this CPU machine: the spec (not the key) is what is missing
    with pytest.raises(ModelBuildError, match="needs Transformer Engine on CUDA"):
        transformer_config_from_hf(hf, ModelConfig(fp8="hybrid", **TE), ParallelConfig())


def test_fp8_recipe_loads_and_validates():
    cfg = load_config(REPO_ROOT / "model_configs" / "qwen3_8b_fp8.yaml")
    assert (cfg.model.fp8, cfg.model.fp8_recipe, cfg.rollout.quantization) == ("e4m3", "blockwise", "fp8")
    check_fp8_config(cfg.model, cfg.parallel)
    base = load_config(REPO_ROOT / "model_configs" / "qwen3_8b.yaml")
    # the same run otherwise: only the FP8 keys, the TIS cap and the output names differ
    same = lambda c: dataclasses.replace(c, name="", model=dataclasses.replace(c.model, fp8=None, fp8_recipe="delayed"),
                                         grpo=dataclasses.replace(c.grpo, truncated_importance_sampling=None),
                                         rollout=dataclasses.replace(c.rollout, quantization=None),
                                         checkpoint=dataclasses.replace(c.checkpoint, save_dir=None),
                                         logging=dataclasses.replace(c.logging, output_dir=""))
    assert same(cfg) == same(base)
