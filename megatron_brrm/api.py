"""Use a trained reward model from Python (verl's ``SimpleRewardEvaluator`` equivalent).

::

    from megatron_brrm.api import RewardModel

    rm = RewardModel.from_pretrained("brrm-8b-hf", engine="vllm")          # or engine="hf" (CPU/GPU)
    r = rm.compare("What is 2+2?", "4", "5", both_orders=True)
    r.verdict, r.consistency, r.reasoning                                  # "a", True, "<judge text>"
    rs = rm.compare_batch([(context, a, b), ...])                          # batched

A *generative judge* (BR-RM two-turn, ``protocol="brrm"``; RM-R1, ``"rmr1"``) is loaded from an
HF folder and run through a generation engine (:func:`megatron_brrm.rollout.factory.make_engine`:
``hf`` on CPU or GPU, ``vllm`` on GPU) with the same rollout as training and evaluation
(:func:`megatron_brrm.rollout.two_turn.rollout`): the judge sees ``(response_a, response_b)`` as
Response 1 and Response 2; with ``both_orders=True`` also swapped, and ``consistency`` says
whether both orders named the same response.

A *scalar* reward model (Bradley-Terry: one number per response) is an HF
``*ForSequenceClassification`` folder (what ``python -m megatron_brrm.train_bt`` exports):
:meth:`RewardModel.from_pretrained` loads it as a :class:`ScalarScorer`
(:class:`megatron_brrm.rollout.scalar.SequenceClassifierScorer`, the same scoring as training and
``evaluation/run.py --engine scalar``); then :meth:`RewardModel.score` returns its reward and
:meth:`RewardModel.compare` prefers the higher one. Any other scorer plugs in with
``RewardModel(scorer=...)``. :meth:`~RewardModel.score` on a generative judge raises ``TypeError``.

Decoding defaults to greedy (temperature 0, as RM-R1's evaluation); BR-RM's evaluation
sampled at temperature 1.0 (``temperature=1.0``; results then depend on ``seed``).
"""
from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from megatron_brrm.config import RolloutConfig
from megatron_brrm.judge import RewardRule, get_protocol
from megatron_brrm.rollout.trajectory import turn_contents

Context = Union[str, List[Dict[str, str]]]


class ScalarScorer(ABC):
    """A scalar reward model: one reward per (context, response) -- the interface a Bradley-Terry
    model implements to be used through :class:`RewardModel`."""

    @abstractmethod
    def score_batch(self, contexts: Sequence[List[Dict[str, str]]], responses: Sequence[str]) -> List[float]:
        """Rewards (float, higher = better) for ``responses[i]`` as the reply to ``contexts[i]``
        (chat messages ending with a user turn)."""


@dataclass
class OrderResult:
    """The judge's output for one presentation order.

    Attributes:
        order: ``("a", "b")`` (response_a shown as Response 1) or ``("b", "a")``.
        verdict: the preferred response, ``"a"`` or ``"b"``, or ``None`` when the output is
            unparseable (missing/garbled verdict, or the turn hit the length limits).
        turn_texts: the judge's text of every turn (BR-RM: turn 1, turn 2), EOS removed.
        format_error: ``None``, or why the verdict is unparseable (the protocol parser's reason).
    """

    order: Tuple[str, str]
    verdict: Optional[str]
    turn_texts: List[str]
    format_error: Optional[str]


