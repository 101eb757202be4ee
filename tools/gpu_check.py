#!/usr/bin/env python
"""Run every GPU path this machine can run and print one table: the command to run on any GPU box.

    python tools/gpu_check.py [--rows megatron_local,nccl,...] [--timeout 240] [--json results.json]

Rows (each in its own process, on a tiny Qwen3 model built locally, nothing downloaded):

  cuda            the device: name, compute capability, memory
  megatron_local  Megatron-Core bf16 with the local layer spec: logits vs transformers, 3 Adam steps
  nccl            torch.distributed over NCCL at world size 1: all-reduce and barrier
  hf_engine       the HF generation engine on CUDA: greedy tokens equal transformers' generate
  refit           refit into the HF engine on CUDA: weights bit-equal to the stream, outputs change
  te_spec         the Transformer Engine layer spec: logits vs transformers          (needs transformer_engine)
  fp8_<recipe>    TE FP8 training step for each recipe this GPU supports            (needs transformer_engine)
  vllm            the vLLM engine: generated tokens' logprobs vs transformers (bf16)   (needs vllm)
  vllm_refit      refit into vLLM: logprobs follow the new weights, not the old ones  (needs vllm)
  vllm_fp8        FP8 rollouts: block-FP8 vLLM engine near bf16, and a refit lands      (needs vllm)

Each row is pass / FAIL / n/a with the reason (n/a: no CUDA device, a package that does not
import, or a GPU too old for an FP8 recipe). Exit code 1 when a row fails, else 0; on a machine
without CUDA every row is n/a and it exits 0. The whole table takes a few minutes on one GPU.

On a GPU box without network: build wheels where there is network, with the same Python
version and platform, and carry them with the repository:

    python -m pip wheel --wheel-dir wheels .           # the project, megatron-core and the pure-Python deps
    rm -f wheels/torch-* wheels/nvidia_* wheels/triton-*  # the GPU image brings its own torch and CUDA
    # on the GPU box (torch, and TE / vLLM when wanted, from its image):
    python -m pip install --no-index --find-links wheels megatron-brrm
    python tools/gpu_check.py

``--device cpu`` runs the rows that have a CPU form (megatron_local and nccl over gloo, hf_engine,
refit) on the CPU: the tool's own test, not a GPU check.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from megatron_brrm.config import ModelConfig, ParallelConfig  # noqa: E402
from megatron_brrm.model.fp8 import fp8_device_problem  # noqa: E402

FP8_RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")
ROWS = ["cuda", "megatron_local", "nccl", "hf_engine", "refit", "te_spec"] + [f"fp8_{r}" for r in FP8_RECIPES] + \
       ["vllm", "vllm_refit", "vllm_fp8"]
NEEDS = {"te_spec": "transformer_engine", "vllm": "vllm", "vllm_refit": "vllm", "vllm_fp8": "vllm",
         **{f"fp8_{r}": "transformer_engine" for r in FP8_RECIPES}}
CPU_ROWS = ("megatron_local", "nccl", "hf_engine", "refit")


class RowFailed(AssertionError):
    """A row ran and its check did not hold (the message says what was measured)."""


class NotAvailable(Exception):
    """A row cannot run here (the message says why)."""


# ------------------------------------------------------------------------------------------ rows
def _hf_model(tiny: str, device: str, dtype):
    import torch  # lazy: keeps gpu_check.py --help fast
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: keeps gpu_check.py --help fast

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=dtype).to(device).eval()
    torch.manual_seed(0)
    return model, AutoTokenizer.from_pretrained(tiny)


def _ids(device: str, batch: int = 2, seq: int = 32, vocab: int = 2048):
    import torch  # lazy: keeps gpu_check.py --help fast

    g = torch.Generator().manual_seed(1)
    return torch.randint(3, vocab, (batch, seq), generator=g).to(device)


def _megatron(tiny: str, device: str, impl: str, fp8: Optional[str] = None, recipe: str = "delayed"):
    """(model, mapping-loaded) Megatron GPTModel of the tiny checkpoint at TP=1, this process a world of one."""
    import torch  # lazy: keeps gpu_check.py --help fast

    from megatron_brrm.model.build import build_gpt_model, load_hf_config  # lazy: keeps gpu_check.py --help fast
    from megatron_brrm.model.mapping import get_mapping  # lazy: keeps gpu_check.py --help fast
    from megatron_brrm.model.weights import load_hf_weights_into_megatron  # lazy: keeps gpu_check.py --help fast
    from megatron_brrm.parallel.init import initialize_parallel  # lazy: keeps gpu_check.py --help fast

    pcfg = ParallelConfig(backend="nccl" if device == "cuda" else "gloo")
    initialize_parallel(pcfg)
    hf = load_hf_config(tiny)
    mcfg = ModelConfig(params_dtype="bf16", transformer_impl=impl, fp8=fp8, fp8_recipe=recipe)
    model = build_gpt_model(hf, mcfg, pcfg).to(device)
    from safetensors.torch import load_file  # lazy: keeps gpu_check.py --help fast

    state = load_file(str(Path(tiny) / "model.safetensors"))
    mapping = get_mapping(hf, make_vocab_size_divisible_by=mcfg.make_vocab_size_divisible_by)
    load_hf_weights_into_megatron(model, {k: v.to(torch.bfloat16) for k, v in state.items()}, mapping)
    return model, hf


def _logits_vs_hf(model, tiny: str, device: str, vocab: int) -> float:
    """Max |log-softmax difference| between the Megatron model and transformers on the same tokens (bf16)."""
    import torch  # lazy: keeps gpu_check.py --help fast

    ids = _ids(device)
    pos = torch.arange(ids.shape[1], device=device)[None].expand_as(ids)
    with torch.no_grad():
        ours = model(ids, pos, None)[..., :vocab].float().log_softmax(-1)
        ref_model, _ = _hf_model(tiny, device, torch.bfloat16)
        ref = ref_model(ids).logits.float().log_softmax(-1)
    return float((ours - ref).abs().max())


def row_cuda(args) -> str:
    import torch  # lazy: keeps gpu_check.py --help fast

    if args.device != "cuda":
        return "cpu (dry run)"
    p = torch.cuda.get_device_properties(0)
    return f"{p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2 ** 30:.0f} GiB, torch {torch.__version__}"


def _train_steps(model, device: str, steps: int = 3) -> List[float]:
    import torch  # lazy: keeps gpu_check.py --help fast

    ids = _ids(device, batch=2, seq=32)
    pos = torch.arange(ids.shape[1], device=device)[None].expand_as(ids)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        logits = model(ids, pos, None)[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def _megatron_row(args, impl: str, fp8: Optional[str] = None, recipe: str = "delayed") -> str:
    model, hf = _megatron(args.tiny, args.device, impl, fp8, recipe)
    diff = None
    if fp8 is None:
        diff = _logits_vs_hf(model, args.tiny, args.device, hf.vocab_size)
        if diff > 0.1:  # bf16 logits of a 2-layer model: measured differences ~1e-2
            raise RowFailed(f"log-softmax differs from transformers by {diff:.3g} (> 0.1)")
    losses = _train_steps(model, args.device)
    if not all(x == x and abs(x) < 1e4 for x in losses) or not losses[-1] < losses[0]:
        raise RowFailed(f"loss did not fall over 3 Adam steps: {losses}")
    out = f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in 3 Adam steps"
    return out if diff is None else f"log-softmax vs transformers {diff:.2g}; {out}"


def row_megatron_local(args) -> str:
    return _megatron_row(args, "local")


def row_te_spec(args) -> str:
    return _megatron_row(args, "transformer_engine")


def _fp8_row(recipe: str):
    def run(args) -> str:
        import torch  # lazy: keeps gpu_check.py --help fast

        problem = fp8_device_problem(recipe, torch.cuda.get_device_capability() if args.device == "cuda" else None)
        if problem:
            raise NotAvailable(problem)
        return _megatron_row(args, "transformer_engine", fp8="e4m3" if recipe in ("blockwise", "mxfp8") else "hybrid",
                             recipe=recipe)
    return run


def row_nccl(args) -> str:
    import torch  # lazy: keeps gpu_check.py --help fast

    from megatron_brrm.parallel.init import initialize_parallel  # lazy: keeps gpu_check.py --help fast

    state = initialize_parallel(ParallelConfig(backend="nccl" if args.device == "cuda" else "gloo"))
    t = torch.arange(4, dtype=torch.float32, device=args.device)
    torch.distributed.all_reduce(t)
    torch.distributed.barrier()
    if t.tolist() != [0.0, 1.0, 2.0, 3.0]:
        raise RowFailed(f"all-reduce over one rank changed the tensor: {t.tolist()}")
    return f"{state.backend}, world size {state.world_size}: all-reduce and barrier"


def _greedy_hf(tiny: str, device: str, prompt: List[int], new: int, state=None) -> List[int]:
    import torch  # lazy: keeps gpu_check.py --help fast

    model, _ = _hf_model(tiny, device, torch.float32)
    if state is not None:
        model.load_state_dict(state, strict=False)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt], device=device), max_new_tokens=new, do_sample=False,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def _prompt(tiny: str) -> List[int]:
    from transformers import AutoTokenizer  # lazy: keeps gpu_check.py --help fast

    tok = AutoTokenizer.from_pretrained(tiny)
    return tok("[The Begin of Context] User: which reply is better?", add_special_tokens=False)["input_ids"]


def _no_eos_params(new: int):
    from megatron_brrm.rollout.engine import SamplingParams  # lazy: keeps gpu_check.py --help fast

    return SamplingParams(n=1, temperature=0.0, max_new_tokens=new, seed=0)


def row_hf_engine(args) -> str:
    import torch  # lazy: keeps gpu_check.py --help fast

    from megatron_brrm.rollout.hf_engine import HFEngine  # lazy: keeps gpu_check.py --help fast

    prompt, new = _prompt(args.tiny), 12
    eng = HFEngine(args.tiny, device=args.device, dtype=torch.float32)
    got = eng.generate([prompt], _no_eos_params(new))[0][0].token_ids
    want = _greedy_hf(args.tiny, args.device, prompt, new)
    if got != want[:len(got)] or not got:
        raise RowFailed(f"greedy tokens {got} differ from transformers' generate {want}")
    return f"{len(got)} greedy tokens equal transformers' generate (fp32)"


def _perturbed(tiny: str):
    import torch  # lazy: keeps gpu_check.py --help fast
    from safetensors.torch import load_file  # lazy: keeps gpu_check.py --help fast

    g = torch.Generator().manual_seed(5)
    state = load_file(str(Path(tiny) / "model.safetensors"))
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}


def row_refit(args) -> str:
    import torch  # lazy: keeps gpu_check.py --help fast

    from megatron_brrm.rollout.hf_engine import HFEngine  # lazy: keeps gpu_check.py --help fast

    prompt, new = _prompt(args.tiny), 12
    eng = HFEngine(args.tiny, device=args.device, dtype=torch.float32)
    before = eng.generate([prompt], _no_eos_params(new))[0][0].token_ids
    state = _perturbed(args.tiny)
    eng.update_weights(iter(state.items()))
    params = dict(eng.model.named_parameters(remove_duplicate=False))
    bad = [k for k, v in state.items() if k in params and not torch.equal(params[k].detach().cpu(), v)]
    if bad:
        raise RowFailed(f"{len(bad)} tensor(s) not bit-equal after the refit, e.g. {bad[0]}")
    after = eng.generate([prompt], _no_eos_params(new))[0][0].token_ids
    want = _greedy_hf(args.tiny, args.device, prompt, new, state)
    if after != want[:len(after)]:
        raise RowFailed(f"after the refit greedy tokens {after} differ from transformers with the same weights {want}")
    return f"{len(state)} tensors bit-equal; greedy output {'changed' if after != before else 'unchanged'} and equals transformers'"


def _vllm(args, **kw):
    from megatron_brrm.rollout.vllm_engine import VLLMEngine  # lazy: keeps gpu_check.py --help fast

    return VLLMEngine(args.tiny, dtype="bfloat16", gpu_memory_utilization=0.3, max_model_len=512,
                      enable_sleep_mode=False, **kw)


def _logprob_gap(tiny: str, device: str, prompt: List[int], out, state=None) -> float:
    """Max |engine logprob - transformers' log-softmax| over the generated tokens (bf16 model)."""
    import torch  # lazy: keeps gpu_check.py --help fast

    model, _ = _hf_model(tiny, device, torch.bfloat16)
    if state is not None:
        model.load_state_dict({k: v.to(torch.bfloat16) for k, v in state.items()}, strict=False)
    ids = torch.tensor([prompt + list(out.token_ids)], device=device)
    with torch.no_grad():
        logp = model(ids).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
    ref = logp.gather(-1, ids[0, len(prompt):, None]).squeeze(-1).cpu()
    return float((torch.tensor(out.logprobs) - ref).abs().max())


