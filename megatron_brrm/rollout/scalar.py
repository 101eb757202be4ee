"""Scalar (Bradley-Terry) reward models: what sequence a reward is read from, and an HF scorer.

A response is scored as the chat-template rendering of ``context + [assistant: response]``
(no generation prompt, ``add_special_tokens=False``: the template holds any BOS), and its
reward is the model's value at the last token of that rendering. Training
(:mod:`megatron_brrm.train_bt`) and every consumer -- :class:`SequenceClassifierScorer` for
evaluation (``evaluation/run.py --engine scalar``) and the Python API
(:class:`megatron_brrm.api.RewardModel`) -- use :func:`scored_ids`, so a response gets the same
tokens, hence the same reward, everywhere.

:class:`SequenceClassifierScorer` loads an HF ``*ForSequenceClassification`` folder
(``tools/convert_megatron_to_hf.py`` writes one for a trained reward model) with
``AutoModelForSequenceClassification`` and scores right-padded batches; transformers reads the
value at the rightmost non-pad token, which is the last rendered token.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from megatron_brrm.rollout.chat import ChatTemplateError

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def scored_ids(tokenizer, context: List[Dict[str, str]], response: str) -> List[int]:
    """Token ids of ``context`` followed by the assistant ``response``, rendered by the chat template.

    Raises:
        ChatTemplateError: the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError("the tokenizer has no chat_template; a scalar reward model scores the chat-template "
                                "rendering of context + response (save a template in tokenizer_config.json)")
    messages = list(context) + [{"role": "assistant", "content": response}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class SequenceClassifierScorer:
    """Rewards from an HF ``*ForSequenceClassification`` folder (``num_labels=1``).

    Args:
        model_path: the HF folder (config.json, safetensors, tokenizer with a chat template).
        device: ``auto`` (CUDA if visible, else CPU), ``cpu``, ``cuda``, ``cuda:N``.
        dtype: ``auto`` (fp32 on CPU, bf16 on CUDA), ``fp32``, ``bf16``, ``fp16``.
        batch_size: sequences per forward call.
        max_length: longest sequence scored, in tokens; longer ones keep their last
            ``max_length`` tokens (the end holds the response and the scoring token) and are
            counted in :attr:`truncated`. None: no limit.

    Raises:
        FileNotFoundError: no config.json; ValueError: not a one-label sequence classifier, or
        a bad device / dtype.
    """

    def __init__(self, model_path, device: str = "auto", dtype: str = "auto", batch_size: int = 16,
                 max_length: Optional[int] = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer  # lazy: keeps train_bt --help fast

        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not an HF model folder (no config.json)")
        archs = json.loads((path / "config.json").read_text(encoding="utf-8")).get("architectures") or []
        if not any(str(a).endswith("ForSequenceClassification") for a in archs):
            raise ValueError(f"{path} holds {archs[0] if archs else 'an unknown architecture'}, not a scalar reward "
                             "model (*ForSequenceClassification); export a trained reward model with "
                             "tools/convert_megatron_to_hf.py")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            dtype = "bf16" if str(device).startswith("cuda") else "fp32"
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {dtype!r}")
        self.path, self.device = path, torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=_DTYPES[dtype]).to(self.device)
        self.model.eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"{path}: num_labels={self.model.config.num_labels}; a reward model has one output")
        pad = self.model.config.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.pad_token_id
        if self.pad_id is None:
            raise ValueError(f"{path}: no pad_token_id in config.json or the tokenizer; set one to score batches")
        self.model.config.pad_token_id = self.pad_id
        self.batch_size = max(1, int(batch_size))
        self.max_length = max_length
        self.truncated = 0

    def ids(self, context: List[Dict[str, str]], response: str) -> List[int]:
        """The scored token ids (:func:`scored_ids`), left-truncated to ``max_length``."""
        ids = scored_ids(self.tokenizer, context, response)
        if self.max_length is not None and len(ids) > self.max_length:
            self.truncated += 1
            ids = ids[-self.max_length:]
        return ids

    @torch.no_grad()
    def score_ids(self, sequences: Sequence[Sequence[int]]) -> List[float]:
        """Rewards of token sequences (batched by length, results in input order)."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out = [0.0] * len(sequences)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            t = max(len(sequences[i]) for i in idx)
            ids = torch.full((len(idx), t), self.pad_id, dtype=torch.long)
            att = torch.zeros(len(idx), t, dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, :len(sequences[i])] = torch.as_tensor(list(sequences[i]))
                att[row, :len(sequences[i])] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=att.to(self.device)).logits
            for row, i in enumerate(idx):
                out[i] = float(logits[row, 0].float())
        return out

    def score_batch(self, contexts: Sequence[List[Dict[str, str]]], responses: Sequence[str]) -> List[float]:
        """Rewards (higher = better) of ``responses[i]`` as the reply to ``contexts[i]``."""
        return self.score_ids([self.ids(c, r) for c, r in zip(contexts, responses)])
