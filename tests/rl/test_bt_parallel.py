"""Bradley-Terry reward worker on Megatron-Core (gloo, CPU) against a plain-PyTorch HF reference.

The reference is ``AutoModelForSequenceClassification`` of the same tiny Qwen3 reward folder,
the BT loss written here from its formula (margin 0.3, centering coefficient 0.05:
``mean_i -log sigmoid(r_c - r_r - m) + c (r_c + r_r)^2``, rewards at each sequence's last token),
``torch.nn.utils.clip_grad_norm_`` and ``torch.optim.AdamW`` (no decay on 1-D parameters, as
Megatron does) with a linear warm-up. One spawned 2-rank job runs, per layout (TP=1 x DP=2,
TP=2, TP=2 + sequence parallel, PP=2; micro-batches of 1 or 2 pairs):

* ``get_rewards`` = the HF scores (<= 1e-5 absolute, fp32: kernel summation order, measured ~2e-6);
* the loss and the gradient of every parameter, gathered to HF names (<= 1e-5 relative per
  tensor, ``|g - g_ref| / |g_ref|``; measured <= 1e-6 in one process);
* two optimizer steps (TP=1 x DP=2 with the distributed optimizer, and PP=2): loss, pre-clip grad
  norm (<= 1e-5 relative) and every parameter's total update (<= 1e-4 relative per tensor: Adam's
  first steps divide each gradient by its own magnitude, which amplifies the ~1e-7 relative
  reduction-order noise of near-zero elements, as in tests/rl/test_policy_parallel.py).
"""
import numpy as np
import pytest
import torch

from megatron_brrm.parallel.launch import run_on_ranks
from reference_optim import adamw_warmup_steps

MARGIN, CENTER = 0.3, 0.05
LR, WARMUP, INIT_FACTOR, WD, CLIP = 1e-3, 2, 0.1, 0.1, 0.5
LAYOUTS = [  # (name, tp, pp, sp, pairs per micro-batch, train two steps)
    ("tp1_dp2", 1, 1, False, 1, True),
    ("tp2", 2, 1, False, 2, False),
    ("tp2_sp", 2, 1, True, 1, False),
    ("pp2", 1, 2, False, 1, True),
]


def _pairs(vocab):
    gen = torch.Generator().manual_seed(11)
    chosen_lens, rejected_lens = [9, 14, 6, 11], [12, 5, 10, 8]
    chosen = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in chosen_lens]
    rejected = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in rejected_lens]
    return chosen, rejected