def row_vllm(args) -> str:
    prompt = _prompt(args.tiny)
    out = _vllm(args).generate([prompt], _no_eos_params(12))[0][0]
    gap = _logprob_gap(args.tiny, args.device, prompt, out)
    if not out.token_ids or not gap < 0.1:  # bf16 kernels of a 2-layer model agree to ~1e-2
        raise RowFailed(f"vLLM generated {out.token_ids}; its logprobs differ from transformers' by {gap:.3g} (> 0.1)")
    return f"{len(out.token_ids)} greedy tokens; logprobs within {gap:.2g} of transformers' (bf16)"


def row_vllm_refit(args) -> str:
    prompt = _prompt(args.tiny)
    eng = _vllm(args)
    state = _perturbed(args.tiny)
    eng.update_weights(iter(state.items()))
    out = eng.generate([prompt], _no_eos_params(12))[0][0]
    new = _logprob_gap(args.tiny, args.device, prompt, out, state)
    old = _logprob_gap(args.tiny, args.device, prompt, out)
    if not new < 0.1 or not new < old:
        raise RowFailed(f"after the refit vLLM's logprobs are {new:.3g} from the new weights' and {old:.3g} from the "
                        "old ones': the update did not land")
    return f"refit of {len(state)} tensors: logprobs within {new:.2g} of the new weights' (old weights: {old:.2g})"


