"""Learning-rate schedules (``grpo.optimizer``, ``sft.optimizer``) against the textbook formulas.

The reference is written out here (linear warm-up, then constant, linear or cosine decay as in
Loshchilov & Hutter 2017, "SGDR", eq. 5 without restarts, or WSD: warm-up, stable, then a final
decay over the last D steps, Hu et al. 2024, "MiniCPM"), not taken from Megatron-Core, whose
``OptimizerParamScheduler`` the code under test wraps. Tolerance 1e-12: both sides are float64
arithmetic on the same inputs.
"""
from __future__ import annotations

import math

import pytest
import torch

from megatron_brrm.config import ConfigError, OptimizerConfig, RunConfig, load_config
from megatron_brrm.workers.lr_schedule import build_lr_scheduler


def _reference_lr(step: int, o: OptimizerConfig, total: int) -> float:
    lo = o.min_lr if o.min_lr is not None else o.lr
    w = o.lr_warmup_steps
    if step < w:
        start = o.lr * o.lr_warmup_init_factor
        return start + (o.lr - start) * step / w
    if o.lr_decay_style == "constant":
        return o.lr
    if o.lr_decay_style == "WSD":
        d = o.lr_wsd_decay_steps
        if step <= total - d:
            return o.lr
        u = min(1.0, (step - (total - d)) / d)
        coeff = {"linear": 1 - u, "cosine": 0.5 * (1 + math.cos(math.pi * u)),
                 "exponential": 2 * 0.5 ** u - 1, "minus_sqrt": 1 - math.sqrt(u)}[o.lr_wsd_decay_style]
        return lo + (o.lr - lo) * coeff
    t = min(1.0, (step - w) / (total - w))
    if o.lr_decay_style == "linear":
        return o.lr - (o.lr - lo) * t
    return lo + (o.lr - lo) * 0.5 * (1 + math.cos(math.pi * t))


def _rates(o: OptimizerConfig, total: int, steps: int):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.5)
    sched = build_lr_scheduler(opt, o, total)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        sched.step(increment=1)
    return out


@pytest.mark.parametrize("style, warmup, wsd", [("constant", 0, None), ("linear", 0, None), ("cosine", 0, None),
                                                ("cosine", 4, None), ("WSD", 3, ("linear", 6)),
                                                ("WSD", 0, ("cosine", 5)), ("WSD", 2, ("minus_sqrt", 8)),
                                                ("WSD", 2, ("exponential", 4))])
def test_schedule_matches_formula(style, warmup, wsd):
    o = OptimizerConfig(lr=1e-3, min_lr=1e-4, lr_decay_style=style, lr_warmup_steps=warmup,
                        lr_wsd_decay_style=wsd[0] if wsd else "linear", lr_wsd_decay_steps=wsd[1] if wsd else None)
    total = 20
    seen = _rates(o, total, total + 3)  # past the end the rate stays at min_lr (or lr)
    for step, lr in enumerate(seen):
        assert lr == pytest.approx(_reference_lr(step, o, total), rel=0, abs=1e-12), (style, step)
    end = o.lr if style == "constant" else o.min_lr
    assert seen[-1] == pytest.approx(end, abs=1e-12)
    if style == "WSD":  # stable at lr between the warm-up and the final decay
        assert all(lr == pytest.approx(o.lr) for lr in seen[warmup:total - wsd[1] + 1])
    elif style != "constant":
        assert seen[warmup] == pytest.approx(o.lr) and len(set(seen)) > total - warmup


def test_bad_schedules_fail_at_load_with_the_key():
    with pytest.raises(ConfigError, match=r"grpo.optimizer.lr_decay_style='exp' is not one of 'constant'"):
        load_config(None, ["grpo.optimizer.lr_decay_style=exp"])
    with pytest.raises(ConfigError, match=r"sft.optimizer.lr_decay_style=WSD needs sft.optimizer.lr_wsd_decay_steps"):
        load_config(None, ["sft.optimizer.lr_decay_style=WSD"])
    with pytest.raises(ConfigError, match=r"grpo.optimizer.min_lr=0.1 exceeds grpo.optimizer.lr"):
        load_config(None, ["grpo.optimizer.min_lr=0.1"])
    with pytest.raises(ConfigError, match=r"'grpo.lr'.*moved to 'grpo.optimizer.lr'"):
        load_config(None, ["grpo.lr=1e-6"])


def test_sft_and_grpo_have_their_own_optimizers():
    """The SFT driver gives the policy workers ``sft.optimizer`` over ``sft.num_steps``: a GRPO warm-up or
    decay (sized by the GRPO run) never reaches it (the SFT rate once fell to ``grpo.min_lr`` by its step 40
    because SFT copied the GRPO section)."""
    cfg = RunConfig()
    cfg.grpo.optimizer = OptimizerConfig(lr=5e-4, min_lr=1e-4, lr_decay_style="cosine", lr_warmup_steps=10)
    cfg.grpo.max_num_steps = 40
    cfg.sft.optimizer = OptimizerConfig(lr=3e-3)
    cfg.sft.num_steps = 150
    assert _rates(cfg.sft.optimizer, cfg.sft.num_steps, cfg.sft.num_steps) == [3e-3] * 150
    warm = _rates(cfg.grpo.optimizer, 40, 11)
    assert warm[0] == pytest.approx(5e-5) and warm[10] == pytest.approx(5e-4)


def test_grpo_schedule_counts_optimizer_steps():
    """The GRPO schedule runs over max_num_steps x the optimizer steps per rollout batch (128 x 8 / 256 = 4):
    a cosine decay over 10 GRPO steps reaches min_lr at optimizer step 40, not 10."""
    from megatron_brrm.config import optimizer_steps_per_rollout

    cfg = load_config(None, ["grpo.max_num_steps=10", "grpo.optimizer.lr_warmup_steps=0",
                             "grpo.optimizer.lr_decay_style=cosine", "grpo.optimizer.lr=1e-3", "grpo.optimizer.min_lr=0"])
    assert optimizer_steps_per_rollout(cfg) == 4
    total = cfg.grpo.max_num_steps * optimizer_steps_per_rollout(cfg)
    rates = _rates(cfg.grpo.optimizer, total, 41)
    assert rates[20] == pytest.approx(0.5e-3) and rates[40] == pytest.approx(0.0, abs=1e-15)
