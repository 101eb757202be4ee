"""Megatron-Core's import-time ``torch.compile`` turned off on a CPU-only torch (no torch import here).

``megatron.core.jit`` sets ``jit_fuser = torch.compile``, and every fusion module
(``megatron.core.fusions.*``) decorates its kernels with it while ``import megatron.core``
runs. Decorating imports ``torch._dynamo`` and ``torch._inductor``: about 1.5 CPU-seconds of
the ~5 that ``import megatron.core`` costs, in every process that imports it (each policy rank,
reward actor, CLI). On CPU those kernels never run: ``megatron_brrm.model.build`` turns every
fusion off without CUDA + Transformer Engine. So when ``megatron.core.jit`` has been executed
and torch has no CUDA, this hook calls Megatron's own ``disable_jit_fuser()``, before the
fusion modules read ``jit_fuser``; with CUDA it changes nothing.

:func:`install` runs from ``megatron_brrm/__init__.py``, i.e. before any project module can
import Megatron; it needs no torch (the package stays cheap to import), and is idempotent.
It is listed with the CPU patches of :mod:`megatron_brrm.parallel.cpu_compat` (``jit_fuser_off``)
and tested in ``tests/parallel/test_cpu_compat.py``.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys

TARGET = "megatron.core.jit"


class _JitFuserOff(importlib.abc.MetaPathFinder):
    """Finds ``megatron.core.jit`` through the other finders and wraps its loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)  # let the regular finders locate the module
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            import torch  # lazy: torch is imported by now (megatron.core.jit imports it)

            if not torch.cuda.is_available() and hasattr(module, "disable_jit_fuser"):
                module.disable_jit_fuser()

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Put the hook first on ``sys.meta_path`` (once). Has no effect if Megatron is already imported."""
    if not any(isinstance(f, _JitFuserOff) for f in sys.meta_path):
        sys.meta_path.insert(0, _JitFuserOff())