def row_vllm_fp8(args) -> str:
    prompt = _prompt(args.tiny)
    eng = _vllm(args, quantization="fp8")
    out0 = eng.generate([prompt], _no_eos_params(12))[0][0]
    gap0 = _logprob_gap(args.tiny, args.device, prompt, out0)
    state = _perturbed(args.tiny)
    eng.update_weights(iter(state.items()))
    out1 = eng.generate([prompt], _no_eos_params(12))[0][0]
    new = _logprob_gap(args.tiny, args.device, prompt, out1, state)
    old = _logprob_gap(args.tiny, args.device, prompt, out1)
    if not out0.token_ids or not gap0 < 1.0 or not new < old:
        raise RowFailed(f"FP8 engine: logprob gap {gap0:.3g} to the bf16 model before the refit; after it {new:.3g} "
                        f"to the new weights vs {old:.3g} to the old (the refit must bring it closer to the new)")
    return (f"block-FP8 engine: logprobs within {gap0:.2g} of bf16; after the refit {new:.2g} from the new weights "
            f"(old weights: {old:.2g})")


RUNNERS = {"cuda": row_cuda, "megatron_local": row_megatron_local, "nccl": row_nccl, "hf_engine": row_hf_engine,
           "refit": row_refit, "te_spec": row_te_spec, "vllm": row_vllm, "vllm_refit": row_vllm_refit,
           "vllm_fp8": row_vllm_fp8, **{f"fp8_{r}": _fp8_row(r) for r in FP8_RECIPES}}


