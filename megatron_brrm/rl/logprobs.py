"""Per-token logprobs and entropy from (vocab-parallel) logits, without gathering the vocabulary.

Under tensor parallelism each TP rank holds the logits of a contiguous vocabulary slice
``[vocab_start, vocab_start + V_local)``. The log-softmax of the target token is computed
with three all-reduces over the TP group (the idea of Megatron-Core's
``tensor_parallel.vocab_parallel_cross_entropy`` and NeMo-RL's ``DistributedLogprob``):

1. ``m = max_v z_v`` (all-reduce MAX), ``z = logits / temperature`` in float32;
2. ``S = sum_v exp(z_v - m)`` (all-reduce SUM);
3. ``z_target - m`` from the rank that owns the target (all-reduce SUM of a masked gather);

``log p(target) = (z_target - m) - log S``. The backward pass is local:
``d logp / d z_v = 1[v = target] - softmax(z)_v``, divided by the temperature.

Alignment (the convention of every token tensor in ``megatron_brrm.rl``): the model's
logits at position ``t`` predict token ``t + 1``, and the returned tensors are shifted so
that ``logprobs[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`` for ``t >= 1`` and
``logprobs[b, 0] = 0`` (the first token has no prediction), as NeMo-RL does. A loss mask
that marks generated tokens therefore selects their logprobs directly, and the rollout
engine's per-token logprobs line up without shifting.

Temperature is applied as in generation (vLLM and HF divide the logits by the temperature
before the softmax), so logprobs are those of the distribution the tokens were sampled from.
Vocabulary padding (Megatron pads the vocabulary to a multiple of
``make_vocab_size_divisible_by * lcm(TP, 8)``) is excluded by ``vocab_size``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist


def _world(group) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _all_reduce(t: torch.Tensor, op, group) -> None:
    if _world(group) > 1:
        dist.all_reduce(t, op=op, group=group)


def _scaled_logits(logits: torch.Tensor, temperature: float, vocab_start: int,
                   vocab_size: Optional[int]) -> torch.Tensor:
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    if vocab_size is not None:
        v_local = z.shape[-1]
        n_valid = max(0, min(v_local, vocab_size - vocab_start))
        if n_valid < v_local:
            z = z.clone()
            z[..., n_valid:] = float("-inf")
    return z


def _shifted_exp_sum(logits: torch.Tensor, temperature: float, vocab_start: int, vocab_size: Optional[int], group):
    """``(z, exp(z), S)`` with ``z = logits / T - max`` (max over the whole split vocabulary) and
    ``S = sum exp(z)`` all-reduced over ``group``: the numerically stable softmax pieces."""
    z = _scaled_logits(logits, temperature, vocab_start, vocab_size)
    m = z.max(dim=-1).values
    _all_reduce(m, dist.ReduceOp.MAX, group)
    z = z - m.unsqueeze(-1)
    e = torch.exp(z)
    s = e.sum(dim=-1)
    _all_reduce(s, dist.ReduceOp.SUM, group)
    return z, e, s


class _VocabParallelLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, vocab_start, vocab_size, temperature, group):
        z, e, s = _shifted_exp_sum(logits, temperature, vocab_start, vocab_size, group)
        v_local = z.shape[-1]
        in_range = (target >= vocab_start) & (target < vocab_start + v_local)
        local_idx = (target - vocab_start).clamp(0, v_local - 1)
        zt = torch.gather(z, -1, local_idx.unsqueeze(-1)).squeeze(-1)
        zt = torch.where(in_range, zt, torch.zeros_like(zt))
        _all_reduce(zt, dist.ReduceOp.SUM, group)
        logp = zt - torch.log(s)
        e.div_(s.unsqueeze(-1))  # softmax, kept for backward
        ctx.save_for_backward(e, in_range, local_idx)
        ctx.temperature = temperature
        ctx.logits_dtype = logits.dtype
        return logp

    @staticmethod
    def backward(ctx, grad_out):
        probs, in_range, local_idx = ctx.saved_tensors
        g = grad_out.float()
        grad = probs * (-g.unsqueeze(-1))
        grad.scatter_add_(-1, local_idx.unsqueeze(-1), (g * in_range.float()).unsqueeze(-1))
        if ctx.temperature != 1.0:
            grad = grad / ctx.temperature
        return grad.to(ctx.logits_dtype), None, None, None, None, None


def vocab_parallel_logprobs(logits: torch.Tensor, target: torch.Tensor, vocab_start: int = 0,
                            vocab_size: Optional[int] = None, temperature: float = 1.0, group=None) -> torch.Tensor:
    """``log softmax(logits / temperature)[target]`` over a vocabulary split across ``group``.

    Args:
        logits: ``[..., V_local]`` (any float dtype; computed in float32), this rank's vocab slice.
        target: int64 ``[...]`` global token ids.
        vocab_start: global id of this rank's first vocabulary column.
        vocab_size: true vocabulary size (columns at or beyond it are padding and excluded).
        temperature: > 0, as used for sampling.
        group: the TP process group (None = default group; a single process needs no group).
    Returns:
        float32 ``[...]``, differentiable w.r.t. ``logits``.
    Raises:
        ValueError: temperature <= 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _VocabParallelLogprob.apply(logits, target, vocab_start, vocab_size, float(temperature), group)


