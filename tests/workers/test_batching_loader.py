"""Policy-batch assembly from sequences and the resumable pair loader."""
import pytest
import torch

from megatron_brrm.data import PairLoader, PreferencePair
from megatron_brrm.workers.batching import select_rows, sequences_to_batch, split_minibatches


def test_sequences_to_batch_pads_and_aligns():
    b = sequences_to_batch([[5, 6, 7], [8, 9]], [[0, 1, 1], [0, 1]], pad_id=0,
                           rollout_logprobs=[[0.0, -0.5, -0.25], [0.0, -1.0]],
                           advantages=torch.tensor([1.0, -1.0]), group_ids=[3, 3], pad_multiple=4)
    assert b["input_ids"].tolist() == [[5, 6, 7, 0], [8, 9, 0, 0]]
    assert b["input_lengths"].tolist() == [3, 2]
    assert b["loss_mask"].tolist() == [[0, 1, 1, 0], [0, 1, 0, 0]]
    assert b["rollout_logprobs"][0].tolist() == [0.0, -0.5, -0.25, 0.0]
    assert b["advantages"].tolist() == [1.0, -1.0] and b["group_ids"].tolist() == [3, 3]
    with pytest.raises(ValueError, match="sequence 1"):
        sequences_to_batch([[1, 2], [3]], [[0, 1], [0, 1]], pad_id=0)


def test_split_minibatches_trims_and_checks_divisibility():
    b = sequences_to_batch([[1] * 5, [1] * 2, [1] * 3, [1] * 2], [[1] * 5, [1] * 2, [1] * 3, [1] * 2], pad_id=0)
    parts = split_minibatches(b, 2)
    assert [p["input_ids"].shape for p in parts] == [torch.Size([2, 5]), torch.Size([2, 3])]
    assert torch.equal(select_rows(b, [1, 3])["input_ids"], torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="global_batch_size"):
        split_minibatches(b, 3)


def _pairs(n):
    return [PreferencePair(id=f"p{i}", context=[{"role": "user", "content": f"q{i}"}], response1="a",
                           response2="b", preference=1) for i in range(n)]


def test_pair_loader_resume_is_identical():
    ref = PairLoader(_pairs(5), batch_size=3, seed=7)
    expected = [[p.id for p in ref.next_batch()] for _ in range(6)]
    # every id appears exactly once per epoch
    flat = [i for b in expected for i in b]
    assert sorted(flat[:5]) == [f"p{i}" for i in range(5)] and sorted(flat[5:10]) == [f"p{i}" for i in range(5)]
    run = PairLoader(_pairs(5), batch_size=3, seed=7)
    got = [[p.id for p in run.next_batch()] for _ in range(2)]
    state = run.state_dict()
    resumed = PairLoader(_pairs(5), batch_size=3, seed=7)
    resumed.load_state_dict(state)
    got += [[p.id for p in resumed.next_batch()] for _ in range(4)]
    assert got == expected
    with pytest.raises(ValueError, match="same data.train_path"):
        PairLoader(_pairs(4), batch_size=3).load_state_dict(state)
