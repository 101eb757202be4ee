"""HF -> Megatron ``dist_checkpointing`` conversion (one process, no GPU, bounded memory),
plus what both conversion directions share.

Both directions (this module and :mod:`megatron_brrm.checkpoint.model_export`) go through
the mapping registry (:mod:`megatron_brrm.model.mapping`) and a Megatron ``GPTModel`` built
on the ``meta`` device at TP=1, PP=1 (no memory): its ``sharded_state_dict()`` gives the
exact checkpoint keys, global shapes and chunk layout that a real model of that config
saves and loads, at any TP/PP.

:func:`convert_hf_to_megatron` streams HF tensors (one Megatron tensor's inputs at a time)
into a torch_dist checkpoint written chunk by chunk
(:func:`megatron_brrm.checkpoint.dcp_io.write_dist_checkpoint`), plus ``hf/`` (config.json
and tokenizer files, so a later load knows the architecture) and ``run_config.yaml`` (the
``model``/``parallel`` recipe fragment the checkpoint implies).

Peak memory is a few tensors: the largest Megatron tensor (the padded embedding) plus its
HF inputs and one chunk being serialised. Every mismatch between the HF folder and its
config (architecture, vocab, missing or unexpected tensors, shapes) raises
:class:`ConversionError` naming the tensor. The output is written to a temporary folder and
renamed at the end (:func:`megatron_brrm.checkpoint.hf_io.atomic_output_dir`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from megatron_brrm.checkpoint.dcp_io import DistCheckpointError, write_dist_checkpoint
from megatron_brrm.checkpoint.hf_io import (
    HFCheckpointError,
    HFSafetensorsReader,
    atomic_output_dir,
    copy_hf_side_files,
    dtype_nbytes,
    read_hf_config,
    write_hf_config,
)
from megatron_brrm.config import ModelConfig, ParallelConfig
from megatron_brrm.model.architectures import (UnsupportedArchitectureError, config_head, get_arch_spec, hf_class_for,
                                               hf_get)
from megatron_brrm.model.build import ModelBuildError, build_gpt_model, load_hf_config
from megatron_brrm.model.mapping import MappingError, get_mapping, padded_vocab_size
from megatron_brrm.parallel import destroy_parallel, initialize_parallel

HF_SUBDIR = "hf"
RUN_CONFIG_NAME = "run_config.yaml"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_TO_NAME = {v: k for k, v in DTYPES.items()}
VOCAB_NAMES = ("embedding.word_embeddings.weight", "output_layer.weight")


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


def run_conversion_cli(tool: str, output: str | os.PathLike, convert: Callable[[], ConversionSummary],
                       what: str, note: str = "") -> int:
    """Run one converter CLI's conversion; returns its exit status.

    Prints ``wrote N <what> (G GiB) to OUTPUT in S s`` + ``note`` and returns 0; a
    :data:`CONVERSION_ERRORS` error is printed as ``<tool>: error: ...`` (no traceback) and
    gives 1; Ctrl-C says that nothing was written to ``output`` (the output folder is atomic)
    and gives 130.
    """
    try:
        summary = convert()
    except CONVERSION_ERRORS as exc:
        print(f"{tool}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{tool}: interrupted; nothing was written to {output}", file=sys.stderr)
        return 130
    print(f"wrote {summary.tensors} {what} ({summary.bytes / 2**30:.2f} GiB) to {summary.output} "
          f"in {summary.seconds:.1f} s{note.format(output=summary.output)}")
    return 0


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
    from megatron.core import parallel_state as mpu  # lazy: keeps train_bt --help fast

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


def meta_sharded_state_dict(hf_config, params_dtype: torch.dtype, padded_vocab: int, head: str = "lm") -> dict:
    """``sharded_state_dict()`` of the whole model built on the ``meta`` device at TP=1, PP=1.

    Uses the local layer spec (checkpoint keys are the same for the Transformer Engine spec:
    Megatron maps the local norms to TE's fused ``*.layer_norm_weight`` keys). Megatron's
    CPU-initialisation path is forced so no parameter lands on a GPU.

    Args:
        hf_config: HF config (object or dict).
        params_dtype: dtype recorded for every tensor.
        padded_vocab: rows of the embedding / output layer.
        head: ``lm`` or ``scalar`` (a reward model: ``output_layer.weight`` is ``[1, hidden]``).

    Returns:
        ``{state-dict name: ShardedTensor | ShardedTensorFactory | ShardedObject}`` with meta data.
    """
    model_cfg = ModelConfig(params_dtype=DTYPE_TO_NAME[params_dtype], transformer_impl="local")
    with torch.device("meta"):
        model = build_gpt_model(hf_config, model_cfg, ParallelConfig(), padded_vocab=padded_vocab, cpu_init=True,
                                head=head)
    return model.sharded_state_dict()


def hf_config_for_head(raw_config: dict, head: str, tokenizer_dir: Optional[Path] = None) -> Tuple[dict, List[str]]:
    """``(config.json dict, architectures)`` to write for a model with ``head``.

    A causal LM keeps ``raw_config`` and its architecture's ``*ForCausalLM`` class. A scalar
    reward model gets its ``*ForSequenceClassification`` class, one label (``id2label``
    ``{"0": "LABEL_0"}``, which is how transformers counts labels) and a ``pad_token_id`` (HF's
    sequence classifier reads the reward at the rightmost token that is not the pad token and
    refuses batches without one): the config's own, else the tokenizer's pad token in
    ``tokenizer_dir``, else its EOS token.
    """
    cfg = dict(raw_config)
    if head != "scalar":
        return cfg, [hf_class_for(cfg, head)]
    cfg.update(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    cfg.pop("num_labels", None)
    if cfg.get("pad_token_id") is None and tokenizer_dir is not None:
        try:
            from transformers import AutoTokenizer  # lazy: keeps train_bt --help fast

            tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
            cfg["pad_token_id"] = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        except Exception:  # no tokenizer next to the config: leave it unset (batch size 1 still works in HF)
            pass
    return cfg, [hf_class_for(cfg, head)]


def tensor_layout(sharded_state_dict: dict) -> Dict[str, list]:
    """``{name: [ShardedTensor, ...]}`` after applying factories (fc1 -> gate and up chunks)."""
    # lazy: keeps train_bt --help fast
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    out: Dict[str, list] = {}
    for name, value in sharded_state_dict.items():
        if isinstance(value, ShardedTensorFactory):
            built = value.build()
            out[name] = built if isinstance(built, list) else [built]
        elif isinstance(value, ShardedTensor):
            out[name] = [value]
    return out


def check_mapping_covers_model(mapping, layout: Dict[str, list]) -> None:
    """Raise ConversionError unless the mapping registry and the model hold the same tensor names."""
    names, model_names = set(mapping.megatron_param_names()), set(layout)
    if names != model_names:
        raise ConversionError(
            "internal: the mapping registry and the Megatron model disagree on the tensor set: "
            f"only in mapping {sorted(names - model_names)[:5]}, only in model {sorted(model_names - names)[:5]}")


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar counting bytes (hidden when ``enabled`` is False)."""
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled,
                dynamic_ncols=True)


