"""HF <-> Megatron ``dist_checkpointing`` conversion: one process, no GPU, bounded memory.

Both directions go through the mapping registry (:mod:`megatron_brrm.model.mapping`) and a
Megatron ``GPTModel`` built on the ``meta`` device at TP=1, PP=1 (no memory): its
``sharded_state_dict()`` gives the exact checkpoint keys, global shapes and chunk layout
that a real model of that config saves and loads, at any TP/PP.

- :func:`convert_hf_to_megatron` streams HF tensors (one Megatron tensor's inputs at a
  time) into a torch_dist checkpoint written chunk by chunk
  (:func:`megatron_brrm.checkpoint.dcp_io.write_dist_checkpoint`), plus ``hf/`` (config.json
  and tokenizer files, so a later load knows the architecture) and ``run_config.yaml`` (the
  ``model``/``parallel`` recipe fragment the checkpoint implies).
- :func:`convert_megatron_to_hf` reads any torch_dist checkpoint of the model (converter
  output or a training checkpoint saved at any TP/PP), one global tensor or layer at a
  time, and writes sharded safetensors plus config, generation config, tokenizer and chat
  template, loadable by ``AutoModelForCausalLM.from_pretrained``.

Peak memory is a few tensors: the largest Megatron tensor (the padded embedding) plus its
HF inputs and one chunk being serialised. Every mismatch between checkpoint and config
(architecture, vocab, missing or unexpected tensors, shapes) raises
:class:`ConversionError` naming the tensor. Outputs are written to a temporary folder and
renamed at the end (:func:`megatron_brrm.checkpoint.hf_io.atomic_output_dir`).
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple
from unittest import mock

import torch

from megatron_brrm.checkpoint.dcp_io import (
    DistCheckpointError,
    load_tensors,
    read_tensor_metadata,
    resolve_checkpoint_dir,
    write_dist_checkpoint,
)
from megatron_brrm.checkpoint.hf_io import (
    DEFAULT_MAX_SHARD_BYTES,
    HFCheckpointError,
    HFSafetensorsReader,
    ShardedSafetensorsWriter,
    atomic_output_dir,
    copy_hf_side_files,
    dtype_nbytes,
    read_hf_config,
    write_hf_config,
)
from megatron_brrm.model.architectures import UnsupportedArchitectureError
from megatron_brrm.model.build import ModelBuildError
from megatron_brrm.model.mapping import MappingError

log = logging.getLogger(__name__)

HF_SUBDIR = "hf"
RUN_CONFIG_NAME = "run_config.yaml"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_TO_NAME = {v: k for k, v in DTYPES.items()}
_VOCAB_NAMES = ("embedding.word_embeddings.weight", "output_layer.weight")
_ANCHOR_KEY = "decoder.final_layernorm.weight"  # present in every GPTModel checkpoint
# Top-level names of non-model state that training checkpoints carry next to the weights.
_NON_MODEL_ROOTS = ("optimizer", "opt_param_scheduler", "lr_scheduler", "rng_state", "rerun_state_machine_state")
# Config fields that must agree between a checkpoint's stored config.json and --hf-reference.
_ARCH_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "intermediate_size", "vocab_size", "tie_word_embeddings")


class ConversionError(ValueError):
    """The checkpoint and the config disagree, or an input is unusable; names the tensor/file."""


# Everything a converter raises for bad input (the CLIs print these without a traceback).
CONVERSION_ERRORS = (ConversionError, HFCheckpointError, DistCheckpointError, ModelBuildError,
                     UnsupportedArchitectureError, MappingError, FileExistsError)


@dataclass
class ConversionSummary:
    """What a conversion wrote: ``tensors`` count, ``bytes`` of tensor data, wall ``seconds``."""

    output: Path
    tensors: int
    bytes: int
    seconds: float


# ----------------------------------------------------------------------------- process state
@contextmanager
def conversion_parallel_state() -> Iterator[None]:
    """Megatron parallel state at TP=1, PP=1 in this single process, for the meta model.

    Reuses an existing TP=1/PP=1 state; otherwise starts a world of one (gloo) with
    :func:`megatron_brrm.parallel.initialize_parallel` and tears it down on exit.

    Raises:
        ConversionError: this process is part of a multi-rank job or has TP/PP > 1
            (the converters are single-process tools).
    """
    from megatron.core import parallel_state as mpu

    from megatron_brrm.config import ParallelConfig
    from megatron_brrm.parallel import destroy_parallel, initialize_parallel

    if mpu.model_parallel_is_initialized():
        tp, pp = mpu.get_tensor_model_parallel_world_size(), mpu.get_pipeline_model_parallel_world_size()
        if (tp, pp) != (1, 1):
            raise ConversionError(f"checkpoint conversion needs a single process, but this one runs TP={tp}, PP={pp}; "
                                  "run tools/convert_*.py in its own process")
        yield
        return
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() != 1:
            raise ConversionError(f"checkpoint conversion needs a single process, but this one is rank "
                                  f"{torch.distributed.get_rank()} of {torch.distributed.get_world_size()}")
        mpu.initialize_model_parallel(1, 1)
        try:
            yield
        finally:
            mpu.destroy_model_parallel()
        return
    initialize_parallel(ParallelConfig(backend="gloo"))
    try:
        yield
    finally:
        destroy_parallel()


def meta_sharded_state_dict(hf_config, params_dtype: torch.dtype, padded_vocab: int) -> dict:
    """``sharded_state_dict()`` of the whole model built on the ``meta`` device at TP=1, PP=1.

    Uses the local layer spec (checkpoint keys are the same for the Transformer Engine spec:
    Megatron maps the local norms to TE's fused ``*.layer_norm_weight`` keys). Megatron's
    CPU-initialisation path is forced so no parameter lands on a GPU.

    Args:
        hf_config: HF config (object or dict).
        params_dtype: dtype recorded for every tensor.
        padded_vocab: rows of the embedding / output layer.

    Returns:
        ``{state-dict name: ShardedTensor | ShardedTensorFactory | ShardedObject}`` with meta data.
    """
    from megatron_brrm.config import ModelConfig, ParallelConfig
    from megatron_brrm.model.build import build_gpt_model

    model_cfg = ModelConfig(params_dtype=_DTYPE_TO_NAME[params_dtype], transformer_impl="local",
                            make_vocab_size_divisible_by=padded_vocab)  # ceil(V / P) * P == P for V <= P
    with mock.patch("torch.cuda.is_available", return_value=False), torch.device("meta"):
        model = build_gpt_model(hf_config, model_cfg, ParallelConfig())
    return model.sharded_state_dict()


def _tensor_layout(sharded_state_dict: dict) -> Dict[str, list]:
    """``{name: [ShardedTensor, ...]}`` after applying factories (fc1 -> gate and up chunks)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    out: Dict[str, list] = {}
    for name, value in sharded_state_dict.items():
        if isinstance(value, ShardedTensorFactory):
            built = value.build()
            out[name] = built if isinstance(built, list) else [built]
        elif isinstance(value, ShardedTensor):
            out[name] = [value]
    return out


def _check_mapping_covers_model(mapping, layout: Dict[str, list]) -> None:
    names, model_names = set(mapping.megatron_param_names()), set(layout)
    if names != model_names:
        raise ConversionError(
            "internal: the mapping registry and the Megatron model disagree on the tensor set: "
            f"only in mapping {sorted(names - model_names)[:5]}, only in model {sorted(model_names - names)[:5]}")


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled,
                dynamic_ncols=True)


