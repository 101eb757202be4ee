"""CPU compatibility layer for Megatron-Core, and the one place that patches Megatron internals.

Megatron-Core 0.16 assumes a GPU in many places that have nothing to do with the maths:
it allocates with ``device=torch.cuda.current_device()``, moves tensors with ``.cuda()``,
checks dtypes with ``param.type() == 'torch.cuda.FloatTensor'``, synchronizes the device
and keeps its model-parallel RNG streams as CUDA generator states. On a CPU-only torch
each of those raises. The model, schedules, optimizer, DDP and dist_checkpointing
otherwise run unchanged over gloo, so a few process-wide patches make the *same*
Megatron code paths run on CPU (docs/design.md §7).

:func:`install` applies every patch once (idempotent) and does nothing when
``torch.cuda.is_available()``. Each patch has a name in :data:`PATCH_NAMES` and a
docstring saying what Megatron does and why the patch is needed;
``tests/parallel/test_cpu_compat.py`` removes each patch in turn and shows that the named
Megatron operation fails again with the specific error.

===================== ===================================================================
name                  what it does
===================== ===================================================================
cuda_device_args      ``device=`` "cuda" / "cuda:N" / int ordinal -> "cpu" (all torch calls)
tensor_cuda_identity  ``Tensor.cuda(...)`` returns the tensor itself
cuda_type_names       no-argument ``Tensor.type()`` reports ``torch.cuda.<X>Tensor``
backward_keeps_mode   backward passes run with the device mode still active
current_device        ``torch.cuda.current_device()`` -> 0 (mapped to cpu)
synchronize           ``torch.cuda.synchronize()`` -> no-op
rng_tracker           Megatron's named RNG streams kept as CPU generator states
rng_state_functions   ``_get_cuda_rng_state`` / ``_set_cuda_rng_state`` use the CPU generator
===================== ===================================================================

One more CPU measure lives outside this module because it must act while Megatron is being
imported: :mod:`megatron_brrm.megatron_import_hook` (``jit_fuser_off``, installed by the
package's ``__init__``) makes Megatron's ``jit_fuser`` its own no-op decorator on a CPU-only
torch, so ``import megatron.core`` does not load ``torch._dynamo`` / ``torch._inductor`` for
fused kernels that never run on CPU.

``torch.cuda.empty_cache`` needs no stand-in: on a CPU build of torch it is already a
no-op (measured, torch 2.13), so it is not patched.

One patch is not about the CPU: :func:`use_in_process_save_queue` (synchronous
``dist_checkpointing`` saves without a Manager server process), applied on every device by the
training checkpoints. Every patch here touches Megatron-Core internals that were checked
against the versions in :data:`CHECKED_MEGATRON_VERSIONS` only; :func:`check_megatron_version`
refuses others with the fix.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import queue
from typing import Any, Dict, Iterable, List, Sequence, Set

import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

CHECKED_MEGATRON_VERSIONS = ("0.16.1",)
MODE_PATCHES = ("cuda_device_args", "tensor_cuda_identity", "cuda_type_names", "backward_keeps_mode")
PATCH_NAMES = MODE_PATCHES + ("current_device", "synchronize", "rng_tracker", "rng_state_functions")

_installed: Set[str] = set()


# --------------------------------------------------------------------------- device mode
def _is_cuda_device(device: Any) -> bool:
    """True when ``device`` names a CUDA device (str, ``torch.device`` or bare int ordinal)."""
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


def _materialize_grads(tensors: Sequence[torch.Tensor], grads: Sequence[Any]) -> List[torch.Tensor]:
    out = []
    for t, g in zip(tensors, grads):
        if g is None:
            if t.numel() != 1:
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            g = torch.ones_like(t)
        out.append(g)
    return out


def _as_tuple(x) -> tuple:
    if x is None:
        return ()
    return (x,) if isinstance(x, torch.Tensor) else tuple(x)


class CudaToCpuMode(TorchFunctionMode):
    """A process-wide ``TorchFunctionMode`` that rewrites CUDA-only arguments to CPU.

    The mode sees every torch function and method call. Its rewrites are switched on
    individually (``enabled`` holds names from :data:`MODE_PATCHES`); each one only
    changes arguments, so results are the plain CPU ops and numerics are unchanged.

    **cuda_device_args.** *Megatron:* about 180 call sites allocate with
    ``device="cuda"`` (``get_default_causal_mask``), ``device=torch.cuda.current_device()``
    (an int ordinal: weight init in ``tensor_parallel.layers``, gather buffers in
    ``tensor_parallel.mappings``, DDP grad buffers, p2p shape buffers) or move with
    ``.to(torch.cuda.current_device())``. *Why:* on a CPU build these raise "Torch not
    compiled with CUDA enabled" / "Cannot access accelerator device when none is
    available". The rewrite maps such a ``device=`` keyword, or the positional device of
    ``Tensor.to``, to ``"cpu"``.

    **tensor_cuda_identity.** *Megatron:* ``tensor_parallel.broadcast_data``,
    ``MegatronOptimizer`` state reload and dist_checkpointing's exchange utilities call
    ``tensor.cuda()``. *Why:* raises on a CPU build. ``Tensor.cuda(...)`` returns the
    tensor itself.

    **cuda_type_names.** *Megatron:* ``Float16OptimizerWithFloat16Params``, the
    distributed optimizer and grad clipping accept parameters only if
    ``param.type()`` is ``'torch.cuda.FloatTensor'`` / ``'torch.cuda.BFloat16Tensor'`` /
    ``'torch.cuda.HalfTensor'``. *Why:* CPU tensors report ``'torch.FloatTensor'`` and are
    rejected ("Wrapped parameters must be one of ..."). A no-argument ``Tensor.type()`` on a
    dense CPU tensor reports the ``torch.cuda.`` name; ``Tensor.type(dtype)`` conversions
    are untouched.

    **backward_keeps_mode.** *Megatron:* activation recompute (``CheckpointFunction``)
    re-runs the forward inside ``backward``, and the backward of the sequence-parallel
    collectives allocates with ``device=torch.cuda.current_device()``. *Why:*
    ``Tensor.backward`` / ``torch.autograd.backward`` are themselves torch functions, so
    torch runs them with this mode popped: all Python code of the backward pass would
    run unpatched and fail as above. The mode runs them itself through the autograd
    engine (``Variable._execution_engine.run_backward``, as Megatron's own
    ``custom_backward`` does) with the mode pushed again.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled: Set[str] = set()

    def _backward(self, func, args, kwargs):
        if func is torch.Tensor.backward:
            names = ("self", "gradient", "retain_graph", "create_graph", "inputs")
            b = dict(zip(names, args), **kwargs)
            tensors, grads = (b["self"],), (b.get("gradient"),)
        else:
            names = ("tensors", "grad_tensors", "retain_graph", "create_graph", "grad_variables", "inputs")
            b = dict(zip(names, args), **kwargs)
            tensors = _as_tuple(b["tensors"])
            grads = _as_tuple(b.get("grad_tensors")) or (None,) * len(tensors)
        create_graph = bool(b.get("create_graph") or False)
        retain_graph = b.get("retain_graph")
        retain_graph = create_graph if retain_graph is None else retain_graph
        with self:
            torch.autograd.Variable._execution_engine.run_backward(
                tuple(tensors), tuple(_materialize_grads(tensors, grads)), retain_graph, create_graph,
                _as_tuple(b.get("inputs")), allow_unreachable=True, accumulate_grad=True)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs) if kwargs else {}
        on = self.enabled
        if func is torch.Tensor.cuda and "tensor_cuda_identity" in on:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs and "cuda_type_names" in on:
            name = func(*args)
            if name.startswith("torch.") and not name.startswith("torch.cuda.") and "sparse" not in name:
                return "torch.cuda." + name[len("torch."):]
            return name
        if func in (torch.Tensor.backward, torch.autograd.backward) and "backward_keeps_mode" in on:
            return self._backward(func, args, kwargs)
        if "cuda_device_args" in on:
            if "device" in kwargs and _is_cuda_device(kwargs["device"]):
                kwargs["device"] = "cpu"
            if func is torch.Tensor.to and len(args) > 1 and isinstance(args[1], (torch.device, str, int)) \
                    and _is_cuda_device(args[1]):
                args = (args[0], "cpu") + tuple(args[2:])
        return func(*args, **kwargs)


