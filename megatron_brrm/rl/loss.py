"""Losses for GRPO (clipped policy gradient + KL), SFT (masked NLL) and Bradley-Terry reward models.

Conventions shared by every loss here:

* Token tensors are ``[B, T]`` and aligned to **input positions**: ``logprobs[b, t]`` is
  ``log p(input_ids[b, t] | input_ids[b, :t])`` (position 0 has no prediction and is 0;
  see :mod:`megatron_brrm.rl.logprobs`). ``loss_mask[b, t] = 1`` exactly on generated
  tokens, so it lines up with the token ids and with the rollout engine's logprobs.
* **Global normalisation.** A loss is called once per micro-batch, but is normalised by
  counts over the *whole global batch* (all micro-batches, all DP ranks), passed in as a
  :class:`Normalizer`. The sum of the micro-batch losses is then exactly the full-batch
  loss, whatever the micro-batch split (NeMo-RL ``masked_mean(...,
  global_normalization_factor)``; the pitfall list in ``reference/rl_stacks.md`` 5.8). The
  caller (the policy worker) cancels Megatron's per-micro-batch averaging and DDP's
  DP averaging by multiplying by ``num_microbatches * dp_size``.
* **Metrics** are returned as a dict of 0-dim float tensors. Keys ending in ``_max`` are
  reduced with ``max`` across micro-batches and ranks, every other key with ``sum`` (each
  is already divided by the global count, so the sum is the global mean).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

Metrics = Dict[str, torch.Tensor]

AGGREGATIONS = ("token_mean", "seq_mean")
KL_TYPES = ("k1", "k3")


@dataclass(frozen=True)
class Normalizer:
    """Global denominators for one optimizer step.

    Attributes:
        num_tokens: number of loss-mask tokens in the global batch (all micro-batches, DP ranks).
        num_seqs: number of sequences with at least one loss-mask token in the global batch.
    """

    num_tokens: float
    num_seqs: float

    @staticmethod
    def local_counts(loss_mask: torch.Tensor) -> torch.Tensor:
        """float64 ``[2]`` = (tokens, sequences with >= 1 token) of a local ``[B, T]`` mask;
        sum it over micro-batches and all-reduce it over DP to build the global Normalizer."""
        m = loss_mask.to(torch.float64)
        return torch.stack([m.sum(), (m.sum(-1) > 0).to(torch.float64).sum()])


@dataclass
class ClippedPGConfig:
    """Clipped policy-gradient loss settings (defaults = BR-RM recipe, docs/design.md §6).

    Attributes:
        ratio_clip_low / ratio_clip_high: ``eps_low`` / ``eps_high`` of the ratio clip
            ``clip(r, 1 - eps_low, 1 + eps_high)`` (DAPO "clip-higher", arXiv 2503.14476).
        ratio_clip_c: dual-clip constant ``c > 1`` for negative advantages (Ye et al. 2020,
            arXiv 1912.09729; verl ``clip_ratio_c``), None = off.
        kl_coef: ``beta`` of the KL penalty to the reference policy; 0 = off.
        kl_type: ``k1`` (``log pi - log pi_ref``) or ``k3`` (``exp(d) - 1 - d`` with
            ``d = log pi_ref - log pi``), Schulman, "Approximating KL divergence" (2020).
        kl_input_clamp / kl_output_clamp: clamp ``d`` to ``[-a, a]`` and the KL to ``[-b, b]``
            (NeMo-RL defaults 20 / 10; None = no clamp). Clamped tokens get no KL gradient.
        truncated_importance_sampling: cap ``C`` of the truncated IS weight
            ``min(exp(logp_old - logp_rollout), C)`` that corrects the train/rollout mismatch
            (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
            training"; verl/NeMo-RL TIS). None = off.
        aggregation: ``token_mean`` (sum over all valid tokens / global token count, DAPO)
            or ``seq_mean`` (per-sequence token mean, summed / global sequence count, GRPO paper).
    """

    ratio_clip_low: float = 0.2
    ratio_clip_high: float = 0.28
    ratio_clip_c: Optional[float] = None
    kl_coef: float = 0.001
    kl_type: str = "k3"
    kl_input_clamp: Optional[float] = 20.0
    kl_output_clamp: Optional[float] = 10.0
    truncated_importance_sampling: Optional[float] = None
    aggregation: str = "token_mean"

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"grpo.loss_aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.kl_type not in KL_TYPES:
            raise ValueError(f"grpo.kl_type must be one of {KL_TYPES}, got {self.kl_type!r}")
        if self.ratio_clip_c is not None and self.ratio_clip_c <= 1.0:
            raise ValueError(f"grpo.ratio_clip_c must be > 1 (dual clip), got {self.ratio_clip_c}")
        if self.ratio_clip_low < 0 or self.ratio_clip_high < 0:
            raise ValueError("grpo.ratio_clip_low / ratio_clip_high must be >= 0")
        if self.truncated_importance_sampling is not None and self.truncated_importance_sampling <= 0:
            raise ValueError("grpo.truncated_importance_sampling must be > 0 or null")

    @classmethod
    def from_grpo_config(cls, g) -> "ClippedPGConfig":
        """Build from :class:`megatron_brrm.config.GRPOConfig` (duck-typed)."""
        return cls(ratio_clip_low=g.ratio_clip_low, ratio_clip_high=g.ratio_clip_high, ratio_clip_c=g.ratio_clip_c,
                   kl_coef=g.kl_coef, kl_type=g.kl_type, kl_output_clamp=g.kl_clamp,
                   truncated_importance_sampling=g.truncated_importance_sampling, aggregation=g.loss_aggregation)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kl_type: str = "k3",
               input_clamp: Optional[float] = 20.0, output_clamp: Optional[float] = 10.0) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled-token logprobs (Schulman 2020).

    ``d = ref_logprobs - logprobs`` (clamped to ``[-input_clamp, input_clamp]``);
    k1 = ``-d``; k3 = ``exp(d) - 1 - d`` (>= 0, unbiased, low variance); the result is
    clamped to ``[-output_clamp, output_clamp]`` (NeMo-RL ``calculate_kl``).

    Args:
        logprobs, ref_logprobs: float ``[B, T]``.
    Returns:
        float ``[B, T]`` (differentiable w.r.t. ``logprobs``).
    """
    d = ref_logprobs - logprobs
    if input_clamp is not None:
        d = d.clamp(-input_clamp, input_clamp)
    if kl_type == "k1":
        kl = -d
    elif kl_type == "k3":
        kl = torch.exp(d) - 1 - d
    else:
        raise ValueError(f"kl_type must be one of {KL_TYPES}, got {kl_type!r}")
    if output_clamp is not None:
        kl = kl.clamp(-output_clamp, output_clamp)
    return kl


def _aggregate(per_token: torch.Tensor, mask: torch.Tensor, aggregation: str, norm: Normalizer,
               segment_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    if aggregation == "token_mean":
        return (per_token * mask).sum() / max(float(norm.num_tokens), 1.0)
    if segment_ids is None:  # one sequence per row
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.sum() / max(float(norm.num_seqs), 1.0)
    # packed rows: several sequences per row, told apart by segment_ids (-1 = padding)
    rows, length = segment_ids.shape
    uid = (segment_ids + torch.arange(rows, device=segment_ids.device).unsqueeze(1) * length).flatten()
    valid = segment_ids.flatten() >= 0
    sums = per_token.new_zeros(rows * length).index_add(0, uid[valid], (per_token * mask).flatten()[valid])
    counts = mask.new_zeros(rows * length).index_add(0, uid[valid], mask.flatten()[valid])
    return (sums / counts.clamp(min=1.0)).sum() / max(float(norm.num_seqs), 1.0)


def _check(name: str, t: Optional[torch.Tensor], shape) -> None:
    if t is None:
        raise KeyError(f"loss batch is missing '{name}' (a [B, T] tensor aligned to input positions)")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"loss batch '{name}' has shape {tuple(t.shape)}, expected {tuple(shape)} like logprobs")


def clipped_pg_loss(logprobs: torch.Tensor, batch: Mapping[str, torch.Tensor], cfg: ClippedPGConfig,
                    norm: Normalizer, entropy: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Metrics]:
    """GRPO loss of one micro-batch: clipped surrogate (+ dual clip, TIS) + beta * KL.

    Per token, with ``r = exp(logp - logp_old)`` and advantage ``A`` (PPO, Schulman et al.
    2017, arXiv 1707.06347; asymmetric clip from DAPO):

        pg = max(-A * r, -A * clip(r, 1 - eps_low, 1 + eps_high))
        pg = min(pg, -A * c)                     where A < 0 and dual clip is on
        pg = w * pg, w = min(exp(logp_old - logp_rollout), C).detach()   (TIS, optional)
        loss_t = pg + beta * KL_t(logp, logp_ref)

    then aggregated over ``loss_mask`` tokens with the global :class:`Normalizer`
    (``token_mean`` or ``seq_mean``). This matches TRL ``GRPOTrainer`` with
    ``loss_type="dapo"`` (token_mean), ``epsilon``/``epsilon_high``, ``beta`` and
    ``vllm_importance_sampling_mode="token_truncate"`` (verified in tests/rl/test_loss.py).
    The KL term is not importance-weighted (NeMo-RL's optional on-policy-KL weighting is not used).

    Args:
        logprobs: float ``[B, T]``, current policy logprobs (requires grad).
        batch: ``loss_mask`` ``[B, T]`` (0/1 or bool, generated tokens); optional
            ``segment_ids`` ``[B, T]`` (packed rows: sequence index per token, -1 = padding,
            used by ``seq_mean``); ``advantages``
            ``[B]`` or ``[B, T]``; ``old_logprobs`` ``[B, T]`` (optional: default
            ``logprobs.detach()``, i.e. fully on-policy); ``ref_logprobs`` ``[B, T]``
            (required when ``kl_coef > 0``); ``rollout_logprobs`` ``[B, T]`` (required for TIS;
            used for the mismatch metric when present).
        cfg: :class:`ClippedPGConfig`.
        norm: global counts (:class:`Normalizer`).
        entropy: optional float ``[B, T]`` exact per-token entropy (for the metric only).

    Returns:
        ``(loss, metrics)``: a 0-dim loss and metrics (module docstring for reduction):
        ``loss``, ``policy_loss``, ``kl``, ``clip_fraction`` (tokens whose clip is active:
        ``r < 1-eps_low, A < 0`` or ``r > 1+eps_high, A > 0``), ``dual_clip_fraction``,
        ``ratio_mean``, ``ratio_max``, ``approx_entropy`` (``-w' * logp`` with
        ``w' = exp(logp - logp_rollout)``, the importance-weighted sampled-token estimate of
        NeMo-RL), ``entropy`` (when given), ``train_rollout_mismatch``
        (``exp(|logp_rollout - logp_old|)``, NeMo-RL ``token_mult_prob_error``; ~1.0 when
        trainer and engine agree), ``is_weight_mean`` (TIS).

    Raises:
        KeyError / ValueError: a required batch key is missing or has the wrong shape.
    """
    shape = logprobs.shape
    mask = batch.get("loss_mask")
    _check("loss_mask", mask, shape)
    mask = mask.to(logprobs.dtype)
    adv = batch.get("advantages")
    if adv is None:
        raise KeyError("loss batch is missing 'advantages' ([B] or [B, T])")
    adv = adv.to(logprobs.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(1)
    old = batch.get("old_logprobs")
    if old is None:
        old = logprobs.detach()
    _check("old_logprobs", old, shape)
    rollout = batch.get("rollout_logprobs")
    if rollout is not None:
        _check("rollout_logprobs", rollout, shape)

    log_ratio = logprobs - old
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - cfg.ratio_clip_low, 1.0 + cfg.ratio_clip_high)
    pg = torch.maximum(-adv * ratio, -adv * clipped)
    dual_active = torch.zeros_like(pg, dtype=torch.bool)
    if cfg.ratio_clip_c is not None:
        bound = -adv * cfg.ratio_clip_c
        dual_active = (adv < 0) & (pg > bound)
        pg = torch.where(adv < 0, torch.minimum(pg, bound), pg)
    is_weight = None
    if cfg.truncated_importance_sampling is not None:
        if rollout is None:
            raise KeyError("truncated importance sampling needs 'rollout_logprobs' (the engine's logprobs) "
                           "in the batch")
        is_weight = torch.exp(old - rollout).clamp(max=cfg.truncated_importance_sampling).detach()
        pg = pg * is_weight
    per_token = pg
    kl = None
    if cfg.kl_coef != 0.0:
        ref = batch.get("ref_logprobs")
        _check("ref_logprobs", ref, shape)
        kl = kl_penalty(logprobs, ref, cfg.kl_type, cfg.kl_input_clamp, cfg.kl_output_clamp)
        per_token = pg + cfg.kl_coef * kl
    seg = batch.get("segment_ids")
    loss = _aggregate(per_token, mask, cfg.aggregation, norm, seg)

    with torch.no_grad():
        ntok = max(float(norm.num_tokens), 1.0)
        tmean = lambda x: (x.to(logprobs.dtype) * mask).sum() / ntok  # noqa: E731
        clip_active = ((ratio < 1 - cfg.ratio_clip_low) & (adv < 0)) | ((ratio > 1 + cfg.ratio_clip_high) & (adv > 0))
        lp = logprobs.detach()
        behaviour = rollout if rollout is not None else old
        metrics: Metrics = {
            "loss": loss.detach().clone(),
            "policy_loss": _aggregate(pg.detach(), mask, cfg.aggregation, norm, seg),
            "clip_fraction": tmean(clip_active),
            "dual_clip_fraction": tmean(dual_active),
            "ratio_mean": tmean(ratio.detach()),
            "ratio_max": (ratio.detach() * mask + (mask - 1) * 1e30).max() if mask.numel() else lp.new_zeros(()),
            "approx_entropy": tmean(-torch.exp(lp - behaviour) * lp),
        }
        if kl is not None:
            metrics["kl"] = tmean(kl.detach())
        if entropy is not None:
            metrics["entropy"] = tmean(entropy.detach())
        if rollout is not None:
            metrics["train_rollout_mismatch"] = tmean(torch.exp((rollout - old).abs()))
        if is_weight is not None:
            metrics["is_weight_mean"] = tmean(is_weight)
    return loss, metrics


def sft_nll_loss(logprobs: torch.Tensor, batch: Mapping[str, torch.Tensor], norm: Normalizer,
                 aggregation: str = "token_mean") -> Tuple[torch.Tensor, Metrics]:
    """Masked negative log-likelihood for SFT / distillation of judge traces (RM-R1 style).

    ``loss = sum_{b,t} -logp[b,t] * mask[b,t] / N_tokens`` (token_mean, global count) or the
    per-sequence token mean summed over sequences / ``N_seqs`` (seq_mean).

    Args:
        logprobs: float ``[B, T]`` aligned to input positions.
        batch: ``loss_mask`` ``[B, T]`` (1 on target tokens).
        norm: global counts.
        aggregation: ``token_mean`` | ``seq_mean``.
    Returns:
        ``(loss, {"loss", "nll", "num_tokens"})``; ``nll`` is the token mean (for perplexity).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    mask = batch.get("loss_mask")
    _check("loss_mask", mask, logprobs.shape)
    mask = mask.to(logprobs.dtype)
    loss = _aggregate(-logprobs, mask, aggregation, norm, batch.get("segment_ids"))
    with torch.no_grad():
        nll = (-logprobs.detach() * mask).sum() / max(float(norm.num_tokens), 1.0)
        metrics = {"loss": loss.detach().clone(), "nll": nll, "num_tokens": mask.sum()}
    return loss, metrics


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       num_pairs_global: float, margin: Optional[torch.Tensor | float] = None,
                       center_coef: float = 0.0) -> Tuple[torch.Tensor, Metrics]:
    """Pairwise Bradley-Terry reward-model loss with an optional margin and reward centering.

    Per pair ``i`` (Bradley & Terry 1952; InstructGPT eq. 1, arXiv 2203.02155; verl's and
    NeMo-RL's BT losses are the ``m = 0, c = 0`` case):

        loss_i = -log sigmoid(r_chosen_i - r_rejected_i - m_i) + c * (r_chosen_i + r_rejected_i)^2

    ``m_i`` is the Llama-2 RM margin (Touvron et al. 2023, arXiv 2307.09288, eq. 2); the second
    term is the reward-centering auxiliary loss of Eisenstein et al. 2023 ("Helping or Herding?
    Reward Model Ensembles Mitigate but do not Eliminate Reward Hacking", arXiv 2312.09244),
    which pins the BT model's free additive constant near 0. The loss is
    ``sum_i loss_i / num_pairs_global`` (global normalisation, module docstring).

    Args:
        chosen_rewards, rejected_rewards: float ``[P]`` scalar rewards of each pair.
        num_pairs_global: number of pairs in the global batch (all micro-batches, DP ranks).
        margin: optional margin, a float or float ``[P]``; default 0.
        center_coef: ``c`` >= 0 (0 = off).
    Returns:
        ``(loss, metrics)``, all sum-reduced (already divided by the global count):
        ``loss``, ``bt_loss`` (the first term), ``center_loss`` (``c * mean (r_c + r_r)^2``),
        ``accuracy`` (fraction with ``r_chosen > r_rejected``; a tie counts wrong, as
        RewardBench scores classifiers), ``reward_margin`` (mean ``r_c - r_r``),
        ``chosen_reward``, ``rejected_reward`` (means), ``reward_mean`` (mean of all ``2P``
        rewards), ``reward_sq_mean`` (mean of their squares: ``std = sqrt(sq_mean - mean^2)``,
        :func:`reward_std`), and ``num_pairs`` (a count, not divided).
    Raises:
        ValueError: shapes differ or are not ``[P]``; a negative ``center_coef``.
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1:
        raise ValueError(f"chosen/rejected rewards must both be [P], got {tuple(chosen_rewards.shape)} "
                         f"and {tuple(rejected_rewards.shape)}")
    if center_coef < 0:
        raise ValueError(f"center_coef must be >= 0, got {center_coef}")
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    n = max(float(num_pairs_global), 1.0)
    bt = -F.logsigmoid(diff).sum() / n
    loss = bt
    center = None
    if center_coef:
        center = center_coef * (chosen_rewards + rejected_rewards).pow(2).sum() / n
        loss = loss + center
    with torch.no_grad():
        rc, rr = chosen_rewards.detach(), rejected_rewards.detach()
        raw = rc - rr
        metrics = {"loss": loss.detach().clone(), "bt_loss": bt.detach().clone(),
                   "center_loss": center.detach().clone() if center is not None else raw.new_zeros(()),
                   "accuracy": (raw > 0).to(raw.dtype).sum() / n, "reward_margin": raw.sum() / n,
                   "chosen_reward": rc.sum() / n, "rejected_reward": rr.sum() / n,
                   "reward_mean": (rc.sum() + rr.sum()) / (2 * n),
                   "reward_sq_mean": (rc.pow(2).sum() + rr.pow(2).sum()) / (2 * n),
                   "num_pairs": raw.new_tensor(float(raw.numel()))}
    return loss, metrics


def reward_std(metrics: Mapping[str, float]) -> float:
    """Standard deviation of all rewards of a batch from reduced :func:`bradley_terry_loss` metrics
    (``sqrt(max(reward_sq_mean - reward_mean^2, 0))``)."""
    mean, sq = float(metrics["reward_mean"]), float(metrics["reward_sq_mean"])
    return max(sq - mean * mean, 0.0) ** 0.5


def scoring_token_rewards(values: torch.Tensor, loss_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row reward = the value at the row's scoring token.

    Args:
        values: float ``[B, T]`` per-position values of a scalar reward head.
        loss_mask: ``[B, T]`` with a single 1 per real row (its last real token) and an
            all-zero row for filler rows.
    Returns:
        ``(rewards [B], present [B] bool)``.
    Raises:
        ValueError: shapes differ, or a row marks more than one token.
    """
    _check("loss_mask", loss_mask, values.shape)
    mask = loss_mask.to(values.dtype)
    per_row = mask.sum(-1)
    if bool((per_row > 1).any()):
        raise ValueError("a reward-model row must mark exactly one scoring token in 'loss_mask' (its last real token)")
    return (values * mask).sum(-1), per_row > 0


def bradley_terry_pair_loss(values: torch.Tensor, batch: Mapping[str, torch.Tensor], norm: Normalizer,
                            margin: float = 0.0, center_coef: float = 0.0) -> Tuple[torch.Tensor, Metrics]:
    """:func:`bradley_terry_loss` of one micro-batch of interleaved pairs.

    Rows ``2i`` / ``2i + 1`` of the micro-batch are the chosen / rejected sequence of pair ``i``
    (chosen and rejected always share a micro-batch); each row's reward is its value at the
    scoring token (:func:`scoring_token_rewards`); filler rows (zero ``loss_mask``) come in
    pairs and are skipped. ``norm.num_seqs`` counts scored sequences, so the global pair count
    is ``norm.num_seqs / 2``.

    Args:
        values: float ``[B, T]`` reward-head values (B even).
        batch: ``loss_mask`` ``[B, T]`` (one 1 per real row).
        norm: global counts (:class:`Normalizer`).
        margin, center_coef: see :func:`bradley_terry_loss`.
    Returns:
        ``(loss, metrics)`` of :func:`bradley_terry_loss`.
    Raises:
        ValueError: an odd number of rows, or a pair with only one of its two rows scored.
    """
    if values.dim() != 2 or values.shape[0] % 2:
        raise ValueError(f"a Bradley-Terry micro-batch holds interleaved (chosen, rejected) rows, so an even number "
                         f"of rows; got values of shape {tuple(values.shape)}")
    rewards, present = scoring_token_rewards(values, batch.get("loss_mask"))
    if not torch.equal(present[0::2], present[1::2]):
        raise ValueError("a Bradley-Terry micro-batch split a pair: rows 2i (chosen) and 2i+1 (rejected) must both "
                         "be scored or both be filler")
    keep = present[0::2]
    loss, metrics = bradley_terry_loss(rewards[0::2][keep], rewards[1::2][keep], float(norm.num_seqs) / 2.0,
                                       margin=margin if margin else None, center_coef=center_coef)
    if not bool(keep.any()):  # a filler micro-batch: keep the graph connected (Megatron backpropagates it)
        loss = loss + 0.0 * values.sum()
    return loss, metrics


def reduce_metrics(parts) -> Dict[str, float]:
    """Combine per-micro-batch metric dicts: ``_max`` keys by max, the rest by sum.

    Args:
        parts: iterable of metric dicts (tensors or floats).
    Returns:
        dict of floats.
    """
    out: Dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            v = float(v)
            if k.endswith("_max"):
                out[k] = max(out.get(k, float("-inf")), v)
            else:
                out[k] = out.get(k, 0.0) + v
    return out


class PGLoss:
    """:func:`clipped_pg_loss` as a policy worker's ``loss_fn(logprobs, data, norm, entropy)``.

    Args:
        cfg: :class:`ClippedPGConfig`.
    """

    def __init__(self, cfg: ClippedPGConfig):
        self.cfg = cfg

    def __call__(self, logprobs, data, norm, entropy=None):
        return clipped_pg_loss(logprobs, data, self.cfg, norm, entropy=entropy)


class SFTLoss:
    """:func:`sft_nll_loss` as a policy worker's ``loss_fn(logprobs, data, norm, entropy)``.

    Args:
        aggregation: ``token_mean`` or ``sequence_mean`` (as :func:`sft_nll_loss`).
    """

    def __init__(self, aggregation: str = "token_mean"):
        self.aggregation = aggregation

    def __call__(self, logprobs, data, norm, entropy=None):
        return sft_nll_loss(logprobs, data, norm, self.aggregation)
