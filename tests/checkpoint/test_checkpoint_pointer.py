"""The checkpoint `latest` pointer: absent, dangling (names an uncommitted .tmp), and listing."""
import pytest


def test_checkpoint_pointer_errors(tmp_path):
    from megatron_brrm.checkpoint.train_ckpt import CheckpointError, latest_checkpoint, list_checkpoints

    assert latest_checkpoint(tmp_path) is None and list_checkpoints(tmp_path / "missing") == []
    (tmp_path / "step_00000003.tmp").mkdir()
    (tmp_path / "latest").write_text("step_00000003\n")  # names a folder that was never committed
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        latest_checkpoint(tmp_path)
    assert list_checkpoints(tmp_path) == []  # .tmp folders are never listed
