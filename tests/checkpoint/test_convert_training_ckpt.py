"""The exporter reads a *training* checkpoint: TP=2, distributed optimizer state, ``latest`` pointer.

Two ranks run the policy worker at TP=2 for one optimizer step and save a training
checkpoint with :mod:`megatron_brrm.checkpoint.train_ckpt` (model + fully-reshardable
optimizer + scheduler + RNG objects, ``save_dir/latest`` naming ``step_00000001``). The
exporter is pointed at ``save_dir`` with ``--hf-reference`` (training checkpoints carry no
config). Reference: the worker's own HF export (TP all-gather in
:func:`megatron_brrm.model.weights.megatron_state_to_hf`), compared bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest

from convert_ranks import run_jobs, train_and_save
from megatron_brrm.checkpoint.hf_io import HFSafetensorsReader
from megatron_brrm.parallel.launch import run_on_ranks

ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.multiprocess
def test_export_training_checkpoint_tp2(tmp_path, tiny_qwen3_dir):
    save_dir, out = tmp_path / "run", tmp_path / "hf"
    trained = run_on_ranks(train_and_save, 2, args=(str(tiny_qwen3_dir), str(save_dir)), timeout_s=300, env=ENV)[0]
    assert (save_dir / "latest").read_text().strip() == "step_00000001"
    res = run_on_ranks(run_jobs, 1, args=([{"op": "cli_mg2hf", "argv": [
        "--megatron-path", str(save_dir), "--hf-path", str(out), "--hf-reference", str(tiny_qwen3_dir),
        "--no-progress"]}],), timeout_s=240, env=ENV)[0]
    assert res[0]["ok"] and res[0]["rc"] == 0, res
    exported, source = HFSafetensorsReader(out), HFSafetensorsReader(tiny_qwen3_dir)
    assert exported.names() == sorted(trained)
    for name, value in trained.items():
        assert np.array_equal(exported.get_tensor(name).numpy(), value), name
    changed = [n for n in trained if not np.array_equal(source.get(n).numpy(), trained[n])]
    assert len(changed) == len(trained)  # the step moved every tensor, so equality is not trivial
