#!/usr/bin/env python
"""Benchmark: memory and speed of the HF <-> Megatron converters on a multi-GB checkpoint.

Builds a synthetic Qwen3-architecture HF checkpoint of at least --size-gb GB (random bf16
tensors written one at a time into 1 GB safetensors shards, never all in memory), then runs
in separate child processes

    tools/convert_hf_to_megatron.py logic   (HF -> Megatron torch_dist)
    tools/convert_megatron_to_hf.py logic   (Megatron torch_dist -> HF)

and reports, per direction, the child's peak resident memory (``VmHWM``, which includes
the ~0.4 GB of imported torch/Megatron/transformers) as a ratio of the checkpoint size (target <= 0.25: the
converters hold a few tensors, not the model), and its throughput as a ratio of a plain copy
of the same safetensors files (``shutil.copyfile`` + fsync; the converters fsync too) timed in
the same run on the same disk, before and after the conversions (mean of the two).
With --verify (default) every exported tensor is compared bit for bit with the source.

Shapes: Qwen3-1.7B-like layers (hidden 2048, 16 query heads of 128, 8 KV groups, ffn 6144,
q/k norms) with a 32768-token vocabulary, and as many layers as needed for --size-gb; the
largest tensors (embedding and output layer, 134 MB each) are ~3 % of 4 GB, like the embedding
of Qwen3-14B (1.5 GB of 28 GB).

Example:
    python tools/bench/convert_memory.py --size-gb 4
    python tools/bench/convert_memory.py --size-gb 4 --workdir /scratch --keep

Temporary files go to --workdir (default: the system temp dir) and are removed at the end
unless --keep; the run needs about 3 x --size-gb of free disk (4 x with --keep).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

GB = 10**9
SHAPE = dict(hidden_size=2048, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
             intermediate_size=6144, vocab_size=32768)


def qwen3_config(num_layers: int):
    """A Qwen3 HF config with the benchmark's shapes (bf16, untied embeddings)."""
    from transformers import Qwen3Config  # lazy: keeps bench/convert_memory.py --help fast

    return Qwen3Config(num_hidden_layers=num_layers, max_position_embeddings=4096, rms_norm_eps=1e-6,
                       rope_theta=1_000_000.0, tie_word_embeddings=False, dtype="bfloat16", **SHAPE)


def layers_for_size(size_bytes: int) -> int:
    """Fewest layers making the bf16 checkpoint at least ``size_bytes``."""
    h, f, v = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["vocab_size"]
    q, g, d = SHAPE["num_attention_heads"], SHAPE["num_key_value_heads"], SHAPE["head_dim"]
    per_layer = 2 * ((q + 2 * g) * d * h + q * d * h + 3 * f * h + 2 * h + 2 * d)
    fixed = 2 * (2 * v * h + h)
    return max(1, math.ceil((size_bytes - fixed) / per_layer))


def build_synthetic_checkpoint(out: Path, size_bytes: int) -> int:
    """Write the synthetic HF folder tensor by tensor; return its tensor bytes."""
    import torch  # lazy: keeps bench/convert_memory.py --help fast

    # lazy: keeps bench/convert_memory.py --help fast
    from megatron_brrm.checkpoint.hf_io import ShardedSafetensorsWriter
    from megatron_brrm.model.mapping import get_mapping  # lazy: keeps bench/convert_memory.py --help fast

    config = qwen3_config(layers_for_size(size_bytes))
    out.mkdir(parents=True)
    config.to_json_file(str(out / "config.json"))
    mapping = get_mapping(config.to_dict(), padded_vocab_size=config.vocab_size)
    plan = [(n, mapping.hf_shape(n), torch.bfloat16) for n in mapping.hf_param_names()]
    gen = torch.Generator().manual_seed(0)
    with ShardedSafetensorsWriter(out, plan, max_shard_bytes=GB) as writer:
        for name, shape, dtype in plan:
            writer.write(name, (torch.randn(shape, generator=gen, dtype=torch.float32) * 0.02).to(dtype))
    return writer.total_size


def copy_files(src: Path, dst: Path) -> float:
    """Plain copy of ``src``'s safetensors files into ``dst`` (fsynced); returns seconds."""
    dst.mkdir()
    start = time.perf_counter()
    for f in sorted(src.glob("*.safetensors")):
        shutil.copyfile(f, dst / f.name)
        with open(dst / f.name, "rb+") as fh:
            os.fsync(fh.fileno())
    return time.perf_counter() - start


