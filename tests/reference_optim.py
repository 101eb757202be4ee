"""The optimizer the parallel-parity tests compare against: ``torch.optim.AdamW`` with the project's rules.

The project's optimizer (Megatron-Core's, through :mod:`megatron_brrm.workers.policy`) applies weight
decay to matrices only (none on 1-D parameters), clips the global gradient norm, and warms the
learning rate up linearly from ``init_factor * lr`` to ``lr`` over ``warmup`` steps
(``OptimizerConfig``). This runs the same on a plain single-process model, from formula.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch


def adamw_warmup_steps(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], *, steps: int, lr: float,
                       init_factor: float, warmup: int, weight_decay: float, clip: float
                       ) -> Tuple[List[float], List[float]]:
    """Run ``steps`` AdamW steps (betas 0.9/0.999, eps 1e-8) of ``loss_fn()`` on ``model`` in place.

    Step ``s`` (from 0) uses ``lr * init_factor + (lr - lr * init_factor) * s / warmup``; gradients
    are clipped to a global norm of ``clip`` before each step.

    Returns:
        ``(losses, norms)``: per step, the loss before the update and the gradient norm before clipping.
    """
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() == 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr * init_factor, betas=(0.9, 0.999), eps=1e-8)
    losses, norms = [], []
    for step in range(steps):
        for grp in opt.param_groups:
            grp["lr"] = lr * init_factor + (lr - lr * init_factor) * step / warmup
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        losses.append(float(loss.detach()))
        opt.step()
    return losses, norms
