"""Policy worker on Megatron-Core (gloo, CPU) against a single-process plain-PyTorch reference.

The reference is the HF model of the same folder, the GRPO loss written here from its
formulas, ``torch.nn.utils.clip_grad_norm_`` and ``torch.optim.AdamW`` (no decay on 1-D
parameters, as Megatron does) with the linear warm-up LR, for two optimizer steps on a
fixed batch. The worker runs the same two steps at TP=2, PP=2, DP=2 (distributed optimizer
sharding Adam state) and DP=2 with sequence packing, TP=2+SP (plus TP=2+SP with packing, logprobs only) and
PP=2 x VPP=2 (interleaved schedule), each with a different micro-batch split, in one
spawned 2-rank job, on a 4-layer tiny Qwen3. Checked per layout:

* ``get_logprobs`` and ``get_reference_logprobs`` = the HF full-vocabulary logprobs (<= 1e-5);
* the loss and the (pre-clip) global grad norm of both steps (<= 1e-5 relative);
* every parameter's total update after two steps, gathered to HF names (<= 1e-4 relative
  per tensor: Adam's first steps divide the gradient by its own magnitude, which
  amplifies the ~1e-7 relative reduction-order noise of elements whose gradient is near 0);
* the reference logprobs still equal the initial ones after training (the swap restores).
"""

import numpy as np
import pytest
import torch

from megatron_brrm.parallel.launch import run_on_ranks
from reference_optim import adamw_warmup_steps

B, T, P = 6, 16, 5  # sequences, padded length, prompt length
LR, WARMUP, INIT_FACTOR, WD, CLIP = 1e-3, 2, 0.1, 0.1, 0.5
KL, EPS_LOW, EPS_HIGH, DUAL_C, TIS = 0.05, 0.2, 0.28, 3.0, 1.5
LAYOUTS = [  # (name, tp, pp, sp, micro_batch_size, max_tokens_per_microbatch, packing, train)
    ("tp2", 2, 1, False, 1, None, False, True),
    ("pp2", 1, 2, False, 4, None, False, True),
    ("dp2", 1, 1, False, 2, None, False, True),
    ("dp2_packed", 1, 1, False, 1, 28, True, True),
    ("tp2_sp", 2, 1, True, 6, 32, False, True),
    ("tp2_sp_packed", 2, 1, True, 1, 40, True, False),  # logprobs only (packing + SP padding)
    ("pp2_vpp2", 1, 2, False, 2, None, False, True, 2),  # interleaved schedule, 3 -> 4 micro-batches
]


def _batch(vocab):
    gen = torch.Generator().manual_seed(3)
    lens = torch.tensor([16, 11, 9, 16, 7, 13])
    ids = torch.randint(0, vocab, (B, T), generator=gen)
    mask = torch.zeros(B, T)
    for i in range(B):
        ids[i, lens[i]:] = 0
        mask[i, P:lens[i]] = 1
    noise = lambda s: torch.randn(B, T, generator=gen) * s * mask  # noqa: E731
    return {"input_ids": ids, "input_lengths": lens, "loss_mask": mask, "advantages": torch.randn(B, generator=gen),
            "noise_old": noise(0.3), "noise_ref": noise(0.2), "noise_rollout": noise(0.2)}


