"""GRPO group-relative advantages (docs/design.md §6).

For every trajectory ``i`` in a group ``g`` (all samples of one prompt, identified by an
explicit group id, never by comparing prompt tokens) with ``n = |g|`` rewards ``r``:

* baseline, leave-one-out (RLOO, Ahmadian et al. 2024, arXiv 2402.14740; NeMo-RL
  ``calculate_baseline_and_std_per_prompt``): ``b_i = (sum_{j in g} r_j - r_i) / (n - 1)``;
  or the plain group mean ``b_i = mean_{j in g} r_j`` (DeepSeekMath GRPO, arXiv 2402.03300).
* advantage ``A_i = r_i - b_i``.
* optional scaling by a standard deviation ``s_i``: ``A_i <- A_i / (s_i + eps)`` only where
  ``s_i > 0`` (groups whose rewards are all equal keep ``A_i = 0`` and are not sharpened).

Which std (``std_type``):

* ``"nemo_rl"`` (default, what the BR-RM reference run used through NeMo-RL): the std is
  computed over the *same samples as the baseline*. With the leave-one-out baseline that
  is the Bessel-corrected sample std of the **other** ``n - 1`` rewards of the group, so it
  differs per sample (``m = n - 1``, ``s_i = sqrt(sum_{j != i} (r_j - b_i)^2 / (m - 1))``;
  for ``n = 2`` there is one other reward, ``m - 1 = 0``, and NeMo-RL's ``nan_to_num``
  gives ``s_i = 0``, i.e. no scaling). With the mean baseline it is the Bessel-corrected
  std of the whole group.
* ``"group"``: the Bessel-corrected std of the whole group, for every sample (verl's
  ``torch.std`` choice in ``compute_grpo_outcome_advantage``).

Groups of size 1 get advantage 0 (NeMo-RL sets their baseline to the reward). Stds are
computed with the two-pass formula in float64 (mathematically equal to NeMo-RL's
``E[r^2] - E[r]^2`` form, without its cancellation error); advantages are returned in
float32.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Hashable, Sequence, Union

import torch

GroupIds = Union[torch.Tensor, Sequence[Hashable]]

STD_TYPES = ("nemo_rl", "group")


@dataclass
class AdvantageResult:
    """Output of :func:`compute_grpo_advantages`.

    Attributes:
        advantages: float32 ``[B]``, one advantage per trajectory (same order as the input).
        baseline: float32 ``[B]``, the baseline subtracted from each reward.
        std: float32 ``[B]``, the std each advantage was divided by (0 = not divided).
        metrics: plain floats: ``num_groups``, ``num_singleton_groups``,
            ``zero_variance_group_fraction`` (groups of size >= 2 whose rewards are all
            equal, over all groups of size >= 2; 0 when there are none),
            ``zero_advantage_fraction`` (trajectories with ``A == 0``), ``reward_mean/std/min/max``,
            ``advantage_mean/std/min/max``.
    """

    advantages: torch.Tensor
    baseline: torch.Tensor
    std: torch.Tensor
    metrics: Dict[str, float] = field(default_factory=dict)


def _group_indices(group_ids: GroupIds, batch: int) -> Dict[Hashable, list]:
    if isinstance(group_ids, torch.Tensor):
        if group_ids.dim() != 1:
            raise ValueError(f"group_ids must be 1-D (one id per trajectory), got shape {tuple(group_ids.shape)}")
        ids = group_ids.tolist()
    else:
        ids = list(group_ids)
    if len(ids) != batch:
        raise ValueError(f"group_ids has {len(ids)} entries but rewards has {batch}; give one group id per trajectory")
    groups: Dict[Hashable, list] = {}
    for i, g in enumerate(ids):
        groups.setdefault(g, []).append(i)
    return groups


def compute_grpo_advantages(
    rewards: torch.Tensor,
    group_ids: GroupIds,
    leave_one_out_baseline: bool = True,
    normalize_by_std: bool = True,
    std_type: str = "nemo_rl",
    eps: float = 1e-6,
) -> AdvantageResult:
    """Group-relative advantages, one per trajectory (formulas in the module docstring).

    Args:
        rewards: ``[B]`` float rewards (any float dtype; BR-RM: 0 correct, -1 wrong, -100 malformed).
        group_ids: ``[B]`` tensor or sequence of hashable ids; equal id = same group (same prompt).
            Groups may have different sizes and need not be contiguous.
        leave_one_out_baseline: leave-one-out mean (True) or plain group mean (False).
        normalize_by_std: divide by the std where it is > 0.
        std_type: ``"nemo_rl"`` or ``"group"`` (module docstring).
        eps: added to the std before dividing (NeMo-RL uses 1e-6).

    Returns:
        :class:`AdvantageResult` (float32 tensors on ``rewards.device``).

    Raises:
        ValueError: wrong shapes, a non-finite reward (its index is named), unknown ``std_type``.
    """
    if std_type not in STD_TYPES:
        raise ValueError(f"std_type must be one of {STD_TYPES}, got {std_type!r}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"rewards must be finite; trajectories {bad[:10]} have {rewards[bad[:10]].tolist()}")
    batch = rewards.shape[0]
    groups = _group_indices(group_ids, batch)
    r = rewards.detach().to(torch.float64).cpu()
    baseline = torch.zeros(batch, dtype=torch.float64)
    std = torch.zeros(batch, dtype=torch.float64)
    num_singleton = 0
    num_multi = 0
    num_zero_var = 0
    for idx_list in groups.values():
        idx = torch.tensor(idx_list, dtype=torch.long)
        g = r[idx]
        n = g.numel()
        if n == 1:
            num_singleton += 1
            baseline[idx] = g  # advantage 0, as NeMo-RL does
            continue
        num_multi += 1
        if bool((g == g[0]).all()):
            num_zero_var += 1
        total = g.sum()
        group_mean = total / n
        group_std = ((g - group_mean).pow(2).sum() / (n - 1)).sqrt()
        if leave_one_out_baseline:
            loo_mean = (total - g) / (n - 1)
            baseline[idx] = loo_mean
            if std_type == "group":
                std[idx] = group_std
            else:
                m = n - 1  # the other samples
                if m <= 1:
                    std[idx] = 0.0
                else:
                    # sum over j != i of (r_j - b_i)^2 = sum_all (r_j - b_i)^2 - (r_i - b_i)^2
                    sq = (g.unsqueeze(0) - loo_mean.unsqueeze(1)).pow(2)  # [i, j]
                    ss = sq.sum(1) - sq.diagonal()
                    std[idx] = (ss.clamp(min=0.0) / (m - 1)).sqrt()
        else:
            baseline[idx] = group_mean
            std[idx] = group_std
    adv = r - baseline
    if normalize_by_std:
        pos = std > 0
        adv = torch.where(pos, adv / (std + eps), adv)
    else:
        std = torch.zeros_like(std)
    adv32 = adv.to(torch.float32)
    metrics = {
        "num_groups": float(len(groups)),
        "num_singleton_groups": float(num_singleton),
        "zero_variance_group_fraction": (num_zero_var / num_multi) if num_multi else 0.0,
        "zero_advantage_fraction": float((adv32 == 0).float().mean()) if batch else 0.0,
        "reward_mean": float(r.mean()) if batch else 0.0,
        "reward_std": float(r.std(unbiased=False)) if batch else 0.0,
        "reward_min": float(r.min()) if batch else 0.0,
        "reward_max": float(r.max()) if batch else 0.0,
        "advantage_mean": float(adv.mean()) if batch else 0.0,
        "advantage_std": float(adv.std(unbiased=False)) if batch else 0.0,
        "advantage_min": float(adv.min()) if batch else 0.0,
        "advantage_max": float(adv.max()) if batch else 0.0,
    }
    dev = rewards.device
    return AdvantageResult(adv32.to(dev), baseline.to(torch.float32).to(dev), std.to(torch.float32).to(dev), metrics)


def expand_to_tokens(advantages: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Broadcast per-trajectory advantages to tokens: all generated tokens of a trajectory
    (both BR-RM turns) share its advantage (docs/design.md §1).

    Args:
        advantages: float ``[B]``.
        loss_mask: ``[B, T]`` (bool or 0/1), 1 on generated tokens.

    Returns:
        float32 ``[B, T]``: ``advantages[b]`` where ``loss_mask[b, t]`` else 0.

    Raises:
        ValueError: batch sizes differ.
    """
    if advantages.dim() != 1 or loss_mask.dim() != 2 or advantages.shape[0] != loss_mask.shape[0]:
        raise ValueError(f"advantages [B] and loss_mask [B, T] must agree, got {tuple(advantages.shape)} "
                         f"and {tuple(loss_mask.shape)}")
    return advantages.to(torch.float32).unsqueeze(1) * loss_mask.to(torch.float32)


def advantages_from_config(rewards: torch.Tensor, group_ids: GroupIds, grpo_cfg) -> AdvantageResult:
    """:func:`compute_grpo_advantages` with the settings of a
    :class:`megatron_brrm.config.GRPOConfig` (``use_leave_one_out_baseline``,
    ``normalize_rewards_by_std``, ``advantage_std_type``)."""
    return compute_grpo_advantages(rewards, group_ids, leave_one_out_baseline=grpo_cfg.use_leave_one_out_baseline,
                                   normalize_by_std=grpo_cfg.normalize_rewards_by_std,
                                   std_type=getattr(grpo_cfg, "advantage_std_type", "nemo_rl"))