def _child(direction: str, src: str, dst: str) -> None:
    """Run one conversion in this (fresh) process; print JSON with seconds and memory."""
    # The imports are not part of the timed conversion; the parent never loads them.
    import megatron.core  # noqa: F401  # lazy: runs in a spawned/Ray worker process
    import transformers  # noqa: F401  # lazy: runs in a spawned/Ray worker process

    from megatron_brrm.checkpoint.model_ckpt import (  # lazy: runs in a spawned/Ray worker process
        convert_hf_to_megatron, use_mmap_for_large_allocations)
    # lazy: runs in a spawned/Ray worker process
    from megatron_brrm.checkpoint.model_export import convert_megatron_to_hf

    use_mmap_for_large_allocations()  # as the CLIs do
    baseline = psutil.Process().memory_info().rss
    start = time.perf_counter()
    if direction == "hf2mg":
        convert_hf_to_megatron(src, dst, tp=1, pp=1, dtype="bf16")
    else:
        convert_megatron_to_hf(src, dst)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss": peak_rss_bytes(), "baseline_rss": baseline}))


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this address space.
    (``getrusage().ru_maxrss`` is not used there: the kernel carries the forking parent's RSS
    over ``execve`` into it, so a child would report at least its parent's size.) Elsewhere
    ``ru_maxrss`` (bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_child(direction: str, src: Path, dst: Path) -> dict:
    """Run :func:`_child` in a fresh interpreter (its own peak RSS) and parse its report."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, __file__, "--child", direction, "--src", str(src), "--dst", str(dst)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{direction} child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def verify(src: Path, out: Path) -> int:
    """Compare every tensor of two HF folders bit for bit (streamed); return the count."""
    import torch  # lazy: keeps bench/convert_memory.py --help fast

    from megatron_brrm.checkpoint.hf_io import HFSafetensorsReader  # lazy: keeps bench/convert_memory.py --help fast

    a, b = HFSafetensorsReader(src), HFSafetensorsReader(out)
    if a.names() != b.names():
        raise AssertionError(f"tensor sets differ: {sorted(set(a.names()) ^ set(b.names()))[:5]}")
    for name in a.names():
        if not torch.equal(a.get_tensor(name), b.get_tensor(name)):
            raise AssertionError(f"tensor {name} differs after HF -> Megatron -> HF")
    return len(a.names())


def main(argv=None) -> int:
    """Run the benchmark and print its report; returns the exit status."""
    p = argparse.ArgumentParser(prog="convert_memory.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--size-gb", type=float, default=4.0, help="minimum checkpoint size in GB (10^9 bytes; default 4)")
    p.add_argument("--workdir", type=Path, default=None, help="where temporary checkpoints go (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the synthetic and converted checkpoints")
    p.add_argument("--no-verify", action="store_true", help="skip the bit-exact comparison of the round trip")
    p.add_argument("--child", choices=["hf2mg", "mg2hf"], help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    p.add_argument("--dst", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.src, args.dst)
        return 0

    work = Path(tempfile.mkdtemp(prefix="convert_memory_", dir=args.workdir))
    try:
        t = time.perf_counter()
        size = build_synthetic_checkpoint(work / "hf_src", int(args.size_gb * GB))
        print(f"synthetic Qwen3 checkpoint: {size / GB:.2f} GB, "
              f"{layers_for_size(int(args.size_gb * GB))} layers, built in {time.perf_counter() - t:.0f} s ({work})")
        copies = []

        def timed_copy() -> None:
            copies.append(copy_files(work / "hf_src", work / "copy"))
            shutil.rmtree(work / "copy")
            print(f"plain file copy:  {copies[-1]:7.1f} s  {size / copies[-1] / GB:6.2f} GB/s")

        timed_copy()
        report = {"checkpoint_bytes": size}
        results = {}
        for direction, src, dst, label in (("hf2mg", work / "hf_src", work / "megatron", "HF -> Megatron"),
                                           ("mg2hf", work / "megatron", work / "hf_out", "Megatron -> HF")):
            results[direction] = (run_child(direction, src, dst), label)
        if not args.keep:
            shutil.rmtree(work / "megatron")  # bound disk use to ~3 x the checkpoint
        timed_copy()  # again after the conversions: disk speed on a shared machine drifts
        copy_s = sum(copies) / len(copies)
        copy_rate = size / copy_s
        report["copy_seconds"] = copies
        for direction, (r, label) in results.items():
            rate = size / r["seconds"]
            r.update(rss_ratio=r["peak_rss"] / size, throughput_vs_copy=rate / copy_rate)
            report[direction] = r
            print(f"{label}:  {r['seconds']:7.1f} s  {rate / GB:6.2f} GB/s = {r['throughput_vs_copy']:.2f} x copy;  "
                  f"peak RSS {r['peak_rss'] / GB:.2f} GB = {r['rss_ratio']:.3f} x checkpoint "
                  f"(libraries alone {r['baseline_rss'] / GB:.2f} GB) [target <= 0.25]")
        if not args.no_verify:
            n = verify(work / "hf_src", work / "hf_out")
            print(f"round trip verified: {n} tensors bit-identical")
            report["verified_tensors"] = n
        print(json.dumps(report))
        ok = all(report[d]["rss_ratio"] <= 0.25 for d in ("hf2mg", "mg2hf"))
        return 0 if ok else 3
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