def _hf_logprobs(model, ids):
    logits = model(input_ids=ids).logits.float()
    lp = torch.log_softmax(logits, -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    return torch.cat([torch.zeros(ids.shape[0], 1), lp], 1)


def _complete(batch, initial_lp):
    """Old / reference / rollout logprobs derived from the initial policy's logprobs."""
    m = batch["loss_mask"]
    out = dict(batch)
    out["old_logprobs"] = (initial_lp + batch["noise_old"]) * m
    out["ref_logprobs"] = (initial_lp + batch["noise_ref"]) * m
    out["rollout_logprobs"] = (out["old_logprobs"] + batch["noise_rollout"]) * m
    return {k: v for k, v in out.items() if not k.startswith("noise")}


def _reference(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    batch = _batch(model.config.vocab_size)
    with torch.no_grad():
        initial = _hf_logprobs(model, batch["input_ids"]) * (torch.arange(T)[None] < batch["input_lengths"][:, None])
    data = _complete(batch, initial)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = data["loss_mask"]

    def loss_fn():  # GRPO's clipped, dual-clipped, TIS-weighted policy loss + k3 KL, token mean (formula)
        lp = _hf_logprobs(model, data["input_ids"])
        a = data["advantages"][:, None]
        r = torch.exp(lp - data["old_logprobs"])
        pg = torch.max(-a * r, -a * torch.clamp(r, 1 - EPS_LOW, 1 + EPS_HIGH))
        pg = torch.where(a < 0, torch.min(pg, -a * DUAL_C), pg)
        pg = pg * torch.clamp(torch.exp(data["old_logprobs"] - data["rollout_logprobs"]), max=TIS)
        d = torch.clamp(data["ref_logprobs"] - lp, -20, 20)
        kl = torch.clamp(torch.exp(d) - 1 - d, -10, 10)
        return ((pg + KL * kl) * m).sum() / m.sum()

    losses, norms = adamw_warmup_steps(model, loss_fn, steps=2, lr=LR, init_factor=INIT_FACTOR, warmup=WARMUP,
                                       weight_decay=WD, clip=CLIP)
    update = {n: (p.detach() - before[n]) for n, p in model.named_parameters()}
    return initial, losses, norms, update


def _worker_layouts(rank, world, model_dir, layouts):
    from megatron_brrm.config import RunConfig
    from megatron_brrm.parallel import destroy_parallel
    from megatron_brrm.rl.loss import ClippedPGConfig, PGLoss
    from megatron_brrm.workers.policy import PolicyWorker

    results = {}
    try:
        for name, tp, pp, sp, mbs, max_tok, packing, do_train, *vpp in layouts:
            cfg = RunConfig()
            cfg.model.hf_path = str(model_dir)
            cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size = tp, pp
            cfg.parallel.sequence_parallel, cfg.parallel.backend = sp, "gloo"
            g, o = cfg.grpo, cfg.grpo.optimizer
            o.lr, o.lr_warmup_steps, o.lr_warmup_init_factor, o.weight_decay, o.clip_grad = LR, WARMUP, INIT_FACTOR, WD, CLIP
            g.micro_batch_size, g.max_tokens_per_microbatch, g.max_num_steps = mbs, max_tok, 10
            g.sequence_packing = packing
            cfg.parallel.virtual_pipeline_model_parallel_size = vpp[0] if vpp else None
            worker = PolicyWorker(cfg)
            full = _batch(worker.vocab_size)
            dp, dp_rank = worker.dp_size, __import__("megatron.core.parallel_state", fromlist=["x"]).get_data_parallel_rank()
            rows = list(range(dp_rank * B // dp, (dp_rank + 1) * B // dp))
            shard = {k: v[rows] for k, v in full.items()}
            initial = worker.get_logprobs(shard)
            if not do_train:
                results[name] = {"rows": rows, "initial": initial.numpy()}
                continue
            data = _complete(shard, initial)
            loss_fn = PGLoss(ClippedPGConfig(ratio_clip_low=EPS_LOW, ratio_clip_high=EPS_HIGH, ratio_clip_c=DUAL_C,
                                             kl_coef=KL, truncated_importance_sampling=TIS))
            steps = [worker.train(data, loss_fn) for _ in range(2)]
            ref_after = worker.get_reference_logprobs(shard)
            state = worker.hf_state_dict()
            out = {"rows": rows, "initial": initial.numpy(), "ref_after": ref_after.numpy(),
                   "losses": [s.metrics["loss"] for s in steps], "norms": [s.metrics["grad_norm"] for s in steps],
                   "lrs": [s.metrics["lr"] for s in steps], "skipped": [s.skipped for s in steps],
                   "num_microbatches": steps[0].metrics["num_microbatches"]}
            if rank == 0:
                out["state"] = {k: v.numpy() for k, v in state.items()}
            results[name] = out
    finally:
        destroy_parallel()
    return results


@pytest.fixture(scope="module")
def qwen3_4_layers(tmp_path_factory, tiny_qwen3_dir):
    """The tiny Qwen3 with 4 layers (2 per stage at PP=2, 1 per chunk at PP=2 x VPP=2)."""
    from megatron_brrm.model.tiny import build_tiny_hf_model

    return build_tiny_hf_model(tmp_path_factory.mktemp("models") / "tiny-qwen3-4l", arch="qwen3", seed=4,
                               tokenizer_dir=tiny_qwen3_dir, num_layers=4)


@pytest.mark.multiprocess
def test_policy_layouts_match_single_process_reference(qwen3_4_layers):
    from safetensors.torch import load_file

    initial_ref, losses_ref, norms_ref, update_ref = _reference(qwen3_4_layers)
    hf_before = load_file(str(qwen3_4_layers / "model.safetensors"))
    outs = run_on_ranks(_worker_layouts, 2, args=(str(qwen3_4_layers), LAYOUTS), timeout_s=400)
    for name, *_, do_train in LAYOUTS:
        per_rank = [o[name] for o in outs]
        for o in per_rank:
            rows = o["rows"]
            err = np.abs(o["initial"] - initial_ref[rows].numpy()).max()
            print(f"{name}: logprob max abs err {err:.2e}")
            assert err <= 1e-5, name
        if not do_train:
            continue
        for o in per_rank:
            assert np.abs(o["ref_after"] - initial_ref[o["rows"]].numpy()).max() <= 1e-5, name
            assert o["skipped"] == [False, False]
            assert o["lrs"] == pytest.approx([LR * INIT_FACTOR, LR * INIT_FACTOR + (LR - LR * INIT_FACTOR) / WARMUP])
            for got, want in zip(o["losses"], losses_ref):
                assert abs(got - want) <= 1e-5 * abs(want), (name, got, want)
            for got, want in zip(o["norms"], norms_ref):
                assert abs(got - want) <= 1e-5 * want, (name, got, want)
        assert norms_ref[0] > CLIP  # clipping was active
        state = per_rank[0]["state"]
        assert set(state) == set(update_ref)
        worst = 0.0
        for k, want in update_ref.items():
            got = torch.from_numpy(state[k]) - hf_before[k]
            worst = max(worst, float((got - want).norm() / want.norm()))
        print(f"{name}: microbatches {per_rank[0]['num_microbatches']}, loss {per_rank[0]['losses']}, "
              f"worst update rel err {worst:.2e}")
        assert worst <= 1e-4, (name, worst)
