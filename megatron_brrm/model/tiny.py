"""A tiny random-weight Hugging Face model folder, built locally (no download).

Used by the tests and the CPU demo: a Qwen3 (or Llama) architecture with a few layers, a
byte-level BPE tokenizer trained with the ``tokenizers`` library on the repository's
shipped text samples, ChatML special tokens and a ChatML chat template, so every code path
that loads ``AutoTokenizer`` / ``AutoModelForCausalLM`` from a folder runs unchanged.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLES_DIR = REPO_ROOT / "samples"
TEMPLATES_DIR = REPO_ROOT / "megatron_brrm" / "judge" / "templates"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EXTRA_TOKENS = ["<think>", "</think>"]

# ChatML, as Qwen uses it (without Qwen3's thinking-mode branches).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _iter_strings(obj) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _iter_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _iter_strings(v)


def default_corpus_files() -> List[Path]:
    """Text sources for the tiny tokenizer: the shipped samples, sorted."""
    return sorted(p for p in SAMPLES_DIR.rglob("*") if p.suffix in (".json", ".jsonl", ".txt"))


def template_texts(repeats: int = 50) -> List[str]:
    """The judge template files, each ``repeats`` times: BPE merges follow frequency, so the
    protocol's markers and instructions (every judge prompt and output repeats them) get
    whole-word tokens, which keeps the tiny model's sequences short."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(TEMPLATES_DIR.rglob("*")) if p.is_file()]
    return texts * repeats


def iter_corpus(files: Sequence[Path], max_chars: int = 3_000_000) -> Iterator[str]:
    """Yield the strings held in ``files`` (JSON/JSONL values or plain text), up to ``max_chars``."""
    total = 0
    for path in files:
        path = Path(path)
        texts: Iterable[str]
        if path.suffix == ".jsonl":
            texts = (s for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
                     for s in _iter_strings(json.loads(line)))
        elif path.suffix == ".json":
            texts = _iter_strings(json.loads(path.read_text(encoding="utf-8")))
        else:
            texts = [path.read_text(encoding="utf-8")]
        for text in texts:
            yield text
            total += len(text)
            if total >= max_chars:
                return


def train_tokenizer(vocab_size: int, corpus_files: Optional[Sequence[Path]] = None):
    """Train a byte-level BPE tokenizer and wrap it as an HF ``PreTrainedTokenizerFast``.

    The vocabulary holds exactly ``vocab_size`` entries including the ChatML special tokens
    (``<|endoftext|>`` = pad, ``<|im_end|>`` = eos). Deterministic for a given corpus.

    Raises:
        FileNotFoundError: no corpus file exists (the ``samples/`` folder is missing).
    """
    from transformers import PreTrainedTokenizerFast  # lazy: keeps train_bt --help fast

    use_default = corpus_files is None
    files = default_corpus_files() if use_default else list(corpus_files)
    if not files:
        raise FileNotFoundError(f"no tokenizer corpus found under {SAMPLES_DIR}; the repository's samples/ folder is missing")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + EXTRA_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    corpus = iter_corpus(files)
    if use_default:
        corpus = itertools.chain(template_texts(), corpus)
    tok.train_from_iterator(corpus, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    hf_tok.chat_template = CHATML_TEMPLATE
    return hf_tok


def tiny_hf_config(
    arch: str = "qwen3", vocab_size: int = 2048, hidden_size: int = 64, intermediate_size: int = 128,
    num_layers: int = 2, num_attention_heads: int = 4, num_key_value_heads: int = 2,
    head_dim: Optional[int] = 32, tie_word_embeddings: bool = False, max_position_embeddings: int = 8192,
    eos_token_id: int = 2, pad_token_id: int = 0,
):
    """An HF config of the requested architecture ("qwen3" or "llama") and size."""
    from transformers import LlamaConfig, Qwen3Config  # lazy: keeps train_bt --help fast

    common = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, head_dim=head_dim or hidden_size // num_attention_heads,
        max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        bos_token_id=None, torch_dtype="float32",
    )
    if arch == "qwen3":
        return Qwen3Config(**common, rope_theta=1_000_000.0)
    if arch == "llama":
        return LlamaConfig(**common, rope_theta=500_000.0, attention_bias=False, mlp_bias=False)
    raise ValueError(f"unknown tiny architecture {arch!r}; expected 'qwen3' or 'llama'")


