"""Write the policy's current weights as a Hugging Face folder, streamed from the ranks.

The policy ranks refit a writer in the driver (:func:`megatron_brrm.workers.refit.refit`:
buckets in shared memory, each rank writing its own shards); the driver writes each tensor straight into
pre-planned safetensors shards (:class:`~megatron_brrm.checkpoint.hf_io.ShardedSafetensorsWriter`),
so memory stays at a few buckets. The folder is assembled in a temporary directory and renamed
at the end, with ``config.json``, generation config, tokenizer and chat template copied from
the reference HF folder: ``AutoModelForCausalLM.from_pretrained`` and vLLM load it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from megatron_brrm.checkpoint.hf_io import (ShardedSafetensorsWriter, atomic_output_dir, copy_hf_side_files,
                                            read_hf_config, write_hf_config)
from megatron_brrm.model.build import load_hf_config
from megatron_brrm.model.mapping import get_mapping
from megatron_brrm.rollout.engine import WeightReceiver
from megatron_brrm.workers.refit import refit

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class _Writer(WeightReceiver):
    """A refit target that writes each streamed tensor into a safetensors writer."""

    def __init__(self, writer: ShardedSafetensorsWriter, dtype: torch.dtype):
        self.writer, self.dtype = writer, dtype

    def update_weights(self, bucket) -> None:
        for name, tensor in bucket:
            self.writer.write(name, tensor.to(self.dtype))


def export_policy_to_hf(policy, out_dir: str | Path, hf_reference: str | Path, params_dtype: str = "fp32",
                        bucket_bytes: int = 256 * 2**20, overwrite: bool = True) -> Path:
    """Save the policy's weights as an HF folder at ``out_dir``.

    Args:
        policy: the :class:`~megatron_brrm.workers.policy_group.Policy`.
        out_dir: target folder (written atomically).
        hf_reference: the HF folder the policy was built from (config, tokenizer, chat template).
        params_dtype: dtype of the saved tensors: ``fp32`` | ``bf16`` | ``fp16``.

    Raises:
        HFCheckpointError: a tensor the model should have was not produced (named).
    """
    dtype = _DTYPES[params_dtype]
    mapping = get_mapping(load_hf_config(hf_reference))
    plan = [(n, mapping.hf_shape(n), dtype) for n in mapping.hf_param_names()]
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        with ShardedSafetensorsWriter(tmp, plan) as writer:  # closes (and checks completeness) on success
            refit(policy, [_Writer(writer, dtype)], bucket_bytes)
        config = read_hf_config(hf_reference)
        write_hf_config(config, tmp, config.get("architectures") or [], dtype)
        copy_hf_side_files(hf_reference, tmp)
    return Path(out_dir)
