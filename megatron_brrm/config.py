"""Typed run configuration: one dataclass tree, YAML recipes, dotted command-line overrides.

A run is described by :class:`RunConfig`. Recipes live in ``model_configs/*.yaml`` and
hold any subset of the tree; command-line overrides use OmegaConf's dotted syntax
(``grpo.num_generations=8 parallel.tensor_model_parallel_size=2``).

Validation follows OmegaConf structured configs: an unknown key or a value of the wrong
type raises :class:`ConfigError` whose message names the key and the file (or "command
line") it came from.

This module imports nothing of the project (DESIGN.md section 2).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """Raised for an unknown key, a wrong type or an unreadable recipe; names key and source."""


@dataclass
class ModelConfig:
    """What model to build and how.

    ``hf_path`` is an HF folder or hub name (hub names are only resolved by user-facing
    CLIs, never in tests). ``megatron_path`` is a Megatron ``dist_checkpointing`` folder to
    load the weights from (written by ``tools/convert_hf_to_megatron.py``).
    """

    hf_path: Optional[str] = None
    megatron_path: Optional[str] = None
    params_dtype: str = "fp32"  # fp32 | bf16 | fp16
    transformer_impl: str = "auto"  # auto | local | transformer_engine
    recompute_granularity: Optional[str] = None  # None | full | selective
    recompute_method: Optional[str] = None  # uniform | block (with full)
    recompute_num_layers: Optional[int] = None
    fp8: Optional[str] = None  # None | e4m3 | hybrid (GPU + TE only)
    make_vocab_size_divisible_by: int = 128
    # Tiny-model factory settings, used when ``hf_path`` is "tiny" (CPU demo and tests).
    tiny_num_layers: int = 2
    tiny_hidden_size: int = 64
    tiny_num_attention_heads: int = 4
    tiny_num_key_value_heads: int = 2
    tiny_head_dim: int = 32
    tiny_intermediate_size: int = 128
    tiny_vocab_size: int = 2048
    tiny_tie_word_embeddings: bool = False


@dataclass
class ParallelConfig:
    """Megatron-Core parallel layout. DP size is derived: world / (TP * PP * CP)."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None
    context_parallel_size: int = 1
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = True
    backend: str = "auto"  # auto (nccl with CUDA, gloo without) | nccl | gloo
    seed: int = 1234


