"""Pre-submit planning: layout validation and per-GPU memory (``python -m megatron_brrm.plan``).

- ``shapes``: model dimensions and parameter counts without loading weights (``resolve_shape``).
- ``layout``: ``plan_layout`` checks TP/PP/CP/DP/VPP, batch sizes, engines and fleet against the
  model and the allocation, raising ``LayoutError`` with every problem (the driver runs it at start-up).
- ``memory``: training, engine and colocated-phase memory per GPU (formulas and sources there).
- ``sbatch``: a launcher's ``#SBATCH`` lines and recipe, and its requeue/preemption checks.
- ``cli``: the command line.

Dependencies: ``config``, ``model`` (vocabulary padding, FP8 keys); nothing imports this but
the drivers.
"""
