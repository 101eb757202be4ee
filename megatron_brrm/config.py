"""Typed run configuration: one dataclass tree, YAML recipes, dotted command-line overrides.

A run is described by :class:`RunConfig`. Recipes live in ``model_configs/*.yaml`` and
hold any subset of the tree; command-line overrides use OmegaConf's dotted syntax
(``grpo.num_generations=8 parallel.tensor_model_parallel_size=2``).

Validation follows OmegaConf structured configs: an unknown key or a value of the wrong
type raises :class:`ConfigError` whose message names the key and the file (or "command
line") it came from.

This module imports nothing of the project (docs/design.md §2).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """Raised for an unknown key, a wrong type or an unreadable recipe; names key and source."""


# The allowed values of every enum-like key, checked when a config loads (one place: the modules
# that act on these keys import the tuples from here).
LR_DECAY_STYLES = ("constant", "linear", "cosine", "WSD")
WSD_DECAY_STYLES = ("linear", "cosine", "exponential", "minus_sqrt")
ENGINES = ("hf", "vllm")
REFIT_TRANSPORTS = ("auto", "shm", "collective", "ray")
OFFLOAD_MODES = ("all", "optimizer", "none")
ENV_TYPES = ("bt", "brrm_judge")  # the reward environments of policy GRPO (megatron_brrm.envs)
JUDGE_MODES = ("win_rate", "reference")
CHOICES: Dict[str, Tuple[Any, ...]] = {
    "model.params_dtype": ("fp32", "bf16", "fp16"),
    "model.transformer_impl": ("auto", "local", "transformer_engine"),
    "model.recompute_granularity": (None, "full", "selective"),
    "model.recompute_method": (None, "uniform", "block"),
    "parallel.backend": ("auto", "nccl", "gloo"),
    "grpo.kl_type": ("k1", "k3"),
    "grpo.advantage_std_type": ("nemo_rl", "group"),
    "grpo.loss_aggregation": ("token_mean", "seq_mean"),
    "grpo.optimizer.lr_decay_style": LR_DECAY_STYLES,
    "grpo.optimizer.lr_wsd_decay_style": WSD_DECAY_STYLES,
    "sft.optimizer.lr_decay_style": LR_DECAY_STYLES,
    "sft.optimizer.lr_wsd_decay_style": WSD_DECAY_STYLES,
    "sft.verdict": ("random", "label"),
    "sft.trace_style": ("full", "short"),
    "bt.optimizer.lr_decay_style": LR_DECAY_STYLES,
    "bt.optimizer.lr_wsd_decay_style": WSD_DECAY_STYLES,
    "rollout.engine": ENGINES,
    "rollout.dtype": ("auto", "fp32", "bf16", "fp16"),
    "rollout.refit_transport": REFIT_TRANSPORTS,
    "rollout.colocated_offload": OFFLOAD_MODES,
    "rollout.quantization": (None, "fp8"),
    "env.type": ENV_TYPES,
    "env.judge_mode": JUDGE_MODES,
    "env.engine": ENGINES,
    "env.dtype": ("auto", "fp32", "bf16", "fp16"),
}
# Keys that moved, so an old recipe gets a pointer instead of a bare "unknown key".
MOVED_KEYS = {f"grpo.{k}": f"grpo.optimizer.{k}" for k in (
    "lr", "min_lr", "lr_decay_style", "lr_warmup_steps", "lr_warmup_init_factor", "weight_decay", "adam_beta1",
    "adam_beta2", "adam_eps", "clip_grad")}
MOVED_KEYS["sft.lr"] = "sft.optimizer.lr"


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
    fp8: Optional[str] = None  # None | e4m3 | hybrid (GPU + TE only; keys checked by megatron_brrm.model.fp8)
    fp8_recipe: str = "delayed"  # delayed | tensorwise | blockwise (Hopper) | mxfp8 (Blackwell)
    fp8_amax_history_len: int = 1024  # delayed scaling: amax history window (steps)
    fp8_amax_compute_algo: str = "max"  # delayed scaling: max | most_recent over the window
    fp8_param: bool = False  # keep GEMM weights in FP8 between steps (needs the distributed optimizer)
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
    # policy GRPO (train_policy): JSONL prompts {"prompt": str | "messages": [...], "reference": str?, "id": str?};
    # unset: the distinct contexts of the preference data above (reference = the chosen response)
    prompts_path: Optional[str] = None
    val_prompts_path: Optional[str] = None


@dataclass
class RewardConfig:
    """Per-trajectory reward constants (docs/design.md §5). ``reference`` preset: wrong = -10."""

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
class OptimizerConfig:
    """AdamW (decoupled weight decay, none on 1-D parameters) and its learning-rate schedule, for one
    trainer: ``grpo.optimizer``, ``sft.optimizer``, ``bt.optimizer``.

    The schedule is Megatron-Core's ``OptimizerParamScheduler``, counted in optimizer steps over
    the trainer's whole run: a linear warm-up from ``lr_warmup_init_factor * lr`` to ``lr`` over
    ``lr_warmup_steps`` steps, then ``lr_decay_style``: ``constant``; ``linear`` or ``cosine``
    (``min_lr + (lr - min_lr) (1 + cos(pi t)) / 2``) down to ``min_lr`` at the last step; or
    ``WSD`` (warm-up, stable at ``lr``, then ``lr_wsd_decay_style`` down to ``min_lr`` over the
    last ``lr_wsd_decay_steps`` steps; Hu et al. 2024, "MiniCPM"). Gradients are clipped to a
    global norm of ``clip_grad`` (0: off).
    """

    lr: float = 5e-7
    min_lr: Optional[float] = None  # end of the decay; None = lr
    lr_decay_style: str = "constant"  # constant | linear | cosine | WSD
    lr_warmup_steps: int = 0
    lr_warmup_init_factor: float = 0.1
    lr_wsd_decay_steps: Optional[int] = None  # WSD: length of the final decay (required with WSD)
    lr_wsd_decay_style: str = "linear"  # WSD's final decay: linear | cosine | exponential | minus_sqrt
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0


def _grpo_optimizer() -> OptimizerConfig:
    """The BR-RM 8B recipe's: lr 5e-7, 50-step linear warm-up from 0.1x (docs/design.md §6)."""
    return OptimizerConfig(lr=5e-7, lr_warmup_steps=50, lr_warmup_init_factor=0.1)