def _arch_desc(hf_config) -> str:
    from megatron_brrm.model.architectures import get_arch_spec, hf_get

    return (f"{get_arch_spec(hf_config).hf_class} (num_hidden_layers={hf_get(hf_config, 'num_hidden_layers')}, "
            f"hidden_size={hf_get(hf_config, 'hidden_size')}, vocab_size={hf_get(hf_config, 'vocab_size')})")


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"output folder {path} already exists; remove it or pass --overwrite")


def _names_list(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ----------------------------------------------------------------------------- HF -> Megatron
def _validate_hf_tensors(reader: HFSafetensorsReader, mapping, hf_config) -> None:
    """Every HF tensor the config implies is present with its shape; nothing unexpected."""
    expected = mapping.hf_param_names()
    missing = [n for n in expected if n not in reader]
    if missing:
        raise ConversionError(f"HF checkpoint {reader.folder} lacks tensor {_names_list(missing)}, required by "
                              f"config.json ({_arch_desc(hf_config)})")
    expected_set = set(expected)
    ignorable = {"lm_head.weight"} if mapping.tied else set()  # some tied checkpoints store the copy
    unexpected = [n for n in reader.names() if n not in expected_set and n not in ignorable
                  and not n.endswith("rotary_emb.inv_freq")]
    if unexpected:
        raise ConversionError(f"HF checkpoint {reader.folder} has unexpected tensor {_names_list(unexpected)}: not part of "
                              f"{_arch_desc(hf_config)} as described by its config.json (wrong architecture or layer count?)")
    for n in expected:
        got, want = tuple(reader.info(n).shape), tuple(mapping.hf_shape(n))
        if got != want:
            if n in ("model.embed_tokens.weight", "lm_head.weight") and got[1:] == want[1:]:
                raise ConversionError(f"vocab mismatch: HF tensor {n!r} has {got[0]} rows but config.json says "
                                      f"vocab_size={want[0]} ({reader.folder})")
            raise ConversionError(f"HF tensor {n!r} has shape {got}, but config.json ({_arch_desc(hf_config)}) "
                                  f"implies {want} ({reader.folder})")


def _validate_layout_args(hf_config, tp: int, pp: int) -> None:
    from megatron_brrm.model.architectures import hf_get

    if tp < 1 or pp < 1:
        raise ConversionError(f"--tp and --pp must be >= 1 (got tp={tp}, pp={pp})")
    heads = hf_get(hf_config, "num_attention_heads")
    groups = hf_get(hf_config, "num_key_value_heads") or heads
    layers, ffn = hf_get(hf_config, "num_hidden_layers"), hf_get(hf_config, "intermediate_size")
    if groups % tp:
        raise ConversionError(f"--tp {tp} does not divide num_key_value_heads={groups}: each TP rank must hold whole "
                              "query groups")
    if ffn % tp:
        raise ConversionError(f"--tp {tp} does not divide intermediate_size={ffn}")
    if layers % pp:
        raise ConversionError(f"--pp {pp} does not divide num_hidden_layers={layers}")


def run_config_fragment(hf_dir: Path, megatron_dir: Path, params_dtype: str, tp: int, pp: int,
                        make_vocab_size_divisible_by: int, source: str) -> str:
    """The YAML recipe fragment a converted checkpoint implies (``model`` + ``parallel``).

    It validates against :class:`megatron_brrm.config.RunConfig` (``load_config`` accepts it).
    """
    from omegaconf import OmegaConf

    body = {
        "model": {"hf_path": str(hf_dir), "megatron_path": str(megatron_dir), "params_dtype": params_dtype,
                  "make_vocab_size_divisible_by": make_vocab_size_divisible_by},
        "parallel": {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp},
    }
    header = (f"# Written by tools/convert_hf_to_megatron.py from {source}.\n"
              f"# model.hf_path holds config.json + tokenizer (no weights); weights are in model.megatron_path.\n")
    return header + OmegaConf.to_yaml(OmegaConf.create(body))


def convert_hf_to_megatron(hf_path: str | os.PathLike, megatron_path: str | os.PathLike, tp: int = 1, pp: int = 1,
                           dtype: Optional[str] = None, make_vocab_size_divisible_by: int = 128,
                           overwrite: bool = False, progress: bool = False) -> ConversionSummary:
    """Convert an HF safetensors folder to a Megatron torch_dist checkpoint.

    The checkpoint holds global tensors, loadable with
    ``dist_checkpointing.load(model.sharded_state_dict(), megatron_path)`` at any TP/PP whose
    padded vocabulary matches; ``tp`` fixes the vocab padding (a multiple of
    ``make_vocab_size_divisible_by * tp``, as :func:`megatron_brrm.model.build.build_gpt_model`
    pads) and, with ``pp``, is checked against the config and recorded in ``run_config.yaml``.

    Args:
        hf_path: HF folder (config.json, safetensors, tokenizer).
        megatron_path: output folder (must not exist unless ``overwrite``).
        tp, pp: intended tensor / pipeline parallel sizes.
        dtype: "bf16" | "fp32" | "fp16", or None for the HF config's dtype (else the
            stored tensors' dtype).
        make_vocab_size_divisible_by: Megatron's vocab padding unit (``model.make_vocab_size_divisible_by``).
        overwrite: replace an existing output folder.
        progress: show a tqdm bar.

    Returns:
        :class:`ConversionSummary`.

    Raises:
        ConversionError: bad TP/PP for the config; HF tensors missing, unexpected or
            mis-shaped (named); FileExistsError: output exists; HFCheckpointError: unreadable
            HF folder; UnsupportedArchitectureError: unknown model_type.
    """
    from megatron_brrm.model.architectures import get_arch_spec, hf_get
    from megatron_brrm.model.build import load_hf_config
    from megatron_brrm.model.mapping import get_mapping, padded_vocab_size

    start = time.perf_counter()
    hf_path, megatron_path = Path(hf_path), Path(megatron_path).absolute()
    _refuse_existing(megatron_path, overwrite)
    raw_config = read_hf_config(hf_path)
    hf_config = load_hf_config(hf_path)
    arch = get_arch_spec(hf_config)
    _validate_layout_args(hf_config, tp, pp)
    reader = HFSafetensorsReader(hf_path)
    padded = padded_vocab_size(hf_get(hf_config, "vocab_size"), make_vocab_size_divisible_by, tp)
    mapping = get_mapping(hf_config, padded_vocab_size=padded)
    _validate_hf_tensors(reader, mapping, hf_config)
    if dtype is None:
        name = raw_config.get("dtype") or raw_config.get("torch_dtype")
        by_name = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
        dtype = by_name.get(name) or _DTYPE_TO_NAME.get(reader.info(mapping.hf_param_names()[0]).dtype, "fp32")
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r} is not one of {sorted(DTYPES)}")
    torch_dtype = DTYPES[dtype]

    with conversion_parallel_state():
        sharded = meta_sharded_state_dict(hf_config, torch_dtype, padded)
        layout = _tensor_layout(sharded)
        _check_mapping_covers_model(mapping, layout)
        where: Dict[Tuple[str, Tuple[int, ...]], Tuple[str, int]] = {}
        pending: Dict[str, int] = {}  # chunks of each tensor not yet handed to the writer
        for name, shards in layout.items():
            pending[name] = len(shards)
            for st in shards:
                where[(st.key, tuple(st.global_offset))] = (name, st.prepend_axis_num)
        total = sum(dtype_nbytes(mapping.full_shape(n), torch_dtype) for n in layout)
        cache: Dict[str, torch.Tensor] = {}  # the one full Megatron tensor being chunked

        def resolve(key, offset, sizes, chunk_dtype):
            try:
                name, prepend = where[(key, offset)]
            except KeyError:
                raise ConversionError(f"internal: no Megatron tensor for checkpoint chunk {key} at {offset}") from None
            if name not in cache:
                cache.clear()
                inputs = {n: reader.get(n) for n in mapping.hf_names_for(name)}
                full = mapping.to_megatron(name, inputs)
                del inputs  # free the HF tensors before a possible dtype copy
                cache[name] = full.to(chunk_dtype)
                del full
            chunk = cache[name]
            pending[name] -= 1
            if pending[name] == 0:  # last chunk: the writer's reference is the only one left
                cache.clear()
            for axis, (o, s) in enumerate(zip(offset[prepend:], sizes[prepend:])):
                chunk = chunk.narrow(axis, o, s)
            return chunk.reshape(sizes)

        with atomic_output_dir(megatron_path, overwrite=overwrite) as tmp, \
                _progress(total, f"HF -> Megatron {megatron_path.name}", progress) as bar:
            write_dist_checkpoint(tmp, sharded, resolve, on_chunk=bar.update)
            cache.clear()
            hf_dir = tmp / HF_SUBDIR
            hf_dir.mkdir()
            write_hf_config(raw_config, hf_dir, [arch.hf_class], torch_dtype)
            copy_hf_side_files(hf_path, hf_dir)
            (tmp / RUN_CONFIG_NAME).write_text(run_config_fragment(
                megatron_path / HF_SUBDIR, megatron_path, dtype, tp, pp,
                make_vocab_size_divisible_by, str(hf_path.absolute())))
    return ConversionSummary(megatron_path, len(layout), total, time.perf_counter() - start)