def build_tiny_hf_model(
    out_dir: str | os.PathLike, arch: str = "qwen3", seed: int = 0, tokenizer_dir: Optional[str | os.PathLike] = None,
    **config_kwargs,
) -> Path:
    """Write a random-weight HF model folder (config, safetensors, tokenizer, chat template).

    Args:
        out_dir: target folder; written atomically (temp folder renamed at the end).
        arch: "qwen3" or "llama".
        seed: torch seed for the weights (initializer_range 0.02, as transformers inits;
            RMSNorm weights are drawn around 1.0, ``1 + 0.1 * N(0, 1)``, so parity tests
            notice a swapped or missing norm).
        tokenizer_dir: reuse a tokenizer saved there instead of training one (faster).
        **config_kwargs: forwarded to :func:`tiny_hf_config` (sizes, tying, head_dim...).

    Returns:
        ``Path(out_dir)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # lazy: keeps train_bt --help fast

    out = Path(out_dir)
    vocab_size = config_kwargs.setdefault("vocab_size", 2048)
    if tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        tokenizer = train_tokenizer(vocab_size)
    if len(tokenizer) > vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but vocab_size={vocab_size}")
    config_kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
    config_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    config = tiny_hf_config(arch=arch, **config_kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # norms start at 1.0 in transformers; randomise them so a swapped norm shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.mul_(1.0 + 0.1 * torch.randn_like(param))
    return _save_atomically(out, model, tokenizer, GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=1.0,
        top_p=1.0))


def _save_atomically(out: Path, model, tokenizer, generation_config=None) -> Path:
    """Save ``model`` (safetensors), ``tokenizer`` and an optional generation config into a temporary
    folder beside ``out``, then rename it to ``out`` (replacing a previous folder); returns ``out``."""
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp.", dir=out.parent if out.parent.exists() else None))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if generation_config is not None:
            generation_config.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_tiny_reward_model(out_dir: str | os.PathLike, base_dir: str | os.PathLike, seed: int = 0,
                            score_std: float = 0.5) -> Path:
    """Write an HF ``*ForSequenceClassification`` folder (``num_labels=1``) from a causal LM folder.

    The backbone is ``base_dir``'s; the ``score`` head ``[1, hidden]`` is drawn from
    ``N(0, score_std^2)`` with ``seed`` (larger than transformers' default init, so tests see
    rewards of order 1). Tokenizer, chat template and generation config are copied.

    Returns:
        ``Path(out_dir)``.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # lazy: keeps train_bt --help fast

    out = Path(out_dir)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=gen) * score_std)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return _save_atomically(out, model, tokenizer)


WORD_START = "\u0120"  # "Ġ": how byte-level BPE vocabularies write a leading space


def word_start_token_ids(tokenizer) -> List[int]:
    """Ids of the tokens that begin a word: byte-level BPE tokens whose text starts with a space
    (``Ġ``), special tokens excluded. On the tiny tokenizer 904 of 2048 tokens."""
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return [i for i, t in enumerate(vocab) if t and t.startswith(WORD_START) and i not in special]


