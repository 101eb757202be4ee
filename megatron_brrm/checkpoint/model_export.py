"""Megatron ``dist_checkpointing`` -> HF conversion: one process, no GPU, bounded memory.

:func:`convert_megatron_to_hf` reads any torch_dist checkpoint of a GPT model -- written by
``tools/convert_hf_to_megatron.py`` or by training (:mod:`megatron_brrm.checkpoint.train_ckpt`,
with optimizer state next to the weights), at any TP/PP -- one global tensor (or one layer
of a stacked ``decoder.layers.*`` key) at a time, in read groups of at most
``read_budget_bytes``, maps Megatron names to HF names with the mapping registry and writes
pre-planned safetensors shards (:class:`megatron_brrm.checkpoint.hf_io.ShardedSafetensorsWriter`)
plus config.json (``architectures``, dtype), generation config, tokenizer and chat template,
loadable by ``AutoModelForCausalLM.from_pretrained``. A scalar (Bradley-Terry) reward model is
recognised by its one-row ``output_layer.weight`` (:func:`detect_head`) and written as an HF
``*ForSequenceClassification`` folder (``score.weight``, one label, a ``pad_token_id``) that
``AutoModelForSequenceClassification.from_pretrained`` loads.

Before anything is written the checkpoint's tensor metadata is checked against what
config.json implies (the meta model of :mod:`megatron_brrm.checkpoint.model_ckpt`): a
missing, unexpected or mis-shaped tensor, a vocab mismatch or another architecture raises
:class:`~megatron_brrm.checkpoint.model_ckpt.ConversionError` naming the tensor.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from omegaconf import OmegaConf

from megatron_brrm.checkpoint.dcp_io import load_tensors, read_tensor_metadata, resolve_checkpoint_dir
from megatron_brrm.checkpoint.hf_io import (
    DEFAULT_MAX_SHARD_BYTES,
    ShardedSafetensorsWriter,
    atomic_output_dir,
    copy_hf_side_files,
    dtype_nbytes,
    read_hf_config,
    write_hf_config,
)
from megatron_brrm.checkpoint.model_ckpt import (
    DTYPES,
    HF_SUBDIR,
    RUN_CONFIG_NAME,
    VOCAB_NAMES,
    ConversionError,
    ConversionSummary,
    arch_desc,
    check_mapping_covers_model,
    conversion_parallel_state,
    hf_config_for_head,
    meta_sharded_state_dict,
    names_list,
    progress_bar,
    refuse_existing,
    tensor_layout,
)
from megatron_brrm.model.architectures import hf_get
from megatron_brrm.model.build import load_hf_config
from megatron_brrm.model.mapping import get_mapping

_ANCHOR_KEY = "decoder.final_layernorm.weight"  # present in every GPTModel checkpoint
# Top-level names of non-model state that training checkpoints carry next to the weights.
_NON_MODEL_ROOTS = ("optimizer", "opt_param_scheduler", "lr_scheduler", "rng_state", "rerun_state_machine_state")
# Config fields that must agree between a checkpoint's stored config.json and --hf-reference.
_ARCH_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "intermediate_size", "vocab_size", "tie_word_embeddings")


def find_hf_reference(ckpt_dir: Path, hf_reference: Optional[str | os.PathLike]) -> Path:
    """The folder whose config.json (and tokenizer) describe a Megatron checkpoint.

    Order: ``hf_reference``; ``<ckpt>/hf`` (written by the converter); ``hf`` next to the
    checkpoint; ``model.hf_path`` of a ``run_config.yaml`` / ``config.yaml`` (the resolved run
    config every run writes) in the checkpoint folder, its parent (``save_dir``) or grandparent
    (the run's output folder).

    Raises:
        ConversionError: none found (the message says to pass ``--hf-reference``).
    """
    if hf_reference is not None:
        ref = Path(hf_reference)
        if not (ref / "config.json").is_file():
            raise ConversionError(f"--hf-reference {ref}: no config.json there; pass the HF model folder the "
                                  "checkpoint was trained from")
        return ref
    for cand in (ckpt_dir / HF_SUBDIR, ckpt_dir.parent / HF_SUBDIR):
        if (cand / "config.json").is_file():
            return cand
    for folder in (ckpt_dir, ckpt_dir.parent, ckpt_dir.parent.parent):  # checkpoint, save_dir, run output dir
        for fname in (RUN_CONFIG_NAME, "config.yaml"):
            path = folder / fname
            if path.is_file():
                hf = OmegaConf.select(OmegaConf.load(path), "model.hf_path")
                if hf and (Path(hf) / "config.json").is_file():
                    return Path(hf)
    raise ConversionError(f"cannot tell the architecture of {ckpt_dir}: no {HF_SUBDIR}/config.json stored with it and no "
                          "run config naming model.hf_path; pass --hf-reference DIR (the HF model folder it came from)")


def _check_reference_matches_stored(ckpt_dir: Path, ref_dir: Path, ref_config: dict) -> None:
    stored = ckpt_dir / HF_SUBDIR / "config.json"
    if not stored.is_file() or stored.parent.resolve() == ref_dir.resolve():
        return
    stored_cfg = read_hf_config(stored.parent)
    for key in _ARCH_FIELDS:
        if key in stored_cfg and key in ref_config and stored_cfg[key] != ref_config[key]:
            raise ConversionError(f"--hf-reference {ref_dir} does not match the checkpoint: config.json {key}="
                                  f"{ref_config[key]!r} but the checkpoint was converted with {key}={stored_cfg[key]!r} "
                                  f"({stored})")


def _detect_key_prefix(meta: Dict[str, tuple], ckpt_dir: Path) -> str:
    prefixes = sorted({k[: -len(_ANCHOR_KEY)] for k in meta if k.endswith(_ANCHOR_KEY) and not _is_non_model_key(k)})
    if not prefixes:
        raise ConversionError(f"{ckpt_dir} holds no GPT model weights (no {_ANCHOR_KEY!r} tensor); tensors found: "
                              f"{names_list(sorted(meta))}")
    if len(prefixes) > 1:
        raise ConversionError(f"{ckpt_dir} holds several models (key prefixes {prefixes}); pass key_prefix / --key-prefix")
    return prefixes[0]


def _is_non_model_key(key: str) -> bool:
    return key.split(".", 1)[0] in _NON_MODEL_ROOTS or key.endswith("_extra_state")


def _validate_checkpoint_tensors(meta: Dict[str, tuple], prefix: str, expected: Dict[str, tuple], ckpt_dir: Path,
                                 hf_config, vocab_size: int) -> None:
    """Every key the config implies is stored with its global shape; no unexpected model tensors."""
    desc = arch_desc(hf_config)
    for key, shape in expected.items():
        if prefix + key not in meta:
            raise ConversionError(f"Megatron checkpoint {ckpt_dir} lacks tensor {prefix + key!r}, required by config.json "
                                  f"({desc})")
        got = meta[prefix + key][0]
        if got != shape:
            if key.endswith(VOCAB_NAMES) and got[1:] == shape[1:]:
                raise ConversionError(f"vocab mismatch: checkpoint tensor {prefix + key!r} has {got[0]} rows but "
                                      f"config.json says vocab_size={vocab_size} ({ckpt_dir})")
            raise ConversionError(f"checkpoint tensor {prefix + key!r} has global shape {got}, but config.json ({desc}) "
                                  f"implies {shape} ({ckpt_dir})")
    unexpected = [k for k in sorted(meta) if k.startswith(prefix) and k[len(prefix):] not in expected
                  and not _is_non_model_key(k[len(prefix):])]
    if unexpected:
        raise ConversionError(f"Megatron checkpoint {ckpt_dir} has unexpected tensor {names_list(unexpected)}: not part "
                              f"of {desc} as described by config.json (architecture or tied-embedding mismatch?)")


def detect_head(meta: Dict[str, tuple], prefix: str, hf_config) -> str:
    """``scalar`` when the checkpoint's ``output_layer.weight`` is one row (a Bradley-Terry reward
    model), ``lm`` otherwise (a vocabulary output layer, or none when embeddings are tied)."""
    entry = meta.get(prefix + "output_layer.weight")
    if entry is not None and tuple(entry[0]) == (1, hf_get(hf_config, "hidden_size")):
        return "scalar"
    return "lm"


def _groups(names: Sequence[str], sizes: Dict[str, int], budget: int) -> Iterator[List[str]]:
    group: List[str] = []
    used = 0
    for n in names:
        if group and used + sizes[n] > budget:
            yield group
            group, used = [], 0
        group.append(n)
        used += sizes[n]
    if group:
        yield group


def convert_megatron_to_hf(megatron_path: str | os.PathLike, hf_path: str | os.PathLike,
                           hf_reference: Optional[str | os.PathLike] = None, dtype: Optional[str] = None,
                           max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, key_prefix: Optional[str] = None,
                           read_budget_bytes: int = 64 * 2**20, overwrite: bool = False,
                           progress: bool = False) -> ConversionSummary:
    """Convert a Megatron torch_dist checkpoint (any TP/PP it was saved with) to an HF folder.

    Args:
        megatron_path: the checkpoint folder (or a run folder with
            ``latest_checkpointed_iteration.txt``).
        hf_path: output HF folder (must not exist unless ``overwrite``).
        hf_reference: HF folder giving config.json, tokenizer and chat template; default:
            the copy stored by :func:`convert_hf_to_megatron` (see :func:`find_hf_reference`).
        dtype: cast weights to "bf16" / "fp32" / "fp16"; None keeps the checkpoint's dtype.
        max_shard_bytes: safetensors shard size limit.
        key_prefix: prefix of the model's keys in the checkpoint (auto-detected).
        read_budget_bytes: tensors read from the checkpoint per DCP load call (memory bound).
        overwrite: replace an existing output folder.
        progress: show a tqdm bar.

    Returns:
        :class:`ConversionSummary`.

    Raises:
        ConversionError: config/checkpoint mismatch (missing, unexpected or mis-shaped
            tensor, vocab, architecture; the tensor is named), no config found;
        DistCheckpointError: not a finished torch_dist checkpoint; FileExistsError.
    """
    start = time.perf_counter()
    hf_path = Path(hf_path).absolute()
    refuse_existing(hf_path, overwrite)
    ckpt_dir = resolve_checkpoint_dir(megatron_path)
    ref_dir = find_hf_reference(ckpt_dir, hf_reference)
    raw_config = read_hf_config(ref_dir)
    _check_reference_matches_stored(ckpt_dir, ref_dir, raw_config)
    hf_config = load_hf_config(ref_dir)
    vocab = hf_get(hf_config, "vocab_size")
    meta = read_tensor_metadata(ckpt_dir)
    prefix = _detect_key_prefix(meta, ckpt_dir) if key_prefix is None else key_prefix
    head = detect_head(meta, prefix, hf_config)
    emb_key = prefix + VOCAB_NAMES[0]
    padded = meta[emb_key][0][0] if emb_key in meta else vocab
    if padded < vocab:
        raise ConversionError(f"vocab mismatch: checkpoint tensor {emb_key!r} has {padded} rows but config.json "
                              f"({ref_dir}) says vocab_size={vocab}")
    mapping = get_mapping(hf_config, padded_vocab_size=padded, head=head)
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r} is not one of {sorted(DTYPES)}")
    out_dtype = DTYPES[dtype] if dtype is not None else None

    with conversion_parallel_state():
        layout = tensor_layout(meta_sharded_state_dict(hf_config, torch.float32, padded, head=head))
        check_mapping_covers_model(mapping, layout)
        expected = {st.key: tuple(st.global_shape) for shards in layout.values() for st in shards}
        _validate_checkpoint_tensors(meta, prefix, expected, ckpt_dir, hf_config, vocab)
        names = mapping.megatron_param_names()
        requests, sizes, plan = {}, {}, []
        for name in names:
            st = layout[name][0]
            stored_dtype = meta[prefix + st.key][1]
            layer = (st.global_offset[0], st.global_shape[0]) if st.prepend_axis_num else None
            shape = tuple(mapping.full_shape(name))
            requests[name] = (prefix + st.key, layer, shape, stored_dtype)
            sizes[name] = dtype_nbytes(shape, stored_dtype)
            for hf_name in mapping.hf_names_for(name):
                plan.append((hf_name, tuple(mapping.hf_shape(hf_name)), out_dtype or stored_dtype))

        with atomic_output_dir(hf_path, overwrite=overwrite) as tmp, \
                progress_bar(sum(sizes.values()), f"Megatron -> HF {hf_path.name}", progress) as bar:
            with ShardedSafetensorsWriter(tmp, plan, max_shard_bytes=max_shard_bytes) as writer:
                for group in _groups(names, sizes, read_budget_bytes):
                    loaded = load_tensors(ckpt_dir, {n: requests[n] for n in group})
                    for name in group:
                        for hf_name, tensor in mapping.to_hf(name, loaded.pop(name)).items():
                            writer.write(hf_name, tensor if out_dtype is None else tensor.to(out_dtype))
                        bar.update(sizes[name])
            out_config, archs = hf_config_for_head(raw_config, head, ref_dir)
            write_hf_config(out_config, tmp, archs, out_dtype or meta[emb_key][1])
            copy_hf_side_files(ref_dir, tmp)
    return ConversionSummary(hf_path, len(plan), sum(dtype_nbytes(s, d) for _, s, d in plan),
                             time.perf_counter() - start)
