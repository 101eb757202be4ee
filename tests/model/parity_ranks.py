"""Rank functions for the Megatron-vs-transformers parity tests (spawned by run_on_ranks).

Kept out of the test module so the spawned children import only this small file.
"""
from __future__ import annotations

from typing import Dict, List


def _hf_logits(hf_dir: str, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def _megatron_logits(case: Dict, ids):
    """Build the case's layout, load the HF weights, run Megatron's forward-only schedule.

    Returns the full padded-vocab logits ``[batch, seq, padded_vocab]`` (fp32) on the last
    pipeline stage, None elsewhere, plus the model's padded vocab size.
    """
    import torch
    from megatron.core import parallel_state as mpu
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from safetensors.torch import load_file

    from megatron_brrm.config import ModelConfig, ParallelConfig
    from megatron_brrm.model.build import build_gpt_model, load_hf_config
    from megatron_brrm.model.mapping import get_mapping
    from megatron_brrm.model.weights import load_hf_weights_into_megatron, megatron_state_to_hf
    from megatron_brrm.parallel import initialize_parallel

    pcfg = ParallelConfig(tensor_model_parallel_size=case["tp"], pipeline_model_parallel_size=case["pp"],
                          virtual_pipeline_model_parallel_size=case.get("vpp"),
                          sequence_parallel=case.get("sp", False), backend="gloo")
    mcfg = ModelConfig(transformer_impl="local", params_dtype="fp32")
    initialize_parallel(pcfg)
    hf = load_hf_config(case["hf_dir"])
    vpp = case.get("vpp")
    chunks = [build_gpt_model(hf, mcfg, pcfg, vp_stage=k) for k in range(vpp)] if vpp else [build_gpt_model(hf, mcfg, pcfg)]
    mapping = get_mapping(hf, tp_size=case["tp"], make_vocab_size_divisible_by=mcfg.make_vocab_size_divisible_by)
    hf_weights = load_file(f"{case['hf_dir']}/model.safetensors")
    load_hf_weights_into_megatron(chunks, hf_weights, mapping, vp_size=vpp)
    # Export back (TP all-gather + PP broadcast): must reproduce the HF file bit for bit on every rank.
    exported = megatron_state_to_hf(chunks, mapping, vp_size=vpp)
    export_mismatch = sorted(set(exported) ^ set(hf_weights)) + sorted(
        k for k in set(exported) & set(hf_weights) if not torch.equal(exported[k], hf_weights[k]))
    for c in chunks:
        c.eval()

    batch, seq = ids.shape
    micro = [ids[i:i + 1] for i in range(batch)]

    def forward_step(data_iterator, model):
        tokens = next(data_iterator)
        position_ids = torch.arange(seq).unsqueeze(0)
        out = model(tokens, position_ids, attention_mask=None)

        def collect(output_tensor):
            return output_tensor.sum() * 0.0, {"logits": output_tensor.detach()}

        return out, collect

    iters = [iter(micro) for _ in chunks] if vpp else iter(micro)
    with torch.no_grad():
        store = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iters, model=chunks if vpp else chunks[0],
            num_microbatches=batch, seq_length=seq, micro_batch_size=1, forward_only=True)
    if not mpu.is_pipeline_last_stage():
        return None, mapping.padded_vocab_size, export_mismatch
    local = torch.cat([d["logits"] for d in store], dim=0)  # [batch, seq, padded_vocab / TP]
    tp_group = mpu.get_tensor_model_parallel_group()
    parts = [torch.empty_like(local) for _ in range(case["tp"])]
    torch.distributed.all_gather(parts, local.contiguous(), group=tp_group)
    return torch.cat(parts, dim=-1), mapping.padded_vocab_size, export_mismatch


def logits_parity(rank: int, world_size: int, cases: List[Dict], destroy: bool = True) -> List[Dict]:
    """For each case: the HF tensors that export did not reproduce bit-exactly (every rank),
    and, on the last pipeline stage, max |Megatron - transformers| over real-vocab logits."""
    import os

    import torch

    from megatron_brrm.parallel import destroy_parallel

    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(1)
    refs: Dict = {}
    results: List[Dict] = []
    try:
        for case in cases:
            gen = torch.Generator().manual_seed(1234)
            ids = torch.randint(0, case["vocab_size"], (2, 16), generator=gen)
            if case["hf_dir"] not in refs:
                refs[case["hf_dir"]] = _hf_logits(case["hf_dir"], ids)
            ref = refs[case["hf_dir"]]
            logits, padded, export_mismatch = _megatron_logits(case, ids)
            if logits is None:
                results.append({"name": case["name"], "export_mismatch": export_mismatch})
                continue
            vocab = case["vocab_size"]
            results.append({
                "name": case["name"],
                "export_mismatch": export_mismatch,
                "max_abs_diff": (logits[..., :vocab] - ref).abs().max().item(),
                "ref_std": ref.std().item(),
                "padded_vocab": padded,
                "padding_logits_absmax": logits[..., vocab:].abs().max().item() if padded > vocab else 0.0,
            })
    finally:
        if destroy:
            destroy_parallel()
    return results