_mode: CudaToCpuMode | None = None


def _mode_on(name: str) -> None:
    global _mode
    if _mode is None:
        _mode = CudaToCpuMode()
        _mode.__enter__()  # the mode stack is per thread: Megatron runs model code on this one
    _mode.enabled.add(name)


def _mode_off(name: str) -> None:
    global _mode
    if _mode is not None:
        _mode.enabled.discard(name)
        if not _mode.enabled:
            if torch._C._len_torch_function_stack() > 0:  # pushed on this thread
                _mode.__exit__(None, None, None)
            _mode = None


# ------------------------------------------------------------------ torch.cuda functions
_saved: Dict[str, Any] = {}


def _current_device() -> int:
    """CPU stand-in for ``torch.cuda.current_device``: ordinal 0 (mapped to cpu by the mode)."""
    return 0


def _synchronize(device: Any = None) -> None:
    """CPU stand-in for ``torch.cuda.synchronize``: CPU ops are synchronous already."""
    return None


def patch_current_device() -> None:
    """Patch "current_device": ``torch.cuda.current_device()`` returns 0.

    *Megatron:* picks the allocation device with ``torch.cuda.current_device()`` (weight
    init, TP gather buffers, rotary frequencies, DDP buffers, p2p shape tensors). *Why:* on
    a CPU build it raises ``AssertionError: Torch not compiled with CUDA enabled`` before
    any allocation happens. The stand-in returns ordinal 0, which the
    ``cuda_device_args`` rewrite maps to ``"cpu"``.
    """
    _saved["current_device"] = torch.cuda.current_device
    torch.cuda.current_device = _current_device


