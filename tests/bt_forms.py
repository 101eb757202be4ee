"""Write preference triples ``(context messages, chosen, rejected)`` in the layouts other RL stacks use,
by hand from their documented schemas (not with the project's adapters): NeMo-RL ``PreferenceDataset``
JSONL, a ``BinaryPreferenceDataset`` with renamed keys, verl-style parquet of ``chosen``/``rejected``
conversations, and nested HelpSteer3 rows (JSON-string fields, as in parquet exports)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence, Tuple

Triple = Tuple[List[dict], str, str]
CUSTOM_FILE = Path(__file__).with_name("bt_custom_dataset.py")


def write_nemo_rl(path: Path, triples: Sequence[Triple]) -> Path:
    """NeMo-RL: {"context": [...], "completions": [{"rank": 0, "completion": [assistant msg]}, {"rank": 1, ...}]};
    the rejected completion is listed first so the rank, not the position, must decide."""
    with open(path, "w", encoding="utf-8") as f:
        for ctx, c, r in triples:
            f.write(json.dumps({"context": ctx, "completions": [
                {"rank": 1, "completion": [{"role": "assistant", "content": r}]},
                {"rank": 0, "completion": [{"role": "assistant", "content": c}]}]}) + "\n")
    return path


def write_binary(path: Path, triples: Sequence[Triple], keys=("question", "good", "bad")) -> Path:
    """NeMo-RL BinaryPreferenceDataset with renamed prompt / chosen / rejected keys (prompt = the user text)."""
    with open(path, "w", encoding="utf-8") as f:
        for ctx, c, r in triples:
            f.write(json.dumps({keys[0]: ctx[-1]["content"], keys[1]: c, keys[2]: r}) + "\n")
    return path


def write_verl_parquet(path: Path, triples: Sequence[Triple]) -> Path:
    """verl: parquet with 'chosen' / 'rejected' full conversations (message lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {"chosen": [ctx + [{"role": "assistant", "content": c}] for ctx, c, _ in triples],
            "rejected": [ctx + [{"role": "assistant", "content": r}] for ctx, _, r in triples]}
    pq.write_table(pa.table(rows), path)
    return path


def write_helpsteer3_nested(path: Path, triples: Sequence[Triple]) -> Path:
    """Nested HelpSteer3 rows: input (JSON string of messages), output (JSON string of 2 candidates with
    label.is_preferred; the preferred one second in every other row)."""
    with open(path, "w", encoding="utf-8") as f:
        for k, (ctx, c, r) in enumerate(triples):
            good = {"answer": {"role": "assistant", "content": c, "label": {"is_preferred": True}}}
            bad = {"answer": {"role": "assistant", "content": r, "label": {"is_preferred": False}}}
            f.write(json.dumps({"input": json.dumps(ctx), "output": json.dumps([bad, good] if k % 2 else [good, bad])})
                    + "\n")
    return path


def canon(pair):
    """(context, chosen, rejected) of a PreferencePair, its seeded placement undone."""
    chosen, rejected = (pair.response1, pair.response2) if pair.preference == 1 else (pair.response2, pair.response1)
    return pair.context, chosen, rejected
