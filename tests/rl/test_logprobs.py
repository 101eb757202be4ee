"""Vocab-parallel logprobs / entropy at TP=2 (two gloo ranks, each holding half of the
vocabulary) against the TP=1 full-vocabulary reference ``torch.log_softmax`` (values and
gradients w.r.t. the logits), with temperature and Megatron-style vocabulary padding.

Tolerance 1e-5 absolute in float32: the two paths differ only in the order of the
max/sum reductions (~1e-7 per element).
"""
import pytest
import torch

from megatron_brrm.parallel.launch import run_on_ranks
from megatron_brrm.rl.logprobs import token_logprobs, vocab_parallel_logprobs

V_TRUE, V_PAD, B, T = 50, 64, 3, 9  # true vocab 50, padded to 64 (32 columns per TP rank)


def _data():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(B, T, V_PAD, generator=gen) * 3
    logits[..., V_TRUE:] = 0.0  # padding columns, as Megatron's zero-initialised padded rows give
    ids = torch.randint(0, V_TRUE, (B, T), generator=gen)
    gout = torch.randn(B, T, generator=gen)
    return logits, ids, gout


def _reference(temperature):
    logits, ids, gout = _data()
    logits = logits.clone().requires_grad_()
    logp = torch.log_softmax(logits[..., :V_TRUE] / temperature, -1)
    lp = torch.cat([torch.zeros(B, 1), logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]], 1)
    ent = torch.cat([torch.zeros(B, 1), -(logp.exp() * logp).sum(-1)[:, :-1]], 1)
    (lp * gout).sum().backward()
    return lp.detach(), ent.detach(), logits.grad


def _tp_rank(rank, world, temperatures):
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    out = []
    try:
        for temperature in temperatures:
            logits, ids, gout = _data()
            v_local = V_PAD // world
            local = logits[..., rank * v_local:(rank + 1) * v_local].clone().requires_grad_()
            lp, ent = token_logprobs(local, ids, temperature=temperature, vocab_start=rank * v_local,
                                     vocab_size=V_TRUE, with_entropy=True)
            (lp * gout).sum().backward()
            # plain numpy arrays: torch tensors cross the result queue as shared memory that
            # vanishes when this process exits
            out.append((lp.detach().numpy(), ent.numpy(), local.grad.numpy()))
        return out
    finally:
        dist.destroy_process_group()


@pytest.mark.multiprocess
def test_tp2_matches_full_vocab_reference():
    temperatures = (1.0, 0.7)
    per_rank = run_on_ranks(_tp_rank, 2, args=(temperatures,), timeout_s=120)
    for i, temperature in enumerate(temperatures):
        ref_lp, ref_ent, ref_grad = _reference(temperature)
        outs = [tuple(torch.from_numpy(a) for a in r[i]) for r in per_rank]
        for rank, (lp, ent, grad) in enumerate(outs):
            assert (lp - ref_lp).abs().max() <= 1e-5
            assert (ent - ref_ent).abs().max() <= 1e-5
            sl = slice(rank * V_PAD // 2, (rank + 1) * V_PAD // 2)
            assert (grad - ref_grad[..., sl]).abs().max() <= 1e-5
        # the padding columns (rank 1 holds 50..63) get exactly zero gradient
        assert torch.count_nonzero(outs[1][2][..., V_TRUE - V_PAD // 2:]) == 0


def test_tp1_alignment_and_temperature():
    ref_lp, ref_ent, ref_grad = _reference(0.7)
    logits, ids, gout = _data()
    logits.requires_grad_()
    lp, ent = token_logprobs(logits, ids, temperature=0.7, vocab_size=V_TRUE, with_entropy=True)
    (lp * gout).sum().backward()
    assert torch.all(lp[:, 0] == 0)  # position 0 has no prediction
    assert (lp - ref_lp).abs().max() <= 1e-5 and (ent - ref_ent).abs().max() <= 1e-5
    assert (logits.grad - ref_grad).abs().max() <= 1e-5


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        vocab_parallel_logprobs(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="disagree"):
        token_logprobs(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
