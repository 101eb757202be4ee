"""CPU compatibility layer for Megatron-Core (installed only when CUDA is absent).

Megatron-Core 0.16 assumes a GPU in many places that have nothing to do with the maths:
it allocates with ``device=torch.cuda.current_device()``, moves tensors with ``.cuda()``,
checks dtypes with ``param.type() == 'torch.cuda.FloatTensor'``, synchronizes the device
and keeps its model-parallel RNG streams as CUDA generator states. On a CPU-only torch
each of those raises ("Torch not compiled with CUDA enabled"). The model, schedules,
optimizer, DDP and dist_checkpointing otherwise run unchanged over gloo, so a few
process-wide patches make the *same* Megatron code paths testable on CPU
(DESIGN.md section 4.3).

:func:`install` applies every patch once (idempotent) and does nothing when
``torch.cuda.is_available()``. Each patch is a separate function below whose docstring
says what Megatron does and why the patch is needed; ``tests/parallel/test_cpu_compat.py``
removes each patch in turn and shows the named failure returns.

Patches:

- :class:`CudaToCpuMode` (``TorchFunctionMode``): cuda devices -> cpu, ``Tensor.cuda()``
  -> identity, no-argument ``Tensor.type()`` -> the ``torch.cuda.*`` name.
- :func:`patch_torch_cuda_functions`: ``torch.cuda.current_device`` and
  ``torch.cuda.synchronize`` stand-ins.
- :func:`patch_rng_tracker`: :class:`CpuRNGStatesTracker` replaces Megatron's
  CUDA-generator tracker, and the module-level CUDA RNG get/set helpers used by
  activation recompute use the CPU generator.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, List

import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

# Names of the patches, in install order (tests remove them one at a time by name).
PATCH_NAMES = ("device_mode", "cuda_functions", "rng_tracker")

_installed: Dict[str, bool] = {}
_mode: "CudaToCpuMode | None" = None


def _is_cuda_device(device: Any) -> bool:
    """True when ``device`` names a CUDA device (str, ``torch.device`` or bare ordinal)."""
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare int is an accelerator ordinal (``torch.cuda.current_device()`` returns one).
    return isinstance(device, int) and not isinstance(device, bool)


def _is_device_like(arg: Any) -> bool:
    return isinstance(arg, (torch.device, str)) or (isinstance(arg, int) and not isinstance(arg, bool))


_TO_METHODS = {torch.Tensor.to}


class CudaToCpuMode(TorchFunctionMode):
    """Patch 1 ("device_mode"): run Megatron's hard-coded CUDA tensor code on CPU.

    What Megatron does: about 180 call sites allocate with ``device="cuda"`` or
    ``device=torch.cuda.current_device()`` (an int ordinal), move with ``.cuda()`` or
    ``.to(torch.cuda.current_device())``, and test dtypes by string, e.g.
    ``param.type() in ('torch.cuda.FloatTensor', 'torch.cuda.HalfTensor', ...)`` in
    ``DistributedDataParallel`` / ``_ParamAndGradBuffer`` and ``Float16Module``.

    Why the patch is needed: on a CPU-only torch the allocations raise "Torch not compiled
    with CUDA enabled" (or "Cannot access accelerator device" for an int ordinal) and the
    string checks reject every CPU parameter ("Unsupported parameter type"). Patching
    each call site is not maintainable; a process-wide ``TorchFunctionMode`` sees every
    torch call and rewrites only three things:

    - a ``device=`` keyword, or the positional device of ``Tensor.to``, that names CUDA
      (``"cuda"``, ``"cuda:N"``, ``torch.device("cuda")`` or a bare int) becomes ``"cpu"``;
    - ``Tensor.cuda(...)`` returns the tensor itself;
    - ``Tensor.type()`` with no argument reports ``torch.cuda.<X>Tensor`` for a dense CPU
      tensor (``Tensor.type(dtype)`` conversions are untouched).

    The mode only rewrites arguments; results are the plain CPU ops, so numerics are
    unchanged.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs) if kwargs else {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            if name.startswith("torch.") and not name.startswith("torch.cuda.") and "sparse" not in name:
                return "torch.cuda." + name[len("torch."):]
            return name
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        if func in _TO_METHODS and len(args) > 1 and _is_device_like(args[1]) and _is_cuda_device(args[1]):
            args = (args[0], "cpu") + tuple(args[2:])
        return func(*args, **kwargs)


def _install_device_mode() -> None:
    """Push :class:`CudaToCpuMode` on the torch-function mode stack for the process.

    The mode stack is thread-local; Megatron runs its model code on the calling thread
    (CPU autograd also runs backward on the calling thread), which is where it is pushed.
    """
    global _mode
    _mode = CudaToCpuMode()
    _mode.__enter__()


def _uninstall_device_mode() -> None:
    global _mode
    if _mode is not None:
        _mode.__exit__(None, None, None)
        _mode = None


def _current_device() -> int:
    """CPU stand-in for ``torch.cuda.current_device``: ordinal 0 (mapped to cpu by the mode)."""
    return 0


def _synchronize(device: Any = None) -> None:
    """CPU stand-in for ``torch.cuda.synchronize``: CPU ops are synchronous, nothing to wait for."""
    return None


_saved_cuda_functions: Dict[str, Any] = {}


def patch_torch_cuda_functions() -> None:
    """Patch 2 ("cuda_functions"): ``torch.cuda.current_device`` and ``torch.cuda.synchronize``.

    What Megatron does: ``torch.cuda.current_device()`` is called to pick the allocation
    device (``tensor_parallel.layers`` weight init, ``mappings`` gather buffers, rotary
    embeddings, ``DistributedDataParallel`` buffers); ``torch.cuda.synchronize()`` is
    called by the pipeline schedules, timers and dist_checkpointing around collectives.

    Why the patch is needed: on a CPU-only torch both raise ``AssertionError: Torch not
    compiled with CUDA enabled``. The stand-ins return ordinal 0 (which
    :class:`CudaToCpuMode` maps to ``"cpu"``) and do nothing, respectively.
    ``torch.cuda.empty_cache`` is *not* patched: on a CPU build it is already a no-op.
    """
    for name, stand_in in (("current_device", _current_device), ("synchronize", _synchronize)):
        _saved_cuda_functions[name] = getattr(torch.cuda, name)
        setattr(torch.cuda, name, stand_in)


def _unpatch_torch_cuda_functions() -> None:
    for name, original in _saved_cuda_functions.items():
        setattr(torch.cuda, name, original)
    _saved_cuda_functions.clear()


def _cpu_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    """CPU replacement of ``tensor_parallel.random._get_cuda_rng_state``: the CPU generator state."""
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    """CPU replacement of ``tensor_parallel.random._set_cuda_rng_state``."""
    torch.set_rng_state(new_state)


def _make_cpu_tracker_class():
    from megatron.core.tensor_parallel import random as mrandom

    class CpuRNGStatesTracker(mrandom.CudaRNGStatesTracker):
        """Megatron's named RNG-stream tracker, keeping CPU generator states.

        Megatron forks a named stream (``model-parallel-rng`` for dropout / weight init
        inside TP regions, ``data-parallel-rng``, ``expert-parallel-rng``) by saving the
        CUDA generator state, installing the stream's state, and restoring afterwards.
        This subclass does the same with ``torch.get_rng_state`` / ``torch.set_rng_state``
        (the default CPU generator), so streams are reproducible per TP rank on CPU.
        """

        def add(self, name: str, seed: int) -> None:
            """Create stream ``name`` seeded with ``seed`` (seeds and names must be unique)."""
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            if name in self.states_:
                raise Exception(f"cpu rng state {name} already exists")
            self.seeds_.add(seed)
            self.states_[name] = torch.Generator().manual_seed(seed).get_state()

        @contextlib.contextmanager
        def fork(self, name: str = mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            """Run the block with stream ``name`` installed in the CPU generator, then restore."""
            if name not in self.states_:
                raise Exception(f"cpu rng state {name} is not added")
            orig_state = torch.get_rng_state()
            orig_name = self._current_state_name
            if orig_name != "default-rng":
                self.states_[orig_name] = orig_state
            torch.set_rng_state(self.states_[name])
            self._current_state_name = name
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                if orig_name != "default-rng":
                    orig_state = self.states_[orig_name]
                torch.set_rng_state(orig_state)
                self._current_state_name = orig_name

    return CpuRNGStatesTracker


_saved_rng: Dict[str, Any] = {}


def patch_rng_tracker() -> None:
    """Patch 3 ("rng_tracker"): a CPU RNG tracker and CPU RNG get/set helpers.

    What Megatron does: ``tensor_parallel.random.model_parallel_cuda_manual_seed`` creates
    ``CudaRNGStatesTracker`` streams for the model-parallel, data-parallel and
    expert-parallel names from ``torch.cuda.get_rng_state()``; every TP layer's weight
    init (``_initialize_affine_weight_gpu``), the embedding dropout and attention dropout
    run under ``get_cuda_rng_tracker().fork()``, and activation recompute
    (``CheckpointFunction``) snapshots and restores the CUDA RNG via
    ``_get_cuda_rng_state`` / ``_set_cuda_rng_state``.

    Why the patch is needed: ``torch.cuda.get_rng_state`` raises on a CPU-only torch, so
    seeding, forking and recompute all fail. This patch makes
    ``initialize_rng_tracker`` build :class:`CpuRNGStatesTracker` (registered for all
    three names by :func:`seed_model_parallel_rng`), and points the module's
    ``_get_cuda_rng_state`` / ``_set_cuda_rng_state`` at the CPU generator.
    """
    from megatron.core.tensor_parallel import random as mrandom

    cls = _make_cpu_tracker_class()
    _saved_rng.update(
        CudaRNGStatesTracker=mrandom.CudaRNGStatesTracker,
        _get_cuda_rng_state=mrandom._get_cuda_rng_state,
        _set_cuda_rng_state=mrandom._set_cuda_rng_state,
    )
    # initialize_rng_tracker() instantiates the module global ``CudaRNGStatesTracker``.
    mrandom.CudaRNGStatesTracker = cls
    mrandom._get_cuda_rng_state = _cpu_get_rng_state
    mrandom._set_cuda_rng_state = _cpu_set_rng_state
    mrandom.initialize_rng_tracker(force_reset=True)


def _unpatch_rng_tracker() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    for name, value in _saved_rng.items():
        setattr(mrandom, name, value)
    _saved_rng.clear()
    mrandom.initialize_rng_tracker(force_reset=True)


def seed_model_parallel_rng(seed: int, tp_rank: int, ep_rank: int = 0, etp_rank: int = 0) -> None:
    """Seed the default generator and the three named Megatron RNG streams on CPU.

    Same seed layout as Megatron's ``model_parallel_cuda_manual_seed`` (megatron-core
    0.16, ``tensor_parallel/random.py``): default and ``data-parallel-rng`` get ``seed``,
    ``model-parallel-rng`` gets ``seed + 2718 + tp_rank``, ``expert-parallel-rng`` gets
    ``seed + 1024 + 100 * ep_rank + etp_rank``. Requires :func:`patch_rng_tracker`.
    """
    from megatron.core.tensor_parallel import random as mrandom

    mrandom.initialize_rng_tracker(force_reset=True)
    tracker = mrandom.get_cuda_rng_tracker()
    tracker.reset()
    torch.manual_seed(seed)
    tracker.add(mrandom._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME, seed + 2718 + tp_rank)
    tracker.add(mrandom._EXPERT_PARALLEL_RNG_TRACKER_NAME, seed + 1024 + 100 * ep_rank + etp_rank)


_INSTALLERS = {
    "device_mode": (_install_device_mode, _uninstall_device_mode),
    "cuda_functions": (patch_torch_cuda_functions, _unpatch_torch_cuda_functions),
    "rng_tracker": (patch_rng_tracker, _unpatch_rng_tracker),
}


def install(skip: List[str] | tuple = (), force: bool = False) -> bool:
    """Install the CPU patches once per process; a no-op when CUDA is available.

    Args:
        skip: patch names (from :data:`PATCH_NAMES`) to leave out; used by the tests that
            prove each patch is needed.
        force: install even if CUDA is available (never needed in normal use).

    Returns:
        True when the patches are (now) installed, False when CUDA is present.

    Raises:
        ValueError: an unknown name in ``skip``.
    """
    unknown = set(skip) - set(PATCH_NAMES)
    if unknown:
        raise ValueError(f"unknown cpu_compat patch name(s) {sorted(unknown)}; known: {list(PATCH_NAMES)}")
    if torch.cuda.is_available() and not force:
        return False
    for name in PATCH_NAMES:
        if name in skip or _installed.get(name):
            continue
        _INSTALLERS[name][0]()
        _installed[name] = True
        log.debug("cpu_compat: installed %s", name)
    return True


def uninstall() -> None:
    """Remove every installed patch (tests only; Megatron state built meanwhile stays CPU)."""
    for name in reversed(PATCH_NAMES):
        if _installed.pop(name, False):
            _INSTALLERS[name][1]()


def is_installed(name: str | None = None) -> bool:
    """Whether patch ``name`` (or any patch, when None) is installed in this process."""
    if name is None:
        return any(_installed.values())
    return bool(_installed.get(name))