@dataclass
class GRPOConfig:
    """GRPO hyper-parameters (docs/design.md §6; defaults = the BR-RM 8B recipe)."""

    num_prompts_per_step: int = 128
    num_generations: int = 8
    global_batch_size: int = 256  # trajectories per optimizer step
    micro_batch_size: int = 1
    max_tokens_per_microbatch: Optional[int] = None
    sequence_packing: bool = False  # pack rows up to max_tokens_per_microbatch (local spec only)
    max_num_steps: int = 1000
    optimizer: OptimizerConfig = field(default_factory=_grpo_optimizer)
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
    max_new_tokens_turn1: int = 4096  # train_policy: the policy's response (one turn)
    max_new_tokens_turn2: int = 4096
    max_total_sequence_length: int = 16384
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.6
    enable_prefix_caching: bool = True
    colocated: bool = True
    num_engines: Optional[int] = None  # engine actors in the fleet (None: one per engine placement of the cluster)
    colocated_offload: str = "all"  # colocated: what the policy frees while engines generate: all | optimizer | none
    refit_bucket_size_mb: int = 512
    # auto (shm on one node; collective when every engine node hosts policy ranks; else ray) | shm | collective | ray
    refit_transport: str = "auto"
    refit_check: bool = False  # after each refit, compare engine and trainer logprobs on a few sequences
    seed: int = 0
    device: str = "auto"  # hf engine: auto (cuda if visible, else cpu) | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (hf: fp32 on cpu, bf16 on cuda; vllm: the checkpoint's config.json dtype) | fp32 | bf16 | fp16
    max_batch_size: int = 64  # hf engine: rows (prompt x sample) decoded together
    kv_cache_memory_mb: Optional[int] = None  # vllm: KV-cache size (None: 256 on CPU, from gpu_memory_utilization on GPU)
    enforce_eager: Optional[bool] = None  # vllm: no CUDA graphs / compilation (None: True on CPU, False on GPU)
    cpu_threads_bind: Optional[str] = None  # vllm on CPU: cores of the engine's threads, e.g. "0-3" (None: vLLM's default)
    quantization: Optional[str] = None  # None | fp8: vLLM FP8 rollouts (weights quantised at start and every refit)


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
    trace_style: str = "full"  # full | short (synthetic traces: megatron_brrm.rollout.traces.synthetic_trace)
    num_steps: int = 20
    global_batch_size: int = 8
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-3))
    output_hf_dir: Optional[str] = None  # default: <logging.output_dir>/sft_hf


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
    # verl's BT defaults: cosine decay to 0 with no warm-up
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(
        lr=2e-6, min_lr=0.0, lr_decay_style="cosine", lr_warmup_init_factor=0.0))