# ----------------------------------------------------------------------------- Megatron -> HF
def find_hf_reference(ckpt_dir: Path, hf_reference: Optional[str | os.PathLike]) -> Path:
    """The folder whose config.json (and tokenizer) describe a Megatron checkpoint.

    Order: ``hf_reference``; ``<ckpt>/hf`` (written by the converter); ``hf`` next to the
    checkpoint (run folders); ``model.hf_path`` of a ``run_config.yaml`` / ``config.yaml`` in or
    next to the checkpoint folder.

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
    from omegaconf import OmegaConf

    for folder in (ckpt_dir, ckpt_dir.parent):
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
                              f"{_names_list(sorted(meta))}")
    if len(prefixes) > 1:
        raise ConversionError(f"{ckpt_dir} holds several models (key prefixes {prefixes}); pass key_prefix / --key-prefix")
    return prefixes[0]


def _is_non_model_key(key: str) -> bool:
    return key.split(".", 1)[0] in _NON_MODEL_ROOTS or key.endswith("_extra_state")


def _validate_checkpoint_tensors(meta: Dict[str, tuple], prefix: str, expected: Dict[str, tuple], ckpt_dir: Path,
                                 hf_config, vocab_size: int) -> None:
    """Every key the config implies is stored with its global shape; no unexpected model tensors."""
    desc = _arch_desc(hf_config)
    for key, shape in expected.items():
        if prefix + key not in meta:
            raise ConversionError(f"Megatron checkpoint {ckpt_dir} lacks tensor {prefix + key!r}, required by config.json "
                                  f"({desc})")
        got = meta[prefix + key][0]
        if got != shape:
            if key.endswith(_VOCAB_NAMES) and got[1:] == shape[1:]:
                raise ConversionError(f"vocab mismatch: checkpoint tensor {prefix + key!r} has {got[0]} rows but "
                                      f"config.json says vocab_size={vocab_size} ({ckpt_dir})")
            raise ConversionError(f"checkpoint tensor {prefix + key!r} has global shape {got}, but config.json ({desc}) "
                                  f"implies {shape} ({ckpt_dir})")
    unexpected = [k for k in sorted(meta) if k.startswith(prefix) and k[len(prefix):] not in expected
                  and not _is_non_model_key(k[len(prefix):])]
    if unexpected:
        raise ConversionError(f"Megatron checkpoint {ckpt_dir} has unexpected tensor {_names_list(unexpected)}: not part "
                              f"of {desc} as described by config.json (architecture or tied-embedding mismatch?)")


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
    from megatron_brrm.model.architectures import get_arch_spec, hf_get
    from megatron_brrm.model.build import load_hf_config
    from megatron_brrm.model.mapping import get_mapping

    start = time.perf_counter()
    hf_path = Path(hf_path).absolute()
    _refuse_existing(hf_path, overwrite)
    ckpt_dir = resolve_checkpoint_dir(megatron_path)
    ref_dir = find_hf_reference(ckpt_dir, hf_reference)
    raw_config = read_hf_config(ref_dir)
    _check_reference_matches_stored(ckpt_dir, ref_dir, raw_config)
    hf_config = load_hf_config(ref_dir)
    arch = get_arch_spec(hf_config)
    vocab = hf_get(hf_config, "vocab_size")
    meta = read_tensor_metadata(ckpt_dir)
    prefix = _detect_key_prefix(meta, ckpt_dir) if key_prefix is None else key_prefix
    emb_key = prefix + _VOCAB_NAMES[0]
    padded = meta[emb_key][0][0] if emb_key in meta else vocab
    if padded < vocab:
        raise ConversionError(f"vocab mismatch: checkpoint tensor {emb_key!r} has {padded} rows but config.json "
                              f"({ref_dir}) says vocab_size={vocab}")
    mapping = get_mapping(hf_config, padded_vocab_size=padded)
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r} is not one of {sorted(DTYPES)}")
    out_dtype = DTYPES[dtype] if dtype is not None else None

    with conversion_parallel_state():
        layout = _tensor_layout(meta_sharded_state_dict(hf_config, torch.float32, padded))
        _check_mapping_covers_model(mapping, layout)
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
                _progress(sum(sizes.values()), f"Megatron -> HF {hf_path.name}", progress) as bar:
            with ShardedSafetensorsWriter(tmp, plan, max_shard_bytes=max_shard_bytes) as writer:
                for group in _groups(names, sizes, read_budget_bytes):
                    loaded = load_tensors(ckpt_dir, {n: requests[n] for n in group})
                    for name in group:
                        for hf_name, tensor in mapping.to_hf(name, loaded.pop(name)).items():
                            writer.write(hf_name, tensor if out_dtype is None else tensor.to(out_dtype))
                        bar.update(sizes[name])
            write_hf_config(raw_config, tmp, [arch.hf_class], out_dtype or meta[emb_key][1])
            copy_hf_side_files(ref_dir, tmp)
    return ConversionSummary(hf_path, len(plan), sum(dtype_nbytes(s, d) for _, s, d in plan),
                             time.perf_counter() - start)
