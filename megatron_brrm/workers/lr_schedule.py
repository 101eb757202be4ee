"""The learning-rate schedule of every trainer (GRPO, SFT, BT): Megatron-Core's
``OptimizerParamScheduler`` built from an :class:`megatron_brrm.config.OptimizerConfig`."""
from __future__ import annotations

from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_brrm.config import LR_DECAY_STYLES


def build_lr_scheduler(optimizer, o, total_steps: int):
    """Megatron-Core's ``OptimizerParamScheduler`` for the optimizer config ``o``, stepped once per
    optimizer step over a run of ``total_steps`` optimizer steps.

    Learning rate at step ``t`` (``W`` = ``o.lr_warmup_steps``, ``T`` = ``total_steps``): for
    ``t <= W`` a linear warm-up ``lr0 + (lr - lr0) t / W`` with ``lr0 = o.lr_warmup_init_factor *
    lr``; then by ``o.lr_decay_style``: ``constant`` ``lr``; ``linear`` ``lr - (lr - min_lr) r``;
    ``cosine`` ``min_lr + (lr - min_lr) (1 + cos(pi r)) / 2`` with ``r = (t - W) / (T - W)``;
    ``WSD`` ``lr`` until ``T - D`` (``D = o.lr_wsd_decay_steps``), then ``o.lr_wsd_decay_style``
    from ``lr`` to ``min_lr`` over the last ``D`` steps (linear ``1 - u``, cosine, exponential
    ``2 * 0.5^u - 1``, minus_sqrt ``1 - sqrt(u)``, ``u`` the fraction of the decay done).
    ``min_lr`` defaults to ``lr``. Weight decay is constant.

    Args:
        optimizer: a Megatron optimizer (or any object with torch-style ``param_groups``).
        o: :class:`megatron_brrm.config.OptimizerConfig`.
        total_steps: optimizer steps of the whole run (>= 1).

    Raises:
        ValueError: an unknown ``lr_decay_style`` or WSD without ``lr_wsd_decay_steps``
            (``load_config`` already refuses both).
    """
    if o.lr_decay_style not in LR_DECAY_STYLES:
        raise ValueError(f"optimizer.lr_decay_style must be one of {LR_DECAY_STYLES}, got {o.lr_decay_style!r}")
    if o.lr_decay_style == "WSD" and not o.lr_wsd_decay_steps:
        raise ValueError("optimizer.lr_decay_style=WSD needs optimizer.lr_wsd_decay_steps")
    warmup = int(o.lr_warmup_steps)
    min_lr = min(o.min_lr if o.min_lr is not None else o.lr, o.lr)
    return OptimizerParamScheduler(
        optimizer, init_lr=o.lr * o.lr_warmup_init_factor if warmup > 0 else o.lr, max_lr=o.lr,
        min_lr=min_lr, lr_warmup_steps=warmup, lr_decay_steps=max(int(total_steps), warmup + 1),
        lr_decay_style=o.lr_decay_style, start_wd=o.weight_decay, end_wd=o.weight_decay,
        wd_incr_steps=max(int(total_steps), 1), wd_incr_style="constant",
        wsd_decay_steps=o.lr_wsd_decay_steps, lr_wsd_decay_style=o.lr_wsd_decay_style)
