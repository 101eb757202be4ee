"""HF config -> Megatron TransformerConfig translation, RoPE settings and recipe layouts.

The expected values are the HF config's own fields (docs/design.md §8 lists the mapping);
the Qwen3-8B / 14B configs below are the public ``config.json`` values of those models.
"""
from __future__ import annotations

import json

import pytest
import torch

from megatron_brrm.config import ModelConfig, ParallelConfig, load_config
from megatron_brrm.model.architectures import UnsupportedArchitectureError
from megatron_brrm.model.build import ModelBuildError, load_hf_config, rope_settings, transformer_config_from_hf
from megatron_brrm.model.mapping import get_mapping

QWEN3_8B = dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], hidden_size=4096, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, intermediate_size=12288,
                vocab_size=151936, rms_norm_eps=1e-6, rope_theta=1000000, max_position_embeddings=40960,
                tie_word_embeddings=False, hidden_act="silu", attention_bias=False)
QWEN3_14B = {**QWEN3_8B, "hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 40,
             "intermediate_size": 17408}


@pytest.mark.parametrize("recipe,hf", [("qwen3_8b.yaml", QWEN3_8B), ("qwen3_14b_tp4pp2.yaml", QWEN3_14B)])
def test_recipe_layouts_fit_their_models(repo_root, recipe, hf):
    cfg = load_config(repo_root / "model_configs" / recipe)
    tc = transformer_config_from_hf(hf, cfg.model, cfg.parallel)
    tp, pp = cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size
    assert tc.params_dtype == torch.bfloat16 and tc.bf16 and tc.sequence_parallel
    assert tc.num_query_groups % tp == 0 and tc.num_attention_heads % tp == 0 and tc.num_layers % pp == 0
    assert tc.recompute_granularity == "full"
    vocab = get_mapping(hf, tp_size=tp, make_vocab_size_divisible_by=cfg.model.make_vocab_size_divisible_by)
    assert vocab.padded_vocab_size == 152576  # 149 * 1024: the same rows at TP 1, 2, 4 and 8 (portable checkpoints)
    assert vocab.padded_vocab_size % (128 * tp) == 0


def test_qwen3_fields_follow_hf_config(tiny_qwen3_dir):
    hf = load_hf_config(tiny_qwen3_dir)
    raw = json.loads((tiny_qwen3_dir / "config.json").read_text())
    tc = transformer_config_from_hf(hf, ModelConfig(), ParallelConfig(tensor_model_parallel_size=2))
    assert (tc.num_layers, tc.hidden_size, tc.ffn_hidden_size) == (raw["num_hidden_layers"], raw["hidden_size"],
                                                                  raw["intermediate_size"])
    assert (tc.num_attention_heads, tc.num_query_groups, tc.kv_channels) == (raw["num_attention_heads"],
                                                                            raw["num_key_value_heads"], raw["head_dim"])
    assert tc.kv_channels != tc.hidden_size // tc.num_attention_heads  # head_dim set explicitly
    assert tc.layernorm_epsilon == raw["rms_norm_eps"] and tc.normalization == "RMSNorm"
    assert tc.qk_layernorm and tc.gated_linear_unit and tc.activation_func is torch.nn.functional.silu
    assert not tc.add_bias_linear and not tc.add_qkv_bias
    assert tc.hidden_dropout == 0.0 and tc.attention_dropout == 0.0
    # CPU: every fusion off (bias_dropout_fusion alone costs a 13 s compile per process)
    assert not (tc.bias_activation_fusion or tc.bias_dropout_fusion or tc.masked_softmax_fusion
                or tc.apply_rope_fusion or tc.gradient_accumulation_fusion)
    assert rope_settings(hf) == {"rotary_base": raw["rope_parameters"]["rope_theta"], "rope_scaling": False,
                                 "rope_scaling_factor": 8.0}


def test_llama_has_no_qk_layernorm(tiny_llama_dir):
    tc = transformer_config_from_hf(load_hf_config(tiny_llama_dir), ModelConfig(), ParallelConfig())
    assert not tc.qk_layernorm and tc.kv_channels == 16


def test_rope_settings_both_transformers_layouts():
    assert rope_settings({"rope_theta": 5e5})["rotary_base"] == 5e5  # transformers 4.x
    assert rope_settings({"rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}})["rotary_base"] == 1e6
    llama31 = {"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    assert rope_settings(llama31) == {"rotary_base": 5e5, "rope_scaling": True, "rope_scaling_factor": 8.0}
    with pytest.raises(ModelBuildError, match="high_freq_factor"):
        rope_settings({"rope_parameters": {**llama31["rope_parameters"], "high_freq_factor": 2.0}})
    with pytest.raises(ModelBuildError, match="rope_type='yarn'"):
        rope_settings({"rope_parameters": {"rope_theta": 1e6, "rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ModelBuildError, match="no rope_theta"):
        rope_settings({})


def test_bad_configs_give_clear_errors(tmp_path):
    with pytest.raises(UnsupportedArchitectureError, match=r"model_type='gemma'.*supported model types: qwen3"):
        transformer_config_from_hf({**QWEN3_8B, "model_type": "gemma"}, ModelConfig(), ParallelConfig())
    with pytest.raises(ModelBuildError, match="num_key_value_heads=8 is not divisible by parallel.tensor_model"):
        transformer_config_from_hf(QWEN3_8B, ModelConfig(), ParallelConfig(tensor_model_parallel_size=16))
    with pytest.raises(ModelBuildError, match="params_dtype='fp64'"):
        transformer_config_from_hf(QWEN3_8B, ModelConfig(params_dtype="fp64"), ParallelConfig())
    with pytest.raises(ModelBuildError, match="attention_bias"):
        transformer_config_from_hf({**QWEN3_8B, "attention_bias": True}, ModelConfig(), ParallelConfig())
    with pytest.raises(ModelBuildError, match="transformer_engine.*needs Transformer Engine"):
        transformer_config_from_hf(QWEN3_8B, ModelConfig(transformer_impl="transformer_engine"), ParallelConfig())
    with pytest.raises(ModelBuildError, match=f"no HF config.json at {tmp_path}"):
        load_hf_config(tmp_path)