def _hf_grads(hf_dir: str, ids, labels):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    logits = model(ids).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters()}


def grad_parity(case: Dict, ids, labels) -> Dict:
    """Train-mode forward/backward through Megatron's schedule, DDP and finalize_model_grads.

    Returns, per HF tensor, max |Megatron grad - transformers grad| and max |transformers grad|
    (grads gathered over TP with the mapping), plus the losses. The same mean token
    cross-entropy on both sides.
    """
    import torch
    from megatron.core import parallel_state as mpu
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from safetensors.torch import load_file

    from megatron_brrm.config import ModelConfig, ParallelConfig
    from megatron_brrm.model.build import build_gpt_model, load_hf_config
    from megatron_brrm.model.mapping import get_mapping
    from megatron_brrm.model.weights import load_hf_weights_into_megatron, local_global_params
    from megatron_brrm.parallel import initialize_parallel

    pcfg = ParallelConfig(tensor_model_parallel_size=case["tp"], sequence_parallel=case.get("sp", False), backend="gloo")
    state = initialize_parallel(pcfg)
    hf = load_hf_config(case["hf_dir"])
    model = build_gpt_model(hf, ModelConfig(transformer_impl="local"), pcfg)
    mapping = get_mapping(hf, tp_size=case["tp"])
    load_hf_weights_into_megatron(model, load_file(f"{case['hf_dir']}/model.safetensors"), mapping)
    sp_marked = all(getattr(p, "sequence_parallel", False) for n, p in model.named_parameters() if "layernorm" in n
                    and "q_layernorm" not in n and "k_layernorm" not in n)
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(), model)
    ddp.zero_grad_buffer()
    seq = ids.shape[1]

    def forward_step(data_iterator, module):
        tokens, target = next(data_iterator)
        per_token = module(tokens, torch.arange(seq).unsqueeze(0), attention_mask=None, labels=target)

        def loss_func(output_tensor):
            loss = output_tensor.float().mean()
            return loss, {"loss": loss.detach()}

        return per_token, loss_func

    store = get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([(ids, labels)]),
                                        model=[ddp], num_microbatches=1, seq_length=seq,
                                        micro_batch_size=ids.shape[0], forward_only=False)
    finalize_model_grads([ddp])
    ref_loss, ref = _hf_grads(case["hf_dir"], ids, labels)
    tp_group = mpu.get_tensor_model_parallel_group()
    out = {"name": case["name"], "loss": store[0]["loss"].item(), "ref_loss": ref_loss, "sp_norms_marked": sp_marked,
           "grads": {}}
    for name, param in local_global_params(ddp, mapping, state.pp_rank, state.pp_size).items():
        grad = param.main_grad
        if mapping.tp_split_axis(name) is not None and case["tp"] > 1:
            parts = [torch.empty_like(grad) for _ in range(case["tp"])]
            torch.distributed.all_gather(parts, grad.contiguous(), group=tp_group)
            grad = mapping.gather(name, parts)
        for hf_name, g in mapping.to_hf(name, grad).items():
            out["grads"][hf_name] = ((g - ref[hf_name]).abs().max().item(), ref[hf_name].abs().max().item())
    return out


def run_all(rank: int, world_size: int, cases: List[Dict], grad_cases: List[Dict]) -> Dict:
    """:func:`logits_parity` for ``cases`` then :func:`grad_parity` for ``grad_cases``."""
    import torch

    from megatron_brrm.parallel import cpu_compat, destroy_parallel

    out = {"logits": logits_parity(rank, world_size, cases, destroy=False), "grads": []}
    try:
        for case in grad_cases:
            gen = torch.Generator().manual_seed(99)
            ids = torch.randint(0, case["vocab_size"], (2, 16), generator=gen)
            labels = torch.randint(0, case["vocab_size"], (2, 16), generator=gen)
            out["grads"].append(grad_parity(case, ids, labels))
    finally:
        out["compat_before_destroy"] = cpu_compat.is_installed()
        destroy_parallel()
    out["compat_after_destroy"] = cpu_compat.is_installed()
    out["torch_function_modes_after_destroy"] = torch._C._len_torch_function_stack()
    return out