# ------------------------------------------------------------------------------------- driver
def availability(row: str, device: str) -> Optional[str]:
    """Why ``row`` cannot run here, or None."""
    if device == "cpu":
        return None if row in CPU_ROWS or row == "cuda" else "GPU only (--device cpu runs the CPU forms)"
    import torch  # lazy: keeps gpu_check.py --help fast

    if not torch.cuda.is_available():
        return "no CUDA device"
    mod = NEEDS.get(row)
    if mod and importlib.util.find_spec(mod) is None:
        return f"{mod} is not installed"
    if mod:
        try:
            __import__(mod)
        except Exception as exc:  # a broken install: say so instead of failing the row
            return f"{mod} does not import ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def run_row(row: str, args) -> Dict[str, object]:
    """Run one row in this process (the child side); returns ``{status, detail}``."""
    try:
        return {"status": "pass", "detail": RUNNERS[row](args)}
    except NotAvailable as exc:
        return {"status": "n/a", "detail": str(exc)}
    except RowFailed as exc:
        return {"status": "FAIL", "detail": str(exc)}
    except Exception as exc:  # any crash of the path under test is a failure of that row
        return {"status": "FAIL", "detail": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}


def run_in_child(row: str, tiny: str, device: str, timeout: float) -> Dict[str, object]:
    """Run ``row`` in a fresh process (own CUDA context and process group) with a timeout."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run-row", row, "--tiny", tiny, "--device", device]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "FAIL", "detail": f"timed out after {timeout:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("GPU_CHECK_RESULT "):
            return json.loads(line[len("GPU_CHECK_RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"status": "FAIL", "detail": f"exit code {proc.returncode}: {tail[0][:300]}"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tools/gpu_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", help=f"comma-separated subset of: {', '.join(ROWS)}")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per row (default 240)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda (default), or cpu for a dry run of the rows with a CPU form")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--run-row", help=argparse.SUPPRESS)
    p.add_argument("--tiny", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.run_row:  # child process
        result = run_row(args.run_row, args)
        print("GPU_CHECK_RESULT " + json.dumps(result), flush=True)
        return 0
    rows = ROWS if not args.rows else [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in RUNNERS]
    if unknown:
        print(f"error: unknown row(s) {unknown}; choose from {ROWS}", file=sys.stderr)
        return 2
    results: Dict[str, Dict[str, object]] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        tiny = None
        for row in rows:
            reason = availability(row, args.device)
            if reason:
                results[row] = {"status": "n/a", "detail": reason, "seconds": 0.0}
                continue
            if tiny is None:
                from megatron_brrm.model.tiny import build_tiny_hf_model  # lazy: keeps gpu_check.py --help fast

                tiny = str(build_tiny_hf_model(Path(tmp) / "tiny-qwen3", arch="qwen3", seed=0))
            t0 = time.perf_counter()
            res = run_in_child(row, tiny, args.device, args.timeout)
            res["seconds"] = round(time.perf_counter() - t0, 1)
            results[row] = res
            print(f"  {row:<16}{res['status']:<6}{res['seconds']:>7.1f} s  {res['detail']}", flush=True)
    width = max(len(r) for r in rows)
    print(f"\n{'row':<{width}}  status  seconds  detail")
    for row in rows:
        r = results[row]
        print(f"{row:<{width}}  {r['status']:<6}  {r['seconds']:>7.1f}  {r['detail']}")
    failed = [r for r in rows if results[r]["status"] == "FAIL"]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} rows pass or are n/a; {len(failed)} failed"
          f" ({time.perf_counter() - t_all:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
