"""Train / rollout mismatch: how far the engine's sampling logprobs are from the trainer's.

After a correct refit the generation engine and the trainer compute the same distribution up to
kernel numerics, so the logprobs the engine reported for its sampled tokens (``rollout``) and the
trainer's logprobs of the same tokens before the update (``old``) agree. Both metrics come from
tensors every GRPO step already has (NeMo-RL logs them every step and gates tests on them):

* ``token_mult_prob_error = mean(exp(|old - rollout|))`` over generated tokens: 1.0 when they
  agree; NeMo-RL treats > 1.05, or a steady rise, as a refit or model bug;
* ``gen_kl_error``: KL(rollout || trainer) estimated on the sampled tokens with Schulman's k3
  estimator (``r - 1 - log r``, ``r = p_old / p_rollout = exp(old - rollout)``; unbiased and
  >= 0 for samples drawn from the rollout distribution; "Approximating KL Divergence", 2020).
"""
from __future__ import annotations

from typing import Dict

import torch


def generation_mismatch(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor,
                        loss_mask: torch.Tensor) -> Dict[str, float]:
    """Mismatch metrics over the generated tokens of a batch (module docstring).

    Args:
        old_logprobs: ``[B, T]`` float, the trainer's logprobs of the batch's tokens before the update.
        rollout_logprobs: ``[B, T]`` float, the engine's logprobs of the same tokens (same alignment).
        loss_mask: ``[B, T]``, 1 on generated tokens.

    Returns:
        ``{"token_mult_prob_error", "gen_kl_error", "max_abs_logprob_diff"}``; with no generated
        token, ``{1.0, 0.0, 0.0}``.

    Raises:
        ValueError: the shapes differ.
    """
    if not (old_logprobs.shape == rollout_logprobs.shape == loss_mask.shape):
        raise ValueError(f"generation_mismatch: shapes differ: old {tuple(old_logprobs.shape)}, rollout "
                         f"{tuple(rollout_logprobs.shape)}, mask {tuple(loss_mask.shape)}")
    mask = loss_mask.bool()
    if not bool(mask.any()):
        return {"token_mult_prob_error": 1.0, "gen_kl_error": 0.0, "max_abs_logprob_diff": 0.0}
    d = (old_logprobs.double() - rollout_logprobs.double())[mask]
    return {"token_mult_prob_error": float(torch.exp(d.abs()).mean()),
            "gen_kl_error": float((torch.exp(d) - 1 - d).mean()),
            "max_abs_logprob_diff": float(d.abs().max())}
