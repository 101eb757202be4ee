"""Training checkpoints of the policy worker (Megatron dist_checkpointing on gloo/CPU).

Three spawned 2-rank jobs on the tiny Qwen3:

A. uninterrupted run at TP=2: steps 1-4, recording the loss of every step and the weights.
B. the same run at TP=2 saving after steps 1 and 2 (keep_last_k=1), taking step 3, then
   killed with SIGKILL while committing the step-3 checkpoint (after all shards were
   written, before the rename): ``latest`` must still name step 2, step 1 must be gone,
   step 3 must exist only as ``.tmp``.
C. resume from B's ``latest`` at TP=2: steps 3-4 must be **bit-identical** to A (losses
   ``==``, every weight ``torch.equal``); then resume the same TP=2 checkpoint at TP=1 DP=2:
   steps 3-4 equal A to 1e-5 (loss) / 1e-4 (weight updates), since the DP all-reduce sums
   in another order; a NaN advantage makes a step skip with weights unchanged; a save
   after that replaces the stale ``.tmp`` and keeps only the newest checkpoint.
"""
import os
import signal

import numpy as np
import pytest
import torch

from megatron_brrm.parallel.launch import RankError, run_on_ranks

B, T, P = 4, 12, 4


def _step_batch(step, vocab):
    gen = torch.Generator().manual_seed(100 + step)
    lens = torch.tensor([12, 10, 8, 11])
    ids = torch.randint(0, vocab, (B, T), generator=gen)
    mask = torch.zeros(B, T)
    for i in range(B):
        ids[i, lens[i]:] = 0
        mask[i, P:lens[i]] = 1
    return {"input_ids": ids, "input_lengths": lens, "loss_mask": mask, "advantages": torch.randn(B, generator=gen)}


def _worker(model_dir, tp):
    from megatron_brrm.config import RunConfig
    from megatron_brrm.workers.policy import PolicyWorker

    cfg = RunConfig()
    cfg.model.hf_path = model_dir
    cfg.parallel.tensor_model_parallel_size, cfg.parallel.backend = tp, "gloo"
    g, o = cfg.grpo, cfg.grpo.optimizer
    o.lr, o.lr_warmup_steps, o.weight_decay, g.micro_batch_size, g.max_num_steps = 1e-3, 3, 0.01, 2, 10
    return PolicyWorker(cfg)