@dataclass
class CompareResult:
    """The result of :meth:`RewardModel.compare`.

    Attributes:
        verdict: ``"a"`` or ``"b"``; ``None`` when the (first) order is unparseable or, with
            both orders, when the two orders disagree or one is unparseable.
        reasoning: the judge's text of the ``(a, b)`` order, turns joined by a blank line
            (``""`` for a scalar model).
        consistency: with ``both_orders=True``, True iff both orders parse and name the same
            response (position consistency); ``None`` for a single order or a scalar model.
        orders: per presentation order, :class:`OrderResult` (one or two entries).
        scores: a scalar model's rewards ``(reward_a, reward_b)``, else ``None``.
    """

    verdict: Optional[str]
    reasoning: str
    consistency: Optional[bool]
    orders: List[OrderResult] = field(default_factory=list)
    scores: Optional[Tuple[float, float]] = None

    @property
    def preference(self) -> Optional[int]:
        """The verdict as the project's preference label: 1 (``"a"``), 2 (``"b"``) or ``None``."""
        return {"a": 1, "b": 2}.get(self.verdict)


@dataclass
class _Pair:
    """What the rollout needs of a pair (``preference`` is a placeholder: rewards are unused here)."""

    id: str
    context: List[Dict[str, str]]
    response1: str
    response2: str
    preference: int = 1


def as_messages(context: Context, where: str = "context") -> List[Dict[str, str]]:
    """A context as chat messages: a str becomes one user turn; a list must hold
    ``{"role": "system"|"user"|"assistant", "content": str}`` dicts ending with a user turn.

    Raises:
        ValueError: anything else (names ``where`` and the message index).
    """
    if isinstance(context, str):
        return [{"role": "user", "content": context}]
    if not isinstance(context, (list, tuple)) or not context:
        raise ValueError(f"{where} must be a str or a non-empty list of chat messages, got {type(context).__name__}")
    out = []
    for i, m in enumerate(context):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}[{i}] must be {{'role': 'system'|'user'|'assistant', 'content': str}}, "
                             f"got {str(m)[:200]}")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise ValueError(f"{where} must end with a user turn (the request the responses answer), "
                         f"ends with {out[-1]['role']!r}")
    return out