def build_word_start_reward_model(out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike,
                                  window_tokens: float = 8.0) -> Path:
    """Write a *constructed* Bradley-Terry reward model (HF ``Qwen3ForSequenceClassification``, one
    layer, ``num_labels=1``) whose reward is the share of word-initial tokens near the end of the
    scored sequence, i.e. in the response.

    The CPU recipe's reward (``model_configs/policy_tiny_bt_cpu.yaml``, ``env.model_path: tiny``):
    one a tiny random policy learns in a few GRPO steps. The policy samples nearly uniformly over the
    vocabulary, of which 44% are word-initial tokens (:func:`word_start_token_ids`), so rewards vary
    within a group; raising them means moving probability mass towards one large token class.
    Weights are set by hand, not trained (hidden size ``H = 64``, 4 heads of 16 dimensions):

    * embedding of token ``t``: ``sqrt(H)`` in dimension 0 (a constant that keeps every RMS norm
      near 1) and ``f(t)`` in dimension 1, where ``f(t) = 1`` for word-initial tokens, else 0;
    * attention head 0: query and key are one constant rotary pair (``inv_freq = 1e6^(-3/8)``,
      ``theta ~ 0.0056`` rad per token), so the last position attends to the token ``d`` positions
      back with weight ``a_d ∝ exp(s (cos(theta d) - 1)) ~ exp(-d^2 / (2 w^2))``, ``w = window_tokens``,
      ``s = 1 / (theta w)^2`` (monotone up to ``d = pi / theta ~ 560`` tokens); the value copies
      dimension 1 and the output writes the weighted mean into dimension 2; the MLP is zero;
    * ``score`` reads dimension 2 with weight 1.

    So the reward, read at the last token of the chat-template rendering of context + response (what
    ``*ForSequenceClassification`` and :func:`megatron_brrm.rollout.scalar.scored_ids` read), is
    ``sum_d a_d f(t_{L-1-d})`` within 3% (the RMS norms' factors): a float in [0, 1), the
    recency-weighted share of word-initial tokens in the last ~``2 w`` tokens. The rendering ends
    with the two non-word-initial tokens ``<|im_end|>`` and a newline (weight 0.19 together at
    ``w = 8``), so the maximum is about 0.81; a response of ``>= 2 w`` tokens fills the window, a
    shorter one leaves part of it to the end of the prompt.

    Args:
        out_dir: target folder (written atomically; replaced if present).
        tokenizer_dir: the tokenizer to copy and to read the word-initial tokens from (the policy's).
        window_tokens: ``w``, the width of the recency window in tokens (> 0).

    Returns:
        ``Path(out_dir)``.

    Raises:
        ValueError: ``window_tokens <= 0``.
    """

    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # lazy: keeps train_bt --help fast

    if window_tokens <= 0:
        raise ValueError(f"window_tokens={window_tokens} must be > 0")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    hidden, head_dim, pair = 64, 16, 3
    config = tiny_hf_config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config.num_labels = 1
    theta = 1e6 ** (-2 * pair / head_dim)  # the rotary frequency of dimensions (pair, pair + head_dim / 2)
    scale = 1.0 / (theta * window_tokens) ** 2
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.fill_(1.0) if "norm" in name else param.zero_()
        embed = model.model.embed_tokens.weight
        embed[:, 0] = math.sqrt(hidden)
        embed[word_start_token_ids(tokenizer), 1] = 1.0
        attn = model.model.layers[0].self_attn
        # q and k of head 0 / KV group 0: only channel `pair`, a positive constant; their RMS norms make it
        # sqrt(head_dim) * g, so the score is head_dim g^2 cos(theta d) / sqrt(head_dim) = scale * cos(theta d)
        attn.q_proj.weight[pair, 0] = 1.0
        attn.k_proj.weight[pair, 0] = 1.0
        g = math.sqrt(scale / math.sqrt(head_dim))
        attn.q_norm.weight.fill_(g)
        attn.k_norm.weight.fill_(g)
        attn.v_proj.weight[0, 1] = 1.0  # KV group 0, channel 0 <- dimension 1 (the word-start flag)
        attn.o_proj.weight[2, 0] = 1.0  # dimension 2 <- head 0 (reads KV group 0), channel 0
        model.score.weight[0, 2] = 1.0
    return _save_atomically(Path(out_dir), model, tokenizer)


def tiny_model_from_config(model_cfg, out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """The tiny Qwen3 of ``model.hf_path: tiny`` recipes, sized by ``model.tiny_*`` (a
    :class:`megatron_brrm.config.ModelConfig`), built into ``out_dir`` unless a model is already there."""
    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    m = model_cfg
    return build_tiny_hf_model(out, arch="qwen3", seed=seed, num_layers=m.tiny_num_layers,
                               hidden_size=m.tiny_hidden_size, num_attention_heads=m.tiny_num_attention_heads,
                               num_key_value_heads=m.tiny_num_key_value_heads, head_dim=m.tiny_head_dim,
                               intermediate_size=m.tiny_intermediate_size, vocab_size=m.tiny_vocab_size,
                               tie_word_embeddings=m.tiny_tie_word_embeddings)
