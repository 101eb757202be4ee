"""The RM-R1 recipes load and carry RM-R1's hyper-parameters (values copied by hand from RM-R1 @
d4c2542: rm_r1/scripts/Distill/local/distill_qwen2.5-7b-instruct.sh with OpenRLHF train_sft's
defaults, and rm_r1/scripts/RLVR/local/train_rm_r1_rlvr_qwen2.5_instruct_7b.sh with
rm_r1/verl/trainer/config/ppo_trainer.yaml)."""
from __future__ import annotations

from pathlib import Path

import pytest

from megatron_brrm.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_rmr1_sft_recipe():
    c = load_config(REPO / "model_configs" / "rmr1_qwen3_8b_sft.yaml")
    assert c.judge.protocol == "rmr1" and c.model.hf_path == "Qwen/Qwen3-8B"
    o = c.sft.optimizer
    assert (o.lr, c.sft.global_batch_size, c.grpo.micro_batch_size) == (5e-6, 128, 1)
    assert (o.adam_beta1, o.adam_beta2, o.weight_decay, o.clip_grad) == (0.9, 0.95, 0.0, 1.0)
    # OpenRLHF cosine_with_min_lr: 3% warm-up from 0 (ceil(0.03 * 68) = 3), cosine down to 0.1 x lr
    assert (o.lr_decay_style, o.lr_warmup_steps, o.lr_warmup_init_factor, o.min_lr) == ("cosine", 3, 0.0, 5e-7)
    assert c.rollout.max_total_sequence_length == 12288
    assert c.sft.num_steps == 68  # one epoch of 8.7K traces at 128 per step: ceil(8700 / 128)


def test_rmr1_grpo_recipe():
    c = load_config(REPO / "model_configs" / "rmr1_qwen3_8b_grpo.yaml")
    sft = load_config(REPO / "model_configs" / "rmr1_qwen3_8b_sft.yaml")
    assert c.model.hf_path == sft.sft.output_hf_dir  # stage 2 starts from stage 1's output
    assert c.judge.protocol == "rmr1"
    assert (c.judge.reward.correct, c.judge.reward.wrong, c.judge.reward.malformed) == (1.0, -1.0, -1.0)
    g = c.grpo
    assert (g.num_prompts_per_step, g.num_generations, g.global_batch_size) == (1024, 7, 128 * 7)
    o = g.optimizer
    assert (o.lr, o.lr_warmup_steps, o.lr_decay_style) == (1e-6, 0, "constant")
    assert (g.ratio_clip_low, g.ratio_clip_high, g.kl_coef, g.kl_type) == (0.2, 0.2, 0.001, "k3")
    assert (o.clip_grad, o.weight_decay, o.adam_beta2) == (1.0, 0.01, 0.999)
    assert (g.use_leave_one_out_baseline, g.advantage_std_type) == (False, "group")
    assert (c.rollout.temperature, c.rollout.top_p, c.rollout.max_new_tokens_turn1) == (1.0, 1.0, 8192)
    assert (c.data.max_prompt_tokens, c.rollout.max_total_sequence_length) == (4096, 4096 + 8192)
    assert g.max_num_steps == pytest.approx(64_000 / 1024, abs=1)  # one epoch of ~64K RLVR pairs