def _hf_rewards(model, rows):
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), model.config.pad_token_id, dtype=torch.long)
    att = torch.zeros(len(rows), t, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        att[i, :len(r)] = 1
    return model(input_ids=ids, attention_mask=att).logits[:, 0]


def _bt(rc, rr):
    return (-torch.nn.functional.logsigmoid(rc - rr - MARGIN) + CENTER * (rc + rr) ** 2).mean()


def _reference(model_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    chosen, rejected = _pairs(model.config.vocab_size)
    rows = [x for pair in zip(chosen, rejected) for x in pair]
    with torch.no_grad():
        rewards = _hf_rewards(model, rows)
    loss = _bt(*(_hf_rewards(model, rows).reshape(-1, 2).unbind(1)))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses, norms = adamw_warmup_steps(model, lambda: _bt(*(_hf_rewards(model, rows).reshape(-1, 2).unbind(1))),
                                       steps=2, lr=LR, init_factor=INIT_FACTOR, warmup=WARMUP, weight_decay=WD,
                                       clip=CLIP)
    update = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    return rewards, float(loss.detach()), grads, losses, norms, update


def _worker_layouts(rank, world, model_dir, layouts):
    from megatron.core import parallel_state as mpu

    from megatron_brrm.config import RunConfig
    from megatron_brrm.parallel import destroy_parallel
    from megatron_brrm.workers.reward_worker import BTLoss, RewardWorker, bt_batch

    results = {}
    try:
        for name, tp, pp, sp, mbs, train in layouts:
            out = {}
            # DP > 1 (TP=1 on 2 ranks): gradients without, then training with the distributed optimizer
            for dist_opt in ([False, True] if train and tp * pp == 1 else [False]):
                cfg = RunConfig()
                cfg.model.hf_path = str(model_dir)
                cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size = tp, pp
                cfg.parallel.sequence_parallel, cfg.parallel.backend = sp, "gloo"
                cfg.parallel.use_distributed_optimizer = dist_opt
                cfg.bt.micro_batch_size, cfg.bt.max_num_steps = mbs, 10
                o = cfg.bt.optimizer
                o.lr, o.lr_decay_style, o.lr_warmup_steps, o.lr_warmup_init_factor = LR, "constant", WARMUP, INIT_FACTOR
                o.weight_decay, o.clip_grad = WD, CLIP
                worker = RewardWorker(cfg)
                chosen, rejected = _pairs(worker.vocab_size)
                dp, dp_rank = worker.dp_size, mpu.get_data_parallel_rank()
                per = len(chosen) // dp
                mine = slice(dp_rank * per, (dp_rank + 1) * per)
                batch = bt_batch(chosen[mine], rejected[mine], pad_id=0)
                loss_fn = BTLoss(MARGIN, CENTER)
                if not dist_opt:
                    out["rows"] = list(range(2 * dp_rank * per, 2 * (dp_rank + 1) * per))
                    out["rewards"] = worker.get_rewards(batch).numpy()
                    grads = worker.gradients(batch, loss_fn)
                    if rank == 0:
                        out["grads"] = {k: v.numpy() for k, v in grads.items()}
                if train and (dist_opt or dp == 1):
                    steps = [worker.train(batch, loss_fn) for _ in range(2)]
                    out["losses"] = [s.metrics["loss"] for s in steps]
                    out["norms"] = [s.metrics["grad_norm"] for s in steps]
                    out["skipped"] = [s.skipped for s in steps]
                    out["accuracy"] = steps[0].metrics["accuracy"]
                    state = worker.hf_state_dict()
                    if rank == 0:
                        out["state"] = {k: v.numpy() for k, v in state.items()}
            results[name] = out
    finally:
        destroy_parallel()
    return results


@pytest.mark.multiprocess
def test_bt_layouts_match_hf_reference(tiny_reward_dir):
    from safetensors.torch import load_file

    rewards_ref, loss_ref, grads_ref, losses_ref, norms_ref, update_ref = _reference(tiny_reward_dir)
    hf_before = load_file(str(tiny_reward_dir / "model.safetensors"))
    outs = run_on_ranks(_worker_layouts, 2, args=(str(tiny_reward_dir), LAYOUTS), timeout_s=400)
    assert norms_ref[0] > CLIP  # clipping was active
    for name, *_, train in LAYOUTS:
        per_rank = [o[name] for o in outs]
        for o in per_rank:
            err = np.abs(o["rewards"] - rewards_ref[o["rows"]].numpy()).max()
            assert err <= 1e-5, (name, err)
        grads = per_rank[0]["grads"]
        assert set(grads) == set(grads_ref) and "score.weight" in grads
        worst = max(float((torch.from_numpy(grads[k]) - g).norm() / g.norm()) for k, g in grads_ref.items())
        print(f"{name}: rewards max err {err:.1e}, worst gradient rel err {worst:.1e}")
        assert worst <= 1e-5, (name, worst)
        if not train:
            continue
        for o in per_rank:
            assert o["skipped"] == [False, False]
            for got, want in zip(o["losses"], losses_ref):
                assert abs(got - want) <= 1e-5 * abs(want), (name, got, want)
            for got, want in zip(o["norms"], norms_ref):
                assert abs(got - want) <= 1e-5 * want, (name, got, want)
        assert per_rank[0]["losses"][0] == pytest.approx(loss_ref, rel=1e-5)
        state = per_rank[0]["state"]
        worst_update = max(float((torch.from_numpy(state[k]) - hf_before[k] - u).norm() / u.norm())
                           for k, u in update_ref.items())
        print(f"{name}: loss {per_rank[0]['losses']}, worst update rel err {worst_update:.1e}")
        assert worst_update <= 1e-4, (name, worst_update)
