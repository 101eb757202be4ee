"""The CPU compatibility layer: every patch is needed, and together they make Megatron run.

One spawned process (the patches never touch the pytest process) installs all patches,
then for each patch removes it, runs the Megatron operation its docstring names, checks
the specific failure (error text and the Megatron function it comes from), and reinstalls.
The first plan, with every patch installed, is the positive control: all operations work.
"""
from __future__ import annotations

import time

import pytest

from megatron_brrm.parallel import cpu_compat
from megatron_brrm.parallel.launch import run_on_ranks

from compat_ops import OPS, probe

# patch removed -> (operation, error text, Megatron file:function where it fails)
EXPECTED = {
    "cuda_device_args": [
        ("forward_backward", "Cannot access accelerator device", "rotary_pos_embedding.py:get_emb"),
        ("ddp", "Cannot access accelerator device", "param_and_grad_buffer.py:__init__")],
    "tensor_cuda_identity": [("broadcast_data", "Torch not compiled with CUDA enabled", "tensor_parallel/data.py:")],
    "cuda_type_names": [("bf16_optimizer", "Wrapped parameters must be one of torch.cuda.FloatTensor",
                         "optimizer/optimizer.py:__init__")],
    "backward_keeps_mode": [("recompute", "Torch not compiled with CUDA enabled",
                             "transformer/utils.py:get_default_causal_mask")],
    "current_device": [("forward_backward", "Torch not compiled with CUDA enabled", "rotary_pos_embedding.py:get_emb")],
    "synchronize": [("dist_ckpt_save", "Torch not compiled with CUDA enabled", "filesystem_async.py:preload_tensors")],
    "rng_tracker": [("seed", "Torch not compiled with CUDA enabled", "tensor_parallel/random.py:add")],
    "rng_state_functions": [("recompute", "Torch not compiled with CUDA enabled",
                             "tensor_parallel/random.py:_get_cuda_rng_state")],
}


def test_every_patch_has_a_removal_test():
    assert set(EXPECTED) == set(cpu_compat.PATCH_NAMES)


@pytest.mark.multiprocess
def test_each_patch_is_needed_and_all_together_suffice():
    plans = [{"skip": [], "ops": list(OPS)}]
    plans += [{"skip": [name], "ops": sorted({op for op, _, _ in checks})} for name, checks in EXPECTED.items()]
    start = time.monotonic()
    results = run_on_ranks(probe, 1, args=(plans,), timeout_s=240)[0]
    print(f"\ncpu_compat probes: {time.monotonic() - start:.1f} s")
    control = results[0]
    assert control == {op: None for op in OPS}, f"with every patch installed some operation failed: {control}"
    for plan, got in zip(plans[1:], results[1:]):
        name = plan["skip"][0]
        for op, error, frame in EXPECTED[name]:
            failure = got[op]
            assert failure is not None, f"removing {name!r} did not break {op!r}: the patch is not needed for it"
            assert error in failure["error"] and frame in failure["megatron_frame"], (name, op, failure)


def _installed():
    return {name for name in cpu_compat.PATCH_NAMES if cpu_compat.is_installed(name)}


def test_install_is_a_noop_with_cuda(monkeypatch):
    # Other tests may have run a converter in this process (which installs the layer), so
    # compare before/after instead of assuming a clean process.
    before = _installed()
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert cpu_compat.install() is False
    assert _installed() == before


def test_unknown_patch_name_is_rejected():
    before = _installed()
    with pytest.raises(ValueError, match="unknown cpu_compat patch name.*no_such_patch"):
        cpu_compat.install(skip=["no_such_patch"])
    assert _installed() == before


def test_unchecked_megatron_version_is_refused(monkeypatch):
    """The patches touch Megatron internals checked against one version; another one is refused with the fix."""
    import importlib.metadata

    from megatron_brrm.parallel import cpu_compat

    assert cpu_compat.check_megatron_version() == "0.16.1"  # the pinned, checked version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.17.0")
    with pytest.raises(RuntimeError, match=r"megatron-core 0.17.0 is installed.*checked against 0.16.1.*megatron-core==0.16.1"):
        cpu_compat.check_megatron_version()
    with pytest.raises(RuntimeError, match="0.17.0"):
        cpu_compat.use_in_process_save_queue()


def test_megatron_imports_without_torch_compile_on_cpu():
    """``megatron_brrm/megatron_import_hook.py`` (``jit_fuser_off``): importing the package first makes
    Megatron's ``jit_fuser`` its own no-op decorator on a CPU-only torch, so ``import megatron.core``
    never loads ``torch._dynamo`` (the fused kernels it would compile never run on CPU). The control:
    without the hook (plain ``import megatron.core``), and with CUDA reported available, Megatron
    decorates with ``torch.compile`` and ``torch._dynamo`` is loaded."""
    import subprocess
    import sys

    probe = ("import sys, torch; {pre}import megatron.core, megatron.core.jit as j; "
             "print(j.jit_fuser is j.noop_decorator, 'torch._dynamo' in sys.modules)")
    runs = {"hook": "import megatron_brrm; ", "no hook": "",
            "hook, cuda": "torch.cuda.is_available = lambda: True; import megatron_brrm; "}
    got = {}
    for name, pre in runs.items():
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", probe.format(pre=pre)], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, (name, out.stderr[-2000:])
        got[name] = out.stdout.split()
    assert got == {"hook": ["True", "False"], "no hook": ["False", "True"], "hook, cuda": ["False", "True"]}