@dataclass
class EnvConfig:
    """The reward environment of policy GRPO (``python -m megatron_brrm.train_policy``; :mod:`megatron_brrm.envs`).

    ``type``: ``bt`` (a Bradley-Terry ``*ForSequenceClassification`` folder scoring each
    response, batched, in its own Ray actor) or ``brrm_judge`` (a generative pairwise judge,
    ``judge.protocol`` / ``judge.template_dir``, in its own engine actor: per group, pairwise
    comparisons turned into scores in [0, 1] by win rate, ``judge_mode: win_rate``, or by wins
    against each prompt's reference response, ``judge_mode: reference``; ``both_orders`` judges
    every comparison in both presentation orders). ``model_path``: an HF folder or hub id;
    ``tiny`` (CPU recipes): for ``bt`` a constructed reward model built locally, whose reward is the
    share of word-initial tokens in the response (:func:`megatron_brrm.model.tiny.build_word_start_reward_model`);
    for ``brrm_judge`` the tiny policy model itself, untrained. The environment's actor is outside
    the policy's placement group and reserves ``num_cpus`` / ``num_gpus`` of the Ray cluster's free
    resources.
    """

    type: str = "bt"  # bt | brrm_judge
    model_path: Optional[str] = None
    judge_mode: str = "win_rate"  # brrm_judge: win_rate | reference
    both_orders: bool = True  # brrm_judge: judge (a, b) and (b, a)
    batch_size: int = 16  # bt: sequences per forward call; brrm_judge: comparisons per engine call
    max_length: Optional[int] = None  # bt: tokens scored per sequence (longer: its last max_length), None = all
    engine: str = "hf"  # brrm_judge: hf | vllm
    device: str = "auto"  # auto (cuda if the actor sees one, else cpu) | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (fp32 on cpu, bf16 on cuda) | fp32 | bf16 | fp16
    temperature: float = 0.0  # brrm_judge sampling (0 = greedy)
    max_new_tokens: int = 4096  # brrm_judge: per judge turn
    max_total_length: int = 16384  # brrm_judge: prompt + all turns of one comparison
    seed: int = 0  # brrm_judge sampling seed (each call adds its call number)
    num_cpus: float = 0.0  # Ray CPUs the environment's actor reserves (outside the policy's placement group)
    num_gpus: float = 0.0  # Ray GPUs the environment's actor reserves
    timeout_s: float = 1800.0  # per call to the environment's actor


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
    env: EnvConfig = field(default_factory=EnvConfig)


