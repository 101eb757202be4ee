"""Micro-batching of policy batches: padding groups, token caps, fixed PP shapes, packing
(hand-checked layouts and masks), and the packed seq_mean loss = the unpacked one."""
import pytest
import torch

from megatron_brrm.rl.loss import ClippedPGConfig, Normalizer, clipped_pg_loss
from megatron_brrm.workers.policy_data import make_microbatches, make_packed_microbatches


def _batch():
    lens = torch.tensor([5, 3, 8, 2])
    ids = torch.arange(1, 33).view(4, 8)
    mask = (torch.arange(8)[None] < lens[:, None]).float()
    mask[:, 0] = 0
    for i in range(4):
        ids[i, lens[i]:] = 0
    return {"input_ids": ids, "input_lengths": lens, "loss_mask": mask, "advantages": torch.tensor([1., 2., 3., 4.])}


def test_padding_groups_and_waste():
    mbs, st = make_microbatches(_batch(), micro_batch_size=2)
    assert [m.rows for m in mbs] == [[0, 1], [2, 3]]
    assert [tuple(m.data["input_ids"].shape) for m in mbs] == [(2, 5), (2, 8)]
    assert st["computed_tokens"] == 26 and st["real_tokens"] == 18
    assert st["padding_fraction"] == pytest.approx(1 - 18 / 26)
    mbs, _ = make_microbatches(_batch(), micro_batch_size=4, max_tokens_per_microbatch=10)
    assert [m.rows for m in mbs] == [[0, 1], [2], [3]]  # 2 rows * 5 <= 10; 8 alone
    mbs, st = make_microbatches(_batch(), micro_batch_size=3, pad_multiple=4, fixed_shape=True)
    assert [m.rows for m in mbs] == [[0, 1, 2], [3, -1, -1]]
    assert all(tuple(m.data["input_ids"].shape) == (3, 8) for m in mbs)
    assert mbs[1].data["loss_mask"][1:].sum() == 0  # filler rows carry no loss


def test_packing_layout_and_mask():
    mbs, st = make_packed_microbatches(_batch(), max_tokens_per_microbatch=10)
    assert [m.rows for m in mbs] == [[0, 1], [2, 3]]
    assert mbs[0].segments == [(0, 0, 0, 5), (1, 0, 5, 3)]
    d = mbs[0].data
    assert d["input_ids"][0].tolist() == [1, 2, 3, 4, 5, 9, 10, 11]
    assert d["advantages"][0].tolist() == [1.0] * 5 + [2.0] * 3
    m = d["attention_mask"][0, 0]
    assert not m[6, 5] and m[6, 4] and m[5, 6] and not m[4, 0]  # own sequence, causal only
    assert st["padding_fraction"] == 0.0
    with pytest.raises(ValueError, match="sequence 2 has 8 tokens"):
        make_packed_microbatches(_batch(), max_tokens_per_microbatch=6)


def test_packed_seq_mean_equals_unpacked():
    b = _batch()
    gen = torch.Generator().manual_seed(0)
    lp = -torch.rand(4, 8, generator=gen)
    old = lp + 0.1 * torch.randn(4, 8, generator=gen)
    b["old_logprobs"], b["logprobs"] = old, lp
    norm = Normalizer(*Normalizer.local_counts(b["loss_mask"]).tolist())
    cfg = ClippedPGConfig(kl_coef=0.0, aggregation="seq_mean")
    ref, _ = clipped_pg_loss(lp, b, cfg, norm)
    total = 0.0
    for mb in make_packed_microbatches(b, max_tokens_per_microbatch=11, pad_multiple=4)[0]:
        loss, _ = clipped_pg_loss(mb.data["logprobs"], mb.data, cfg, norm)
        total += float(loss)
    assert total == pytest.approx(float(ref), rel=1e-6)