def _train_step(worker, step):
    from megatron.core import parallel_state as mpu

    from megatron_brrm.rl.loss import ClippedPGConfig, PGLoss

    full = _step_batch(step, worker.vocab_size)
    dp, r = worker.dp_size, mpu.get_data_parallel_rank()
    batch = {k: v[r * B // dp:(r + 1) * B // dp] for k, v in full.items()}
    batch["old_logprobs"] = worker.get_logprobs(batch)
    batch["ref_logprobs"] = worker.get_reference_logprobs(batch)
    return worker.train(batch, PGLoss(ClippedPGConfig(kl_coef=0.05)))


def _state(worker):
    return {k: v.numpy() for k, v in worker.hf_state_dict().items()}


def _job(rank, world, model_dir, save_dir, mode):
    from megatron_brrm.checkpoint import train_ckpt
    from megatron_brrm.parallel import destroy_parallel

    out = {}
    try:
        if mode == "uninterrupted":
            w = _worker(model_dir, 2)
            out["losses"] = [_train_step(w, s).metrics["loss"] for s in (1, 2, 3, 4)]
            out["state"] = _state(w)
        elif mode == "crash":
            w = _worker(model_dir, 2)
            for s in (1, 2):
                _train_step(w, s)
                w.save_checkpoint(save_dir, extra_state={"consumed_samples": s * B}, keep_last_k=1)
            _train_step(w, 3)
            if rank == 0:
                train_ckpt._finalize = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
            w.save_checkpoint(save_dir, extra_state={"consumed_samples": 3 * B}, keep_last_k=1)
        elif mode == "resume":
            w = _worker(model_dir, 2)
            extra = w.load_checkpoint(save_dir)
            out["extra_tp2"] = extra
            out["losses_tp2"] = [_train_step(w, s).metrics["loss"] for s in (3, 4)]
            out["state_tp2"] = _state(w)
            w = _worker(model_dir, 1)  # re-initialises Megatron's groups as TP=1, DP=2
            out["extra_dp2"] = w.load_checkpoint(save_dir)
            out["losses_dp2"] = [_train_step(w, s).metrics["loss"] for s in (3, 4)]
            out["state_dp2"] = _state(w)
            full = _step_batch(5, w.vocab_size)
            full["advantages"][0] = float("nan")
            from megatron.core import parallel_state as mpu
            r = mpu.get_data_parallel_rank()
            half = {k: v[r * 2:(r + 1) * 2] for k, v in full.items()}
            half["old_logprobs"] = half["ref_logprobs"] = w.get_logprobs(half)
            from megatron_brrm.rl.loss import ClippedPGConfig, PGLoss
            res = w.train(half, PGLoss(ClippedPGConfig(kl_coef=0.05)))
            out["nan_skipped"], out["step_after_nan"] = res.skipped, w.step
            out["unchanged_after_nan"] = all(np.array_equal(v, out["state_dp2"][k]) for k, v in _state(w).items())
            w.save_checkpoint(save_dir, extra_state={"consumed_samples": 4 * B}, keep_last_k=1)
        if rank != 0:
            out = {k: v for k, v in out.items() if not k.startswith("state")}
        return out
    finally:
        destroy_parallel()


@pytest.mark.multiprocess
def test_kill_resume_bit_identical_and_reshard(tiny_qwen3_dir, tmp_path):
    from megatron_brrm.checkpoint.train_ckpt import latest_checkpoint, list_checkpoints

    model_dir, save_dir = str(tiny_qwen3_dir), tmp_path / "ckpt"
    ref = run_on_ranks(_job, 2, args=(model_dir, str(save_dir), "uninterrupted"), timeout_s=300)[0]

    with pytest.raises(RankError):  # rank 0 SIGKILLed itself; rank 1 either sees it die or loses its peer
        run_on_ranks(_job, 2, args=(model_dir, str(save_dir), "crash"), timeout_s=300)
    assert latest_checkpoint(save_dir).name == "step_00000002"  # the interrupted save did not move it
    assert [p.name for p in list_checkpoints(save_dir)] == ["step_00000002"]  # keep_last_k=1 removed step 1
    assert (save_dir / "step_00000003.tmp").is_dir() and not (save_dir / "step_00000003").exists()

    outs = run_on_ranks(_job, 2, args=(model_dir, str(save_dir), "resume"), timeout_s=300)
    res = outs[0]
    for o in outs:
        assert o["extra_tp2"] == {"consumed_samples": 2 * B, "optimizer_step": 2}
        assert o["losses_tp2"] == ref["losses"][2:]  # bit-identical
        assert o["nan_skipped"] and o["step_after_nan"] == 4 and o["unchanged_after_nan"]
    for k, v in ref["state"].items():
        assert np.array_equal(res["state_tp2"][k], v), k
    # TP=2 checkpoint resumed at TP=1, DP=2
    for got, want in zip(res["losses_dp2"], ref["losses"][2:]):
        assert abs(got - want) <= 1e-5 * abs(want)
    from safetensors.torch import load_file
    init = {k: v.numpy() for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items()}
    worst = max(np.linalg.norm(res["state_dp2"][k] - v) / np.linalg.norm(v - init[k]) for k, v in ref["state"].items())
    print(f"TP2 -> TP1 DP2 resume: losses {res['losses_dp2']} vs {ref['losses'][2:]}, worst update rel err {worst:.2e}")
    assert worst <= 1e-4
    assert [p.name for p in list_checkpoints(save_dir)] == ["step_00000004"]
    assert not list(save_dir.glob("*.tmp")) and latest_checkpoint(save_dir).name == "step_00000004"
