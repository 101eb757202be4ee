"""grpo.lr_decay_style: the policy's learning-rate schedule against the textbook formulas.

The reference is written out here (linear warm-up, then linear or cosine decay as in
Loshchilov & Hutter 2017, "SGDR", eq. 5 without restarts), not taken from Megatron-Core, whose
``OptimizerParamScheduler`` the code under test wraps. Tolerance 1e-12: both sides are float64
arithmetic on the same inputs.
"""
from __future__ import annotations

import math

import pytest
import torch

from megatron_brrm.config import GRPOConfig
from megatron_brrm.workers.policy import build_lr_scheduler


def _reference_lr(step: int, g: GRPOConfig) -> float:
    lo = g.min_lr if g.min_lr is not None else g.lr
    if step < g.lr_warmup_steps:
        start = g.lr * g.lr_warmup_init_factor
        return start + (g.lr - start) * step / g.lr_warmup_steps
    t = min(1.0, (step - g.lr_warmup_steps) / (g.max_num_steps - g.lr_warmup_steps))
    if g.lr_decay_style == "constant":
        return g.lr
    if g.lr_decay_style == "linear":
        return g.lr - (g.lr - lo) * t
    return lo + (g.lr - lo) * 0.5 * (1 + math.cos(math.pi * t))


@pytest.mark.parametrize("style, warmup", [("constant", 0), ("linear", 0), ("cosine", 0), ("cosine", 4)])
def test_schedule_matches_formula(style, warmup):
    g = GRPOConfig(lr=1e-3, min_lr=1e-4, lr_decay_style=style, lr_warmup_steps=warmup, max_num_steps=20)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.5)
    sched = build_lr_scheduler(opt, g)
    seen = []
    for step in range(g.max_num_steps + 3):  # past the end the rate stays at min_lr (or lr)
        seen.append(opt.param_groups[0]["lr"])
        assert seen[-1] == pytest.approx(_reference_lr(step, g), rel=0, abs=1e-12), (style, step)
        sched.step(increment=1)
    end = g.lr if style == "constant" else g.min_lr
    assert seen[-1] == pytest.approx(end, abs=1e-12)
    if style != "constant":
        assert seen[warmup] == pytest.approx(g.lr) and len(set(seen)) > g.max_num_steps - warmup


def test_unknown_style_is_named():
    g = GRPOConfig(lr=1e-3, lr_decay_style="exp")
    with pytest.raises(ValueError, match="grpo.lr_decay_style"):
        build_lr_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), g)


def test_sft_keeps_a_constant_rate_whatever_the_grpo_schedule():
    """SFT reuses the policy workers with ``grpo.lr = sft.lr``; a GRPO warm-up or decay (sized by the
    GRPO step count) must not reach it: with cosine over 40 GRPO steps the SFT rate used to fall to
    ``grpo.min_lr`` by its step 40 and stay there."""
    from megatron_brrm.config import RunConfig
    from megatron_brrm.sft import sft_policy_config

    cfg = RunConfig()
    cfg.grpo.lr, cfg.grpo.min_lr, cfg.grpo.lr_decay_style, cfg.grpo.max_num_steps = 5e-4, 1e-4, "cosine", 40
    cfg.grpo.lr_warmup_steps = 10
    cfg.sft.lr, cfg.sft.num_steps = 3e-3, 150
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.5)
    sched = build_lr_scheduler(opt, sft_policy_config(cfg).grpo)
    rates = []
    for _ in range(cfg.sft.num_steps):
        rates.append(opt.param_groups[0]["lr"])
        sched.step(increment=1)
    assert rates == [3e-3] * cfg.sft.num_steps
    assert cfg.grpo.lr_decay_style == "cosine" and cfg.grpo.max_num_steps == 40  # the run's own config is untouched
