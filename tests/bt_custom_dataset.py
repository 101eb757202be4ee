"""Custom dataset classes loaded *by path* in the tests (``data.custom_cls.path`` = this file).

``MarkerPairs`` serves the synthetic marker task (megatron_brrm/data/synthetic.py: the better reply
holds the word "correct"; train and val draw filler words from disjoint pools) as dict records.
``MissingRejected`` breaks the record contract (no 'rejected' field).
"""
from megatron_brrm.data.synthetic import marker_task


class MarkerPairs:
    def __init__(self, data_path=None, split=None, num_pairs=256, seed=0, num_filler_words=1):
        self.pairs = marker_task(int(num_pairs), int(seed), split=split or "train", both_orders=False,
                                 num_filler_words=int(num_filler_words))

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        p = self.pairs[i]
        chosen, rejected = (p.response1, p.response2) if p.preference == 1 else (p.response2, p.response1)
        return {"id": p.id, "context": p.context, "chosen": chosen, "rejected": rejected}


class MissingRejected:
    def __init__(self, data_path=None, split=None):
        self.rows = [{"context": "q", "chosen": "a", "rejected": "b"}, {"context": "q2", "chosen": "a2"}]

    def __iter__(self):
        return iter(self.rows)