def patch_synchronize() -> None:
    """Patch "synchronize": ``torch.cuda.synchronize()`` does nothing.

    *Megatron:* dist_checkpointing's torch_dist writer synchronizes after its non-blocking
    device-to-host copies (``FileSystemWriterAsync.preload_tensors``), fully-parallel
    loading and the batched p2p path synchronize too. *Why:* raises ``AssertionError:
    Torch not compiled with CUDA enabled`` on a CPU build; CPU copies are synchronous.
    """
    _saved["synchronize"] = torch.cuda.synchronize
    torch.cuda.synchronize = _synchronize


def _unpatch_cuda(name: str) -> None:
    if name in _saved:
        setattr(torch.cuda, name, _saved.pop(name))


# ------------------------------------------------------------------------------- RNG
def _cpu_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    """CPU replacement of ``tensor_parallel.random._get_cuda_rng_state``: the CPU generator state."""
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    """CPU replacement of ``tensor_parallel.random._set_cuda_rng_state``."""
    torch.set_rng_state(new_state)


def _make_cpu_tracker_class():
    from megatron.core.tensor_parallel import random as mrandom  # lazy: keeps train --help fast

    class CpuRNGStatesTracker(mrandom.CudaRNGStatesTracker):
        """Megatron's named RNG-stream tracker, keeping CPU generator states.

        Megatron forks a named stream (``model-parallel-rng`` for dropout and weight init
        inside TP regions, ``data-parallel-rng``, ``expert-parallel-rng``) by saving the
        generator state, installing the stream's state and restoring afterwards. This
        subclass does the same with ``torch.get_rng_state`` / ``torch.set_rng_state`` (the
        default CPU generator), so streams stay reproducible and distinct per TP rank.
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


def patch_rng_tracker() -> None:
    """Patch "rng_tracker": Megatron's RNG tracker becomes :class:`CpuRNGStatesTracker`.

    *Megatron:* ``model_parallel_cuda_manual_seed`` creates ``CudaRNGStatesTracker``
    streams for the model-parallel, data-parallel and expert-parallel names from
    ``torch.cuda.get_rng_state()``; TP weight init, embedding dropout (with SP) and
    attention dropout run under ``get_cuda_rng_tracker().fork()``. *Why:* adding a stream
    raises ``AssertionError: Torch not compiled with CUDA enabled``, so no stream can be
    seeded and every fork fails ("cuda rng state model-parallel-rng is not added").
    ``initialize_rng_tracker`` builds its tracker from the module global
    ``CudaRNGStatesTracker``, which this patch points at the CPU subclass; streams are
    seeded by :func:`seed_model_parallel_rng`.
    """
    from megatron.core.tensor_parallel import random as mrandom  # lazy: keeps train --help fast

    _saved["CudaRNGStatesTracker"] = mrandom.CudaRNGStatesTracker
    mrandom.CudaRNGStatesTracker = _make_cpu_tracker_class()
    mrandom.initialize_rng_tracker(force_reset=True)


def patch_rng_state_functions() -> None:
    """Patch "rng_state_functions": Megatron's CUDA RNG get/set helpers use the CPU generator.

    *Megatron:* activation recompute (``CheckpointFunction``) snapshots the RNG with
    ``tensor_parallel.random._get_cuda_rng_state`` in forward and restores it with
    ``_set_cuda_rng_state`` before recomputing in backward, so dropout masks repeat.
    *Why:* both call ``torch.cuda`` RNG functions and raise on a CPU build; with this
    patch they save/restore ``torch.get_rng_state()``.
    """
    from megatron.core.tensor_parallel import random as mrandom  # lazy: keeps train --help fast

    _saved["_get_cuda_rng_state"] = mrandom._get_cuda_rng_state
    _saved["_set_cuda_rng_state"] = mrandom._set_cuda_rng_state
    mrandom._get_cuda_rng_state = _cpu_get_rng_state
    mrandom._set_cuda_rng_state = _cpu_set_rng_state


def _unpatch_random(*names: str) -> None:
    from megatron.core.tensor_parallel import random as mrandom  # lazy: keeps train --help fast

    for name in names:
        if name in _saved:
            setattr(mrandom, name, _saved.pop(name))
    if "CudaRNGStatesTracker" in names:
        mrandom.initialize_rng_tracker(force_reset=True)


def seed_model_parallel_rng(seed: int, tp_rank: int, ep_rank: int = 0, etp_rank: int = 0) -> None:
    """Seed the default generator and the three named Megatron RNG streams.

    Same seed layout as Megatron's ``model_parallel_cuda_manual_seed`` (megatron-core 0.16,
    ``tensor_parallel/random.py``): default and ``data-parallel-rng`` get ``seed``,
    ``model-parallel-rng`` gets ``seed + 2718 + tp_rank``, ``expert-parallel-rng`` gets
    ``seed + 1024 + 100 * ep_rank + etp_rank``. Needs the "rng_tracker" patch on CPU.
    """
    from megatron.core.tensor_parallel import random as mrandom  # lazy: keeps train --help fast

    mrandom.initialize_rng_tracker(force_reset=True)
    tracker = mrandom.get_cuda_rng_tracker()
    tracker.reset()
    torch.manual_seed(seed)
    tracker.add(mrandom._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME, seed + 2718 + tp_rank)
    tracker.add(mrandom._EXPERT_PARALLEL_RNG_TRACKER_NAME, seed + 1024 + 100 * ep_rank + etp_rank)


_INSTALLERS = {
    **{name: ((lambda n=name: _mode_on(n)), (lambda n=name: _mode_off(n))) for name in MODE_PATCHES},
    "current_device": (patch_current_device, lambda: _unpatch_cuda("current_device")),
    "synchronize": (patch_synchronize, lambda: _unpatch_cuda("synchronize")),
    "rng_tracker": (patch_rng_tracker, lambda: _unpatch_random("CudaRNGStatesTracker")),
    "rng_state_functions": (patch_rng_state_functions,
                            lambda: _unpatch_random("_get_cuda_rng_state", "_set_cuda_rng_state")),
}


def check_megatron_version() -> str:
    """The installed megatron-core version, when the patches here were checked against it.

    Raises:
        RuntimeError: another version (the message names both and the fix).
    """
    installed = importlib.metadata.version("megatron-core")
    if installed not in CHECKED_MEGATRON_VERSIONS:
        raise RuntimeError(f"megatron-core {installed} is installed, but megatron_brrm/parallel/cpu_compat.py patches "
                           f"Megatron internals checked against {', '.join(CHECKED_MEGATRON_VERSIONS)} only: install "
                           f"megatron-core=={CHECKED_MEGATRON_VERSIONS[-1]} (as setup.py pins), or re-check the patches "
                           "(tests/parallel/test_cpu_compat.py) and add the version to CHECKED_MEGATRON_VERSIONS")
    return installed


def use_in_process_save_queue() -> None:
    """Synchronous ``dist_checkpointing`` saves keep their results in a plain in-process queue.

    For a synchronous save, megatron-core 0.16.1 (``filesystem_async._get_write_results_queue``)
    starts a ``multiprocessing`` Manager server process per rank just to hold a queue that is
    only used inside the saving process. That process outlives a trainer killed with SIGKILL
    (an orphan holding the job's stdout) and costs a process start. A ``queue.Queue`` has the
    same ``put`` / ``get_nowait`` interface for the synchronous path (async saves are not used).

    Raises:
        RuntimeError: an unchecked megatron-core version (:func:`check_megatron_version`).
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async  # lazy: keeps train --help fast

    check_megatron_version()
    if getattr(filesystem_async, "_results_queue", "missing") is None:
        filesystem_async._results_queue = queue.Queue()


def install(skip: Iterable[str] = (), force: bool = False) -> bool:
    """Install the CPU patches once per process; a no-op when CUDA is available.

    The ``torch.cuda`` / RNG patches are process-wide; the device mode (the first four
    patches) lives on torch's per-thread mode stack of the *calling thread*, so call this
    (or :func:`megatron_brrm.parallel.initialize_parallel`) on the thread that will run
    Megatron (a Ray actor's method thread, the main thread of a script).

    Args:
        skip: patch names (from :data:`PATCH_NAMES`) to leave out; used by the tests that
            prove each patch is needed.
        force: install even if CUDA is available (never needed in normal use).

    Returns:
        True when the patches are (now) installed, False when CUDA is present.

    Raises:
        ValueError: an unknown name in ``skip``.
        RuntimeError: an unchecked megatron-core version (:func:`check_megatron_version`).
    """
    skip = set(skip)
    unknown = skip - set(PATCH_NAMES)
    if unknown:
        raise ValueError(f"unknown cpu_compat patch name(s) {sorted(unknown)}; known: {list(PATCH_NAMES)}")
    if torch.cuda.is_available() and not force:
        return False
    check_megatron_version()
    for name in PATCH_NAMES:
        if name in skip or name in _installed:
            continue
        _INSTALLERS[name][0]()
        _installed.add(name)
        log.debug("cpu_compat: installed %s", name)
    return True


def uninstall(names: Iterable[str] | None = None) -> None:
    """Remove installed patches (all when ``names`` is None); for tests."""
    for name in reversed(PATCH_NAMES):
        if (names is None or name in names) and name in _installed:
            _INSTALLERS[name][1]()
            _installed.discard(name)


def is_installed(name: str | None = None) -> bool:
    """Whether patch ``name`` (or any patch, when None) is installed in this process."""
    return bool(_installed) if name is None else name in _installed
