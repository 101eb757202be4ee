"""Refit bucketing: size bound, laziness (memory bound), order, and stats."""
import pytest
import torch

from megatron_brrm.rollout.refit import iter_buckets, push_buckets, refit_check, tensor_nbytes


def _stream(sizes, log):
    for i, n in enumerate(sizes):
        log.append(i)
        yield f"t{i}", torch.zeros(n, dtype=torch.float32)


def test_buckets_respect_size_and_keep_order():
    sizes = [10, 10, 30, 5, 100, 1, 1]  # floats: 4 bytes each
    buckets = list(iter_buckets(_stream(sizes, []), bucket_bytes=80))
    names = [n for b in buckets for n, _ in b]
    assert names == [f"t{i}" for i in range(len(sizes))]
    for b in buckets:
        total = sum(tensor_nbytes(t) for _, t in b)
        assert total <= 80 or len(b) == 1  # only a single over-sized tensor may exceed the bucket
    # 10+10 fit (80 B); 30 alone (120 B > 80); 5 (20 B); 100 alone (400 B); 1+1
    assert [len(b) for b in buckets] == [2, 1, 1, 1, 2]


def test_stream_is_consumed_lazily():
    """When a bucket is handed out, at most one tensor beyond it has been pulled from the source:
    live memory <= bucket_bytes + largest tensor."""
    pulled = []
    sizes = [8] * 20
    seen = 0
    for bucket in iter_buckets(_stream(sizes, pulled), bucket_bytes=3 * 32):
        seen += len(bucket)
        assert len(pulled) <= seen + 1
    assert seen == 20


def test_bad_bucket_size():
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(iter_buckets(iter([]), 0))


class _Sink:
    def __init__(self):
        self.loaded = {}

    def update_weights(self, bucket):
        for n, t in bucket:
            self.loaded[n] = t


def test_push_buckets_feeds_every_engine():
    engines = [_Sink(), _Sink()]
    stats = push_buckets(iter_buckets(_stream([4, 4, 4], []), 32), engines)
    assert stats.num_tensors == 3 and stats.num_bytes == 48 and stats.num_buckets == 2
    assert all(sorted(e.loaded) == ["t0", "t1", "t2"] for e in engines)


def test_refit_check_masks_and_mismatch():
    chk = refit_check([[0.0, -1.0, -2.0]], [[5.0, -1.5, -2.0]], [[0, 1, 1]])
    assert chk.num_tokens == 2 and chk.max_abs_diff == pytest.approx(0.5)
    assert chk.mismatch == pytest.approx((torch.exp(torch.tensor(0.5)).item() + 1.0) / 2)
    with pytest.raises(ValueError, match="sequence 0"):
        refit_check([[0.0]], [[0.0, 1.0]], [[1]])
