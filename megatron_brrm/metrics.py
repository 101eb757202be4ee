"""Run metrics: TensorBoard (default), a JSONL log next to the outputs, optional W&B.

Imports nothing of the project. Keys use ``/`` prefixes as NeMo-RL does (``train/``,
``rollout/``, ``timing/``, ``validation/``).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Dict, Mapping, Optional


class MetricsLogger:
    """Writes scalar metrics per step to ``<output_dir>/metrics.jsonl`` and TensorBoard.

    Args:
        output_dir: run folder; TensorBoard events go to ``<output_dir>/tensorboard``.
        tensorboard: write TensorBoard events.
        wandb_project: also log to Weights & Biases (needs ``pip install wandb``).
        config: the resolved config dict (logged to W&B).
    """

    def __init__(self, output_dir: str | Path, tensorboard: bool = True, wandb_project: Optional[str] = None,
                 config: Optional[dict] = None, run_name: str = "brrm"):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = (self.dir / "metrics.jsonl").open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # lazy: heavy, only needed on this path

            self._tb = SummaryWriter(str(self.dir / "tensorboard"))
        self._wandb = None
        if wandb_project:
            try:
                import wandb  # optional: wandb (extra)
            except ImportError:
                raise RuntimeError("logging.wandb_project is set but wandb is not installed: pip install wandb") from None
            self._wandb = wandb.init(project=wandb_project, name=run_name, config=config or {}, dir=str(self.dir))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record finite scalar ``metrics`` for ``step`` (non-numbers are dropped from TB/W&B, kept in JSONL)."""
        scalars: Dict[str, float] = {k: float(v) for k, v in metrics.items()
                                     if isinstance(v, (int, float)) and math.isfinite(float(v))}
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **metrics}, default=str) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def histogram(self, step: int, tag: str, counts: Mapping[str, int]) -> None:
        """Log a categorical histogram (e.g. the chosen evaluation dimensions) as text + scalars."""
        self.log(step, {f"{tag}/{k}": v for k, v in counts.items()})

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