@torch.no_grad()
def vocab_parallel_entropy(logits: torch.Tensor, vocab_start: int = 0, vocab_size: Optional[int] = None,
                           temperature: float = 1.0, group=None) -> torch.Tensor:
    """Entropy ``H = log S - sum_v p_v (z_v - m)`` of ``softmax(logits / temperature)`` over a
    vocabulary split across ``group`` (two all-reduces after the max). No gradient.

    Args/shapes as :func:`vocab_parallel_logprobs`; returns float32 ``[...]`` in nats.
    """
    z, e, s = _shifted_exp_sum(logits, temperature, vocab_start, vocab_size, group)
    ez = torch.where(e > 0, e * z, torch.zeros_like(e)).sum(dim=-1)  # -inf padding contributes 0
    _all_reduce(ez, dist.ReduceOp.SUM, group)
    return torch.log(s) - ez / s


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0, vocab_start: int = 0,
                   vocab_size: Optional[int] = None, group=None, with_entropy: bool = False
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Logprobs of ``input_ids`` under the model's logits, aligned to input positions.

    Args:
        logits: ``[B, T, V_local]`` (Megatron GPTModel output layout), position ``t`` predicting ``t + 1``.
        input_ids: int64 ``[B, T]``.
        temperature, vocab_start, vocab_size, group: as :func:`vocab_parallel_logprobs`.
        with_entropy: also return the entropy of each position's sampling distribution.
    Returns:
        ``(logprobs, entropy)``: float32 ``[B, T]`` with ``logprobs[:, t] = log p(x_t | x_<t)``,
        ``logprobs[:, 0] = 0``; ``entropy[:, t]`` is the entropy of the distribution ``x_t``
        was drawn from (``entropy[:, 0] = 0``), or None.
    Raises:
        ValueError: shapes disagree.
    """
    if logits.dim() != 3 or input_ids.shape != logits.shape[:2]:
        raise ValueError(f"logits [B, T, V] and input_ids [B, T] disagree: {tuple(logits.shape)} vs "
                         f"{tuple(input_ids.shape)}")
    lp = vocab_parallel_logprobs(logits[:, :-1], input_ids[:, 1:], vocab_start, vocab_size, temperature, group)
    lp = torch.cat([lp.new_zeros(lp.shape[0], 1), lp], dim=1)
    ent = None
    if with_entropy:
        ent = vocab_parallel_entropy(logits[:, :-1].detach(), vocab_start, vocab_size, temperature, group)
        ent = torch.cat([ent.new_zeros(ent.shape[0], 1), ent], dim=1)
    return lp, ent