def _merge(base, update, source: str):
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as exc:  # unknown key, wrong type, bad value
        key = getattr(exc, "full_key", None) or "?"
        msg = str(getattr(exc, "msg", exc)).splitlines()[0]
        moved = MOVED_KEYS.get(key)
        hint = f"; it moved to '{moved}'" if moved else ""
        raise ConfigError(f"{source}: invalid config key '{key}': {msg}{hint}") from None


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def optimizer_steps_per_rollout(cfg: "RunConfig") -> int:
    """GRPO optimizer steps per rollout batch: ``num_prompts_per_step * num_generations / global_batch_size``."""
    g = cfg.grpo
    return g.num_prompts_per_step * g.num_generations // g.global_batch_size


def validate_config(cfg: "RunConfig", source: str = "config") -> None:
    """Check every enum-like key against :data:`CHOICES` and the cross-field rules that need
    nothing but the config (batch sizes, schedule lengths).

    Rules that need the model or the cluster (heads divisible by TP, layers by PP, engine TP
    within a node) are the planner's (``python -m megatron_brrm.plan``), which the drivers run
    at start-up.

    Raises:
        ConfigError: naming the key, its value, the allowed values or the rule, and ``source``.
    """
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{source}: {key}={value!r} is not one of {', '.join(repr(a) for a in allowed)}")
    g = cfg.grpo
    total = g.num_prompts_per_step * g.num_generations
    if g.global_batch_size < 1 or total % g.global_batch_size:
        raise ConfigError(f"{source}: grpo.global_batch_size={g.global_batch_size} must divide "
                          f"grpo.num_prompts_per_step x grpo.num_generations = {total}")
    e = cfg.env
    for key, value, low in (("env.batch_size", e.batch_size, 1), ("env.max_new_tokens", e.max_new_tokens, 1),
                            ("env.max_total_length", e.max_total_length, 2), ("env.temperature", e.temperature, 0),
                            ("env.num_cpus", e.num_cpus, 0), ("env.num_gpus", e.num_gpus, 0),
                            ("env.max_length", 2 if e.max_length is None else e.max_length, 2)):
        if value < low:
            raise ConfigError(f"{source}: {key}={value} must be >= {low}")
    if e.timeout_s <= 0:
        raise ConfigError(f"{source}: env.timeout_s={e.timeout_s} must be > 0")
    for name, opt, steps in (("grpo", g.optimizer, g.max_num_steps * max(total // max(g.global_batch_size, 1), 1)),
                             ("sft", cfg.sft.optimizer, cfg.sft.num_steps),
                             ("bt", cfg.bt.optimizer, cfg.bt.max_num_steps)):
        key = f"{name}.optimizer"
        if opt.min_lr is not None and opt.min_lr > opt.lr:
            raise ConfigError(f"{source}: {key}.min_lr={opt.min_lr} exceeds {key}.lr={opt.lr}")
        if opt.lr_warmup_steps < 0:
            raise ConfigError(f"{source}: {key}.lr_warmup_steps={opt.lr_warmup_steps} must be >= 0")
        if opt.lr_decay_style == "WSD":
            wsd = opt.lr_wsd_decay_steps
            if wsd is None or not 1 <= wsd <= steps - opt.lr_warmup_steps:
                raise ConfigError(f"{source}: {key}.lr_decay_style=WSD needs {key}.lr_wsd_decay_steps between 1 and "
                                  f"{steps - opt.lr_warmup_steps} (the optimizer steps after the warm-up), got {wsd}")


def load_config(path: Optional[str | os.PathLike] = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Build a :class:`RunConfig` from an optional YAML recipe plus dotted overrides.

    Args:
        path: YAML file holding any subset of the config tree, or None for defaults.
        overrides: ``key.sub=value`` strings, applied after the file, in order.

    Returns:
        A validated :class:`RunConfig` (plain dataclass objects, not OmegaConf nodes).

    Raises:
        ConfigError: unreadable file, unknown key, wrong value type, a value outside its
            choices or a broken cross-field rule (:func:`validate_config`); the message names
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
    out = OmegaConf.to_object(cfg)
    validate_config(out, f"{path} + command line" if path is not None else "command line")
    return out


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
