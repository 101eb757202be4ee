"""GRPO advantages: hand-computed values (size-1 groups, all-equal rewards, a -100 outlier,
unequal group sizes) and an independent transcription of NeMo-RL's matrix formulation.

Tolerance: 1e-5 absolute on values of order 1-100 (float32 output; the eps=1e-6 added to
the std moves a value by at most |A| * 1e-6 / std).
"""
import math

import pytest
import torch

from megatron_brrm.rl.advantages import compute_grpo_advantages, expand_to_tokens

TOL = 1e-5


def _adv(rewards, ids, **kw):
    return compute_grpo_advantages(torch.tensor(rewards, dtype=torch.float32), ids, **kw)


def test_leave_one_out_nemo_rl_std_hand_values():
    # group "a" = [0, -1, 0, 0]; group "b" = [-100] (size 1); group "c" = [-1, -1, -1] (all equal)
    res = _adv([0, -1, -1, 0, -100, 0, -1, -1], ["a", "a", "c", "a", "b", "a", "c", "c"])
    s = math.sqrt(1 / 3)  # Bessel std of the other three rewards {-1, 0, 0}
    expected = [(1 / 3) / s, -1.0, 0.0, (1 / 3) / s, 0.0, (1 / 3) / s, 0.0, 0.0]
    # sample 1's other rewards are {0, 0, 0}: std 0 -> not divided, stays -1 (NeMo-RL behaviour)
    assert torch.allclose(res.advantages, torch.tensor(expected), atol=TOL)
    assert res.metrics["num_groups"] == 3 and res.metrics["num_singleton_groups"] == 1
    assert res.metrics["zero_variance_group_fraction"] == pytest.approx(0.5)  # "c" of {"a", "c"}
    assert res.metrics["zero_advantage_fraction"] == pytest.approx(4 / 8)


def test_minus_100_outlier_all_std_variants():
    r, ids = [0, 0, 0, -100], [7, 7, 7, 7]
    loo_nemo = _adv(r, ids).advantages
    # others of sample 0 = {0, 0, -100}: mean -100/3, Bessel std sqrt(30000/9)
    a0 = (100 / 3) / math.sqrt(30000 / 9)
    assert torch.allclose(loo_nemo, torch.tensor([a0, a0, a0, -100.0]), atol=TOL)
    loo_group = _adv(r, ids, std_type="group").advantages  # group std = 50
    assert torch.allclose(loo_group, torch.tensor([100 / 3 / 50] * 3 + [-100 / 50]), atol=TOL)
    mean_group = _adv(r, ids, leave_one_out_baseline=False).advantages  # mean -25, std 50
    assert torch.allclose(mean_group, torch.tensor([0.5, 0.5, 0.5, -1.5]), atol=TOL)
    raw = _adv(r, ids, normalize_by_std=False).advantages
    assert torch.allclose(raw, torch.tensor([100 / 3] * 3 + [-100.0]), atol=TOL)


def test_size_two_group_and_unequal_sizes():
    res = _adv([0, -1, 5, 1, 2], [0, 0, 1, 2, 2])
    # size 2, nemo_rl LOO std has one other sample -> 0, no division; size-1 group -> 0
    assert torch.allclose(res.advantages, torch.tensor([1.0, -1.0, 0.0, -1.0, 1.0]), atol=TOL)
    res_g = _adv([0, -1], [0, 0], std_type="group")
    assert torch.allclose(res_g.advantages, torch.tensor([1 / math.sqrt(0.5), -1 / math.sqrt(0.5)]), atol=TOL)


def test_all_equal_rewards_give_zero():
    res = _adv([-1.0] * 8, [3] * 8)
    assert torch.equal(res.advantages, torch.zeros(8))
    assert res.metrics["zero_variance_group_fraction"] == 1.0


def _nemo_rl_transcription(rewards, ids, loo):
    """NeMo-RL's calculate_baseline_and_std_per_prompt + normalisation, written from its
    formulas (matrix (1 - I) @ r / (n - 1), std from E[r^2] - E[r]^2 with Bessel factor)."""
    r = rewards.double()
    base = torch.zeros_like(r)
    std = torch.zeros_like(r)
    for g in sorted(set(ids)):
        idx = torch.tensor([i for i, x in enumerate(ids) if x == g])
        n = len(idx)
        if n <= 1:
            base[idx] = r[idx]
            continue
        mat = (1 - torch.eye(n, dtype=torch.float64)) if loo else torch.ones(n, n, dtype=torch.float64)
        m = n - int(loo)
        b = mat @ r[idx] / m
        b2 = mat @ r[idx] ** 2 / m
        base[idx] = b
        std[idx] = ((b2 - b ** 2) * (m / (m - 1))).sqrt().nan_to_num(0) if m > 1 else 0.0
    adv = r - base
    pos = std > 1e-9  # E[r^2]-E[r]^2 leaves ~1e-14 noise where the true std is 0
    adv[pos] = adv[pos] / (std[pos] + 1e-6)
    return adv


@pytest.mark.parametrize("loo", [True, False])
def test_matches_nemo_rl_formulation_random(loo):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (40,), generator=gen).tolist()
    rewards = torch.randint(-2, 1, (40,), generator=gen).float()
    rewards[5] = -100.0
    ours = compute_grpo_advantages(rewards, torch.tensor(ids), leave_one_out_baseline=loo).advantages
    ref = _nemo_rl_transcription(rewards, ids, loo).float()
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-5)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="one group id per trajectory"):
        _adv([0, 1], [0])
    with pytest.raises(ValueError, match=r"trajectories \[1\]"):
        _adv([0, float("nan")], [0, 0])
    with pytest.raises(ValueError, match="std_type"):
        _adv([0, 1], [0, 0], std_type="bogus")


def test_expand_to_tokens():
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    out = expand_to_tokens(torch.tensor([2.0, -1.0]), mask)
    assert torch.equal(out, torch.tensor([[0, 2.0, 2.0, 0], [0, 0, -1.0, -1.0]]))


def test_settings_from_run_config():
    from megatron_brrm.config import load_config
    from megatron_brrm.rl.advantages import advantages_from_config
    from megatron_brrm.rl.loss import ClippedPGConfig

    cfg = load_config(overrides=["grpo.advantage_std_type=group", "grpo.ratio_clip_c=3.0", "grpo.kl_type=k1"])
    res = advantages_from_config(torch.tensor([0.0, 0.0, 0.0, -100.0]), [1, 1, 1, 1], cfg.grpo)
    assert torch.allclose(res.advantages, torch.tensor([100 / 3 / 50] * 3 + [-2.0]), atol=TOL)  # group std 50
    pg = ClippedPGConfig.from_grpo_config(cfg.grpo)
    assert (pg.ratio_clip_low, pg.ratio_clip_high, pg.ratio_clip_c, pg.kl_coef, pg.kl_type) == (0.2, 0.28, 3.0, 0.001, "k1")
    assert pg.aggregation == "token_mean" and pg.truncated_importance_sampling is None
