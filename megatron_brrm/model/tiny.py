"""A tiny random-weight Hugging Face model folder, built locally (no download).

Used by the tests and the CPU demo: a Qwen3 (or Llama) architecture with a few layers, a
byte-level BPE tokenizer trained with the ``tokenizers`` library on the repository's
shipped text samples, ChatML special tokens and a ChatML chat template, so every code path
that loads ``AutoTokenizer`` / ``AutoModelForCausalLM`` from a folder runs unchanged.
"""
from __future__ import annotations

import itertools
import json
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


def _save_folder(out: Path, model, tokenizer, generation=None) -> Path:
    """Write ``model`` (safetensors), ``tokenizer`` and ``generation`` config into ``out`` atomically:
    a temporary sibling folder renamed over ``out`` (an old ``out`` is replaced), removed on failure."""
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp.", dir=out.parent if out.parent.exists() else None))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if generation is not None:
            generation.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


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
    generation = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                  do_sample=True, temperature=1.0, top_p=1.0)
    return _save_folder(out, model, tokenizer, generation)


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
    return _save_folder(out, model, tokenizer)


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