def arch_desc(hf_config) -> str:
    """``Qwen3ForCausalLM (num_hidden_layers=.., hidden_size=.., vocab_size=..)`` for error messages."""
    return (f"{get_arch_spec(hf_config).hf_class} (num_hidden_layers={hf_get(hf_config, 'num_hidden_layers')}, "
            f"hidden_size={hf_get(hf_config, 'hidden_size')}, vocab_size={hf_get(hf_config, 'vocab_size')})")


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Raise FileExistsError for an existing output folder (checked before any work starts)."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"output folder {path} already exists; remove it or pass --overwrite")


def use_mmap_for_large_allocations(threshold_bytes: int = 1 << 20) -> bool:
    """Have glibc serve allocations >= ``threshold_bytes`` with ``mmap`` (returned to the OS on free).

    glibc raises its mmap threshold adaptively (up to 32 MiB) after large frees, so a stream
    of tensors of a few MiB to 32 MiB is carved from the heap, which fragments and keeps its
    high-water mark. Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``, glibc manual
    "Memory Allocation Tunables") keeps the converters' peak RSS at a few live tensors:
    measured on the 1.5 GB benchmark checkpoint, 0.97 -> 0.69 GB (HF -> Megatron). A
    process-wide setting: the CLIs call it, the library does not.

    Returns:
        True when applied (glibc), False on other C libraries.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold_bytes)))  # -3 = M_MMAP_THRESHOLD (malloc.h)
    except (OSError, AttributeError):
        return False


def names_list(names: Sequence[str], limit: int = 5) -> str:
    """``'a', 'b' and 3 more`` for error messages."""
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ----------------------------------------------------------------------------- HF -> Megatron
def _validate_hf_tensors(reader: HFSafetensorsReader, mapping, hf_config) -> None:
    """Every HF tensor the config implies is present with its shape; nothing unexpected."""
    expected = mapping.hf_param_names()
    missing = [n for n in expected if n not in reader]
    if missing:
        raise ConversionError(f"HF checkpoint {reader.folder} lacks tensor {names_list(missing)}, required by "
                              f"config.json ({arch_desc(hf_config)})")
    expected_set = set(expected)
    ignorable = {"lm_head.weight"} if mapping.tied else set()  # some tied checkpoints store the copy
    unexpected = [n for n in reader.names() if n not in expected_set and n not in ignorable
                  and not n.endswith("rotary_emb.inv_freq")]
    if unexpected:
        raise ConversionError(f"HF checkpoint {reader.folder} has unexpected tensor {names_list(unexpected)}: not part of "
                              f"{arch_desc(hf_config)} as described by its config.json (wrong architecture or layer count?)")
    for n in expected:
        got, want = tuple(reader.info(n).shape), tuple(mapping.hf_shape(n))
        if got != want:
            if n in ("model.embed_tokens.weight", "lm_head.weight") and got[1:] == want[1:]:
                raise ConversionError(f"vocab mismatch: HF tensor {n!r} has {got[0]} rows but config.json says "
                                      f"vocab_size={want[0]} ({reader.folder})")
            raise ConversionError(f"HF tensor {n!r} has shape {got}, but config.json ({arch_desc(hf_config)}) "
                                  f"implies {want} ({reader.folder})")


def _validate_layout_args(hf_config, tp: int, pp: int) -> None:
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
    start = time.perf_counter()
    hf_path, megatron_path = Path(hf_path), Path(megatron_path).absolute()
    refuse_existing(megatron_path, overwrite)
    raw_config = read_hf_config(hf_path)
    hf_config = load_hf_config(hf_path)
    get_arch_spec(hf_config)
    head = config_head(raw_config)  # a *ForSequenceClassification folder is a scalar reward model
    _validate_layout_args(hf_config, tp, pp)
    reader = HFSafetensorsReader(hf_path)
    padded = padded_vocab_size(hf_get(hf_config, "vocab_size"), make_vocab_size_divisible_by, tp)
    mapping = get_mapping(hf_config, padded_vocab_size=padded, head=head)
    _validate_hf_tensors(reader, mapping, hf_config)
    if dtype is None:
        name = raw_config.get("dtype") or raw_config.get("torch_dtype")
        by_name = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
        dtype = by_name.get(name) or DTYPE_TO_NAME.get(reader.info(mapping.hf_param_names()[0]).dtype, "fp32")
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r} is not one of {sorted(DTYPES)}")
    torch_dtype = DTYPES[dtype]

    with conversion_parallel_state():
        sharded = meta_sharded_state_dict(hf_config, torch_dtype, padded, head=head)
        layout = tensor_layout(sharded)
        check_mapping_covers_model(mapping, layout)
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
                inputs = {n: reader.get_tensor(n) for n in mapping.hf_names_for(name)}
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
                progress_bar(total, f"HF -> Megatron {megatron_path.name}", progress) as bar:
            write_dist_checkpoint(tmp, sharded, resolve, on_chunk=bar.update)
            cache.clear()
            hf_dir = tmp / HF_SUBDIR
            hf_dir.mkdir()
            out_config, archs = hf_config_for_head(raw_config, head, hf_path)
            write_hf_config(out_config, hf_dir, archs, torch_dtype)
            copy_hf_side_files(hf_path, hf_dir)
            (tmp / RUN_CONFIG_NAME).write_text(run_config_fragment(
                megatron_path / HF_SUBDIR, megatron_path, dtype, tp, pp,
                make_vocab_size_divisible_by, str(hf_path.absolute())))
    return ConversionSummary(megatron_path, len(layout), total, time.perf_counter() - start)