@dataclass
class CustomDatasetClass:
    """A user dataset class loaded at start-up (verl's ``data.custom_cls``).

    ``path``: a Python file; ``name``: the class in it. The class is called as
    ``cls(data_path=..., split=..., **kwargs)`` and must yield records
    ``{"context": str | messages, "chosen": str, "rejected": str}`` (optional ``id``, ``domain``)
    or :class:`megatron_brrm.data.PreferencePair` objects; the contract is checked on load
    (:mod:`megatron_brrm.data.custom`).
    """

    path: Optional[str] = None
    name: Optional[str] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Preference data: one form shared by every trainer (GRPO, SFT, Bradley-Terry).

    ``train_path`` / ``val_path``: PreferencePair JSONL written by ``tools/preprocess_data.py``
    (what the GRPO and SFT drivers read today). The NeMo-RL / verl form
    (:func:`megatron_brrm.data.sets.load_preference_data`): ``train_data_path`` and named
    ``val_data_paths`` (``{name: path}`` or ``{name: {path, split, format, ...}}``; metrics of
    each go under ``validation-<name>/``), each a local JSONL / JSON / parquet file or folder, or
    a hub dataset name read with ``train_split`` / ``val_split`` (and ``subset``). ``format``
    picks the record layout (``auto`` detects it from the first record): ``pairs`` (this
    project's PreferencePair JSONL), ``nemo_rl`` (NeMo-RL ``PreferenceDataset``: ``context`` +
    ``completions`` with ``rank``, lower preferred), ``binary`` (NeMo-RL
    ``BinaryPreferenceDataset``: ``prompt_key`` / ``chosen_key`` / ``rejected_key``), ``verl``
    (``chosen`` / ``rejected`` full conversations: message lists or ``Human:`` / ``Assistant:``
    transcripts), ``helpsteer3_nested`` (``input`` messages + ``output[].answer`` with
    ``label.is_preferred``), ``custom`` (``custom_cls``), or any ``tools/preprocess_data.py``
    source adapter name (``helpsteer3``, ``hh_rlhf``, ...; options in ``adapter_options``).
    """

    train_path: Optional[str] = None
    val_path: Optional[str] = None
    max_prompt_tokens: int = 4096
    shuffle: bool = True
    seed: int = 42
    format: str = "auto"
    train_data_path: Optional[str] = None
    train_split: Optional[str] = None
    val_data_paths: Dict[str, Any] = field(default_factory=dict)
    val_split: Optional[str] = None
    subset: Optional[str] = None  # hub dataset configuration name
    prompt_key: str = "prompt"
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    custom_cls: CustomDatasetClass = field(default_factory=CustomDatasetClass)
    adapter_options: Dict[str, Any] = field(default_factory=dict)
    skip_invalid: bool = False  # skip (and count) malformed rows instead of stopping
    max_train_pairs: Optional[int] = None
    max_val_pairs: Optional[int] = None  # per validation set


@dataclass
class RewardConfig:
    """Per-trajectory reward constants (DESIGN.md 4.1). ``reference`` preset: wrong = -10."""

    correct: float = 0.0
    wrong: float = -1.0
    malformed: float = -100.0
    strict_turn1: bool = False


@dataclass
class JudgeConfig:
    """Which judge protocol renders prompts and parses verdicts."""

    protocol: str = "brrm"  # brrm | rmr1
    template_dir: Optional[str] = None  # a folder of template files overriding the shipped wording
    reward: RewardConfig = field(default_factory=RewardConfig)


@dataclass
class GRPOConfig:
    """GRPO hyper-parameters (DESIGN.md 4.2; defaults = the BR-RM 8B recipe)."""

    num_prompts_per_step: int = 128
    num_generations: int = 8
    global_batch_size: int = 256  # trajectories per optimizer step
    micro_batch_size: int = 1
    max_tokens_per_microbatch: Optional[int] = None
    sequence_packing: bool = False  # pack rows up to max_tokens_per_microbatch (local spec only)
    max_num_steps: int = 1000
    lr: float = 5e-7
    min_lr: Optional[float] = None  # end of the decay (lr_decay_style); None = lr
    lr_decay_style: str = "constant"  # constant | linear | cosine, from lr to min_lr over max_num_steps
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    lr_warmup_steps: int = 50
    lr_warmup_init_factor: float = 0.1
    clip_grad: float = 1.0
    ratio_clip_low: float = 0.2
    ratio_clip_high: float = 0.28
    ratio_clip_c: Optional[float] = None  # dual-clip constant (None = off)
    kl_coef: float = 0.001
    kl_type: str = "k3"  # k1 | k3
    kl_clamp: Optional[float] = 10.0
    use_leave_one_out_baseline: bool = True
    advantage_std_type: str = "nemo_rl"  # nemo_rl (std of the baseline's samples) | group
    normalize_rewards_by_std: bool = True
    loss_aggregation: str = "token_mean"  # token_mean | seq_mean
    truncated_importance_sampling: Optional[float] = None  # cap on rollout/train ratio; None = off
    val_every_n_steps: int = 10
    val_num_pairs: int = 16


@dataclass
class RolloutConfig:
    """Generation engine settings."""

    engine: str = "hf"  # hf | vllm
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens_turn1: int = 4096
    max_new_tokens_turn2: int = 4096
    max_total_sequence_length: int = 16384
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.6
    enable_prefix_caching: bool = True
    colocated: bool = True
    refit_bucket_size_mb: int = 512
    refit_transport: str = "auto"  # auto (shm when driver, policy and engines share a node, else ray) | shm | ray
    refit_check: bool = False
    seed: int = 0
    device: str = "auto"  # hf engine: auto (cuda if visible, else cpu) | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (hf: fp32 on cpu, bf16 on cuda; vllm: checkpoint dtype) | fp32 | bf16 | fp16
    max_batch_size: int = 64  # hf engine: rows (prompt x sample) decoded together
    kv_cache_memory_mb: Optional[int] = None  # vllm: KV-cache size (None: 256 on CPU, from gpu_memory_utilization on GPU)
    enforce_eager: Optional[bool] = None  # vllm: no CUDA graphs / compilation (None: True on CPU, False on GPU)
    cpu_threads_bind: Optional[str] = None  # vllm on CPU: cores of the engine's threads, e.g. "0-3" (None: vLLM's default)
    quantization: Optional[str] = None  # vllm: e.g. fp8 (weights quantised when loaded, at start and after each refit)


@dataclass
class CheckpointConfig:
    """Megatron ``dist_checkpointing`` checkpoints of the training run."""

    save_dir: Optional[str] = None
    save_every_n_steps: int = 10
    keep_last_k: int = 3
    resume: bool = True
    format: str = "torch_dist"


@dataclass
class LoggingConfig:
    """Where metrics go."""

    output_dir: str = "outputs/run"
    tensorboard: bool = True
    wandb_project: Optional[str] = None
    log_every_n_steps: int = 1


@dataclass
class SFTConfig:
    """Supervised warm start on judge traces (``python -m megatron_brrm.sft``).

    ``traces_path``: JSONL of ``{"messages": [...]}`` conversations (loss on assistant turns).
    Without it, ``num_synthetic`` format-correct BR-RM traces are built from
    ``data.train_path`` pairs; ``verdict`` picks their verdicts: ``random`` (teach the
    format only) or ``label`` (distil correct answers).
    """

    traces_path: Optional[str] = None
    num_synthetic: int = 64
    verdict: str = "random"  # random | label
    num_steps: int = 20
    global_batch_size: int = 8
    lr: float = 1.0e-3
    output_hf_dir: Optional[str] = None  # default: <logging.output_dir>/sft_hf


@dataclass
class OptimizerConfig:
    """AdamW + gradient clipping + learning-rate schedule of one trainer (Bradley-Terry here).

    The schedule (Megatron-Core ``OptimizerParamScheduler``): a linear warm-up from
    ``lr_warmup_init_factor * lr`` to ``lr`` over ``lr_warmup_steps`` optimizer steps, then
    ``lr_decay_style`` down to ``min_lr`` at the trainer's last step: ``constant``, ``linear``,
    ``cosine``, or ``wsd`` (warmup-stable-decay, as verl's BT trainer offers: constant ``lr``,
    then a ``lr_wsd_decay_style`` decay over the last ``lr_wsd_decay_steps`` steps).
    """

    lr: float = 2.0e-6
    min_lr: float = 0.0
    lr_decay_style: str = "cosine"  # constant | linear | cosine | wsd
    lr_warmup_steps: int = 0
    lr_warmup_init_factor: float = 0.0
    lr_wsd_decay_steps: Optional[int] = None  # wsd: steps of the final decay (default 10% of the run)
    lr_wsd_decay_style: str = "linear"  # wsd: linear | cosine | exponential | minus_sqrt
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1.0e-8
    clip_grad: float = 1.0


@dataclass
class BTConfig:
    """Bradley-Terry reward-model training (``python -m megatron_brrm.train_bt``).

    Batches count *pairs*: each pair is two sequences (context + chosen, context + rejected),
    always in the same micro-batch. Loss: ``-log sigmoid(r_c - r_r - margin) +
    center_coef * (r_c + r_r)^2`` (:func:`megatron_brrm.rl.loss.bradley_terry_loss`).
    """

    global_batch_size: int = 128  # pairs per optimizer step (divisible by DP x micro_batch_size)
    micro_batch_size: int = 1  # pairs per micro-batch
    max_num_steps: int = 1000  # optimizer steps (the schedule's length)
    num_epochs: Optional[int] = None  # stop after this many passes over the training pairs (None: max_num_steps)
    max_length: int = 4096  # tokens of one sequence; longer pairs are dropped (counted)
    margin: float = 0.0
    center_coef: float = 0.0
    val_every_n_steps: int = 50
    val_batch_size: int = 32  # pairs per validation forward call
    world_size: Optional[int] = None  # training ranks (default: every GPU; on CPU, TP x PP x CP); DP = world / (TP PP CP)
    output_hf_dir: Optional[str] = None  # HF *ForSequenceClassification export at the end (default <output_dir>/hf)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)


@dataclass
class RunConfig:
    """The whole run. ``name`` labels outputs; every section has its own dataclass."""

    name: str = "brrm"
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    bt: BTConfig = field(default_factory=BTConfig)


def _merge(base, update, source: str):
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as exc:  # unknown key, wrong type, bad value
        key = getattr(exc, "full_key", None) or "?"
        msg = str(getattr(exc, "msg", exc)).splitlines()[0]
        raise ConfigError(f"{source}: invalid config key '{key}': {msg}") from None


def load_config(path: Optional[str | os.PathLike] = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Build a :class:`RunConfig` from an optional YAML recipe plus dotted overrides.

    Args:
        path: YAML file holding any subset of the config tree, or None for defaults.
        overrides: ``key.sub=value`` strings, applied after the file, in order.

    Returns:
        A validated :class:`RunConfig` (plain dataclass objects, not OmegaConf nodes).

    Raises:
        ConfigError: unreadable file, unknown key or wrong value type; the message names
            the key and the file (or "command line").
    """
    cfg = OmegaConf.structured(RunConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # YAML syntax error
            raise ConfigError(f"{path}: cannot parse YAML: {exc}") from None
        cfg = _merge(cfg, loaded, str(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' must look like key.sub=value")
        try:
            dotted = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as exc:
            raise ConfigError(f"command line: cannot parse override '{item}': {exc}") from None
        cfg = _merge(cfg, dotted, f"command line ('{item}')")
    return OmegaConf.to_object(cfg)


def config_to_dict(cfg: RunConfig) -> dict:
    """The resolved config as a plain nested dict (JSON/YAML serialisable)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, output_dir: str | os.PathLike) -> Path:
    """Write the resolved config to ``output_dir/config.yaml`` and return the path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    os.replace(tmp, path)
    return path