class RewardModel:
    """A reward model usable from code: a generative judge (``engine`` + ``protocol``) or a scalar
    model (``scorer``).

    Args:
        engine: a :class:`~megatron_brrm.rollout.engine.GenerationEngine` running the judge
            (see :meth:`from_pretrained`); ``None`` for a scalar model.
        protocol: judge protocol name (``"brrm"``, ``"rmr1"``).
        template_dir: judge templates overriding the shipped wording (as used in training).
        scorer: a :class:`ScalarScorer` for a scalar model (then ``engine`` is ``None``).
        max_new_tokens: generated tokens per turn (default 8192, BR-RM's evaluation).
        max_total_length: prompt + all turns, tokens (default 16384, BR-RM's evaluation).
        temperature, top_p: sampling (default greedy); seed: sampling seed.
        batch_size: presentations per engine call in :meth:`compare_batch`.

    Raises:
        ValueError: neither or both of ``engine`` and ``scorer``; unknown protocol; bad sizes.
    """

    def __init__(self, engine=None, protocol: str = "brrm", template_dir: Optional[str] = None,
                 scorer: Optional[ScalarScorer] = None, max_new_tokens: int = 8192, max_total_length: int = 16384,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 32):
        if (engine is None) == (scorer is None):
            raise ValueError("RewardModel needs exactly one of engine= (a generative judge) and scorer= "
                             "(a scalar reward model)")
        if int(batch_size) < 1 or int(max_new_tokens) < 1 or int(max_total_length) < 1:
            raise ValueError(f"batch_size, max_new_tokens and max_total_length must be >= 1, got {batch_size}, "
                             f"{max_new_tokens}, {max_total_length}")
        self.engine = engine
        self.scorer = scorer
        self.protocol = get_protocol(protocol, template_dir) if engine is not None else None
        self.max_new_tokens = int(max_new_tokens)
        self.max_total_length = int(max_total_length)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = int(seed)
        self.batch_size = int(batch_size)

    @classmethod
    def from_pretrained(cls, model_path: Union[str, Path], engine: str = "hf", protocol: str = "brrm",
                        device: str = "auto", dtype: str = "auto", tensor_parallel_size: int = 1,
                        gpu_memory_utilization: float = 0.85, **kwargs) -> "RewardModel":
        """Load a reward model from an HF folder: a generative judge (``tools/convert_megatron_to_hf.py``
        output, or a released checkpoint such as ``nvidia/Qwen3-Nemotron-8B-BRRM`` downloaded
        locally), or a scalar Bradley-Terry model (a ``*ForSequenceClassification`` folder, scored
        with transformers on ``device`` in ``dtype``; ``engine`` and ``protocol`` do not apply).

        Args:
            model_path: HF folder (config.json, safetensors, tokenizer with a chat template).
            engine: ``"hf"`` (transformers; CPU or GPU) or ``"vllm"`` (GPU), built by
                :func:`megatron_brrm.rollout.factory.make_engine`.
            protocol: the judge protocol the model was trained with.
            device: HF engine device (``auto`` = CUDA if visible, else CPU); dtype: ``auto`` |
                ``fp32`` | ``bf16`` | ``fp16``; tensor_parallel_size, gpu_memory_utilization: vLLM.
            **kwargs: the other :class:`RewardModel` arguments (max_new_tokens, temperature, ...).

        Raises:
            FileNotFoundError: no config.json in ``model_path``.
            ValueError / RuntimeError: from the engine factory (unknown engine or dtype; vLLM
                not installed or no GPU), or a sequence classifier with more than one label.
        """
        from megatron_brrm.rollout.factory import make_engine  # lazy: heavy, only needed on this path

        path = Path(model_path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path}: not an HF model folder (no config.json)")
        archs = json.loads(cfg_file.read_text(encoding="utf-8")).get("architectures") or []
        if any(str(a).endswith("ForSequenceClassification") for a in archs):
            from megatron_brrm.rollout.scalar import SequenceClassifierScorer  # lazy: heavy, only needed on this path

            scorer = SequenceClassifierScorer(path, device=device, dtype=dtype,
                                              batch_size=max(1, int(kwargs.get("batch_size", 32))),
                                              max_length=kwargs.get("max_total_length"))
            return cls(scorer=scorer, **kwargs)
        rollout_cfg = dataclasses.replace(
            RolloutConfig(), engine=engine, device=device, dtype=dtype, tensor_parallel_size=int(tensor_parallel_size),
            gpu_memory_utilization=float(gpu_memory_utilization), colocated=False, seed=int(kwargs.get("seed", 0)),
            max_total_sequence_length=int(kwargs.get("max_total_length", 16384)),
            max_batch_size=max(1, int(kwargs.get("batch_size", 32))))
        return cls(make_engine(rollout_cfg, str(path)), protocol=protocol, **kwargs)

    # ------------------------------------------------------------------ pairwise
    def compare(self, context: Context, response_a: str, response_b: str, both_orders: bool = False) -> CompareResult:
        """Which of two responses to ``context`` is better (see :class:`CompareResult`).

        Args:
            context: the user's request as a str, or chat messages ending with a user turn.
            response_a, response_b: the two candidate replies (str).
            both_orders: also judge ``(b, a)`` and report position consistency.

        Raises:
            ValueError: a malformed context or a non-str response.
        """
        return self.compare_batch([(context, response_a, response_b)], both_orders=both_orders)[0]

    def compare_batch(self, items: Sequence[Tuple[Context, str, str]], both_orders: bool = False) -> List[CompareResult]:
        """:meth:`compare` for many ``(context, response_a, response_b)`` items, judged together
        (``batch_size`` presentations per engine call); results in input order.

        Raises:
            ValueError: a malformed item (names its index).
        """
        checked = []
        for k, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or len(item) != 3:
                raise ValueError(f"items[{k}] must be (context, response_a, response_b)")
            ctx, a, b = item
            for name, r in (("response_a", a), ("response_b", b)):
                if not isinstance(r, str):
                    raise ValueError(f"items[{k}].{name} must be a str, got {type(r).__name__}")
            checked.append((as_messages(ctx, f"items[{k}].context"), a, b))
        if self.engine is None:
            return [self._compare_scalar(ctx, a, b) for ctx, a, b in checked]
        orders = [("a", "b"), ("b", "a")] if both_orders else [("a", "b")]
        pairs = []
        for k, (ctx, a, b) in enumerate(checked):
            text = {"a": a, "b": b}
            pairs += [_Pair(f"{k}:{o[0]}{o[1]}", ctx, text[o[0]], text[o[1]]) for o in orders]
        per_pair = self._judge(pairs)
        results = []
        for k in range(len(checked)):
            mine = [OrderResult(o, *per_pair[k * len(orders) + j]) for j, o in enumerate(orders)]
            mine = [dataclasses.replace(r, verdict=None if r.verdict is None else r.order[r.verdict - 1])
                    for r in mine]
            verdicts = [r.verdict for r in mine]
            if both_orders:
                consistent = verdicts[0] is not None and verdicts[0] == verdicts[1]
                verdict = verdicts[0] if consistent else None
            else:
                consistent, verdict = None, verdicts[0]
            results.append(CompareResult(verdict, "\n\n".join(mine[0].turn_texts), consistent, mine))
        return results

    def _judge(self, pairs: List[_Pair]) -> List[Tuple[Optional[int], List[str], Optional[str]]]:
        """``(verdict position 1|2|None, turn texts, format error)`` per pair, via the rollout."""
        from megatron_brrm.rollout.two_turn import RolloutParams, rollout  # lazy: heavy, only needed on this path

        params = RolloutParams(n=1, temperature=self.temperature, top_p=self.top_p,
                               max_new_tokens=[self.max_new_tokens] * self.protocol.num_turns,
                               max_total_length=self.max_total_length, seed=self.seed)
        eos = self.engine.abilities.eos_token_ids
        out = []
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start:start + self.batch_size]
            for traj in rollout(self.engine, self.protocol, batch, params, RewardRule(), group_offset=start):
                v = traj.verdict
                out.append((v.preference, turn_contents(traj, self.engine.tokenizer, eos), v.format_error))
        return out

    # ------------------------------------------------------------------ scalar
    def score(self, context: Context, response: str) -> float:
        """The scalar reward of ``response`` to ``context`` (scalar models only).

        Raises:
            TypeError: the model is a generative pairwise judge (use :meth:`compare`).
            ValueError: a malformed context or a non-str response.
        """
        return self.score_batch([(context, response)])[0]

    def score_batch(self, items: Sequence[Tuple[Context, str]]) -> List[float]:
        """:meth:`score` for many ``(context, response)`` items.

        Raises:
            TypeError: the model is a generative pairwise judge (use :meth:`compare_batch`).
        """
        if self.scorer is None:
            raise TypeError(f"score(context, response) needs a scalar (Bradley-Terry) reward model, but this is a "
                            f"generative pairwise judge (protocol {self.protocol.name!r}): it compares two responses, "
                            f"use compare(context, response_a, response_b)")
        contexts, responses = [], []
        for k, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[1], str):
                raise ValueError(f"items[{k}] must be (context, response: str)")
            contexts.append(as_messages(item[0], f"items[{k}].context"))
            responses.append(item[1])
        scores = [float(x) for x in self.scorer.score_batch(contexts, responses)]
        if len(scores) != len(responses):
            raise RuntimeError(f"scorer returned {len(scores)} rewards for {len(responses)} responses")
        return scores

    def _compare_scalar(self, ctx: List[Dict[str, str]], a: str, b: str) -> CompareResult:
        ra, rb = self.scorer.score_batch([ctx, ctx], [a, b])
        verdict = "a" if ra > rb else "b" if rb > ra else None
        return CompareResult(verdict, "", None, [], (float(ra), float(rb)))
