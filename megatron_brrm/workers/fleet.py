"""``GenerationFleet``: the driver's only handle on generation, one engine actor per placement.

One :class:`~megatron_brrm.workers.actors.EngineActor` per ``cluster.engine_placements`` entry
(the first ``rollout.num_engines`` of them; colocated engines share the policy bundles, split
engines have their own), each building its engine *inside* the actor with the engine factory
(HF engines on CPU, vLLM where it is installed; ``rollout.engine``). The fleet implements the
:class:`~megatron_brrm.rollout.engine.GenerationEngine` interface, so the two-turn rollout
treats it as one engine:

* ``generate`` splits a request across engines by whole *groups* (``group_ids``: the GRPO
  group of each prompt; a group's samples and its turn-2 continuations stay on one engine,
  whose prefix cache holds their shared prefix), balanced by prompt tokens (longest groups
  first, each to the engine with the fewest tokens so far: the LPT rule), runs the engines
  concurrently and returns the results in input order. Engines derive every sample's random
  stream from (seed, prompt ids, sample index), so the samples do not depend on the split:
  one engine or several give the same trajectories.
* Per-step metrics (:meth:`pop_metrics`): generated tokens per engine and
  ``engine_imbalance`` = max / mean busy seconds over the engines that had work.
* ``sleep`` / ``wake`` go to every engine (each a no-op unless its engine
  ``abilities.supports_sleep``); ``update_weights`` streams to every engine (the ``ray``
  refit transport; :func:`megatron_brrm.workers.refit.refit` is the driver's entry point).

A dead or raising engine becomes a :class:`~megatron_brrm.workers.worker_group.WorkerError`
naming the engine, its node and the method.
"""
from __future__ import annotations

import functools
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import ray
import torch

from megatron_brrm.rollout.engine import EngineAbilities, GenerationEngine, GenerationOutput, SamplingParams
from megatron_brrm.rollout.factory import make_engine
from megatron_brrm.workers.actors import RemoteEngine, create_engine_actors


def engine_factory_for(rollout_cfg, model_path: str) -> Callable[[], GenerationEngine]:
    """A picklable zero-argument factory building ``rollout.engine`` for ``model_path`` inside an actor."""
    return functools.partial(make_engine, rollout_cfg, str(model_path))


def balance_groups(group_tokens: Dict[int, int], num_engines: int) -> Dict[int, int]:
    """``{group id: engine index}`` by the LPT rule: groups in decreasing token count (ties by group
    id) each go to the engine with the fewest tokens so far (ties to the lowest index).

    Args:
        group_tokens: ``{group id: prompt tokens of the group (prompt length x samples, summed)}``.
        num_engines: engines to spread over (>= 1).

    Returns:
        The assignment; deterministic for given inputs. LPT's makespan is within 4/3 of the
        optimum (Graham, "Bounds on multiprocessing timing anomalies", 1969).
    """
    load = [0] * num_engines
    out: Dict[int, int] = {}
    for g, tokens in sorted(group_tokens.items(), key=lambda kv: (-kv[1], kv[0])):
        e = min(range(num_engines), key=lambda i: (load[i], i))
        out[g] = e
        load[e] += tokens
    return out


class GenerationFleet(GenerationEngine):
    """Engine actors behind one ``GenerationEngine`` (see the module docstring).

    Args:
        cluster: the :class:`~megatron_brrm.workers.cluster.Cluster` (its ``engine_placements``).
        engine_factory: zero-argument picklable callable building the engine in an actor
            (:func:`engine_factory_for`).
        num_engines: how many placements to use (default: all).
        timeout_s: per-call timeout in seconds (None: none).
        ready_timeout_s: seconds to wait for every engine's construction.
        bucket_bytes: ``update_weights`` bucket size.

    Raises:
        ValueError: more engines than placements, or none.
        WorkerError: an engine failed to start (named).
    """

    def __init__(self, cluster, engine_factory: Callable[[], GenerationEngine], num_engines: Optional[int] = None,
                 timeout_s: Optional[float] = None, ready_timeout_s: float = 600.0, bucket_bytes: Optional[int] = None):
        n = len(cluster.engine_placements) if num_engines is None else int(num_engines)
        if n < 1:
            raise ValueError(f"rollout.num_engines = {n}: the fleet needs at least one engine "
                             f"(the cluster has {len(cluster.engine_placements)} engine placement(s))")
        self.engines: List[RemoteEngine] = create_engine_actors(cluster, engine_factory, num_engines=n,
                                                                timeout_s=timeout_s, ready_timeout_s=ready_timeout_s,
                                                                bucket_bytes=bucket_bytes)
        self._abilities = self.engines[0].abilities
        self._tokens = [0] * n
        self._busy = [0.0] * n

    @property
    def tokenizer(self):
        return self.engines[0].tokenizer

    @property
    def abilities(self) -> EngineAbilities:
        """The engines' abilities (every engine of a fleet is built by the same factory)."""
        return self._abilities

    @property
    def num_engines(self) -> int:
        return len(self.engines)

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: List[List[int]], params: SamplingParams,
                 group_ids: Optional[Sequence[int]] = None) -> List[List[GenerationOutput]]:
        """``params.n`` samples per prompt, spread over the engines by whole groups (module docstring).

        Args:
            prompts: token-id lists.
            params: sampling settings (the same for every engine).
            group_ids: the group of each prompt (default: every prompt its own group).

        Raises:
            WorkerError: an engine raised or died (engine index, node and method named).
        """
        groups = list(range(len(prompts))) if group_ids is None else [int(g) for g in group_ids]
        if len(groups) != len(prompts):
            raise ValueError(f"generate: {len(group_ids)} group ids for {len(prompts)} prompts")
        tokens: Dict[int, int] = {}
        for g, p in zip(groups, prompts):
            tokens[g] = tokens.get(g, 0) + len(p) * params.n
        where = balance_groups(tokens, self.num_engines)
        rows: List[List[int]] = [[] for _ in self.engines]
        for i, g in enumerate(groups):
            rows[where[g]].append(i)
        start = time.perf_counter()
        pending = {}
        for e, idx in enumerate(rows):
            if idx:
                ref = self.engines[e].generate_async([prompts[i] for i in idx], params)
                pending[ref] = e
        results: List[Optional[List[GenerationOutput]]] = [None] * len(prompts)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            e = pending.pop(ready[0])
            out = self.engines[e].get(ready[0], "generate")
            self._busy[e] += time.perf_counter() - start
            for i, samples in zip(rows[e], out):
                results[i] = samples
                self._tokens[e] += sum(len(o.token_ids) for o in samples)
        return results  # type: ignore[return-value]

    def pop_metrics(self) -> Dict[str, float]:
        """Generation metrics since the last call, then reset: ``engine<i>/generated_tokens``,
        ``engine<i>/busy_s`` and ``engine_imbalance`` (max / mean busy seconds over engines that
        worked; 1.0 = perfectly balanced)."""
        out: Dict[str, float] = {}
        for e, (t, b) in enumerate(zip(self._tokens, self._busy)):
            out[f"engine{e}/generated_tokens"] = float(t)
            out[f"engine{e}/busy_s"] = b
        busy = [b for b in self._busy if b > 0]
        out["engine_imbalance"] = max(busy) / (sum(busy) / len(busy)) if busy else 1.0
        self._tokens = [0] * self.num_engines
        self._busy = [0.0] * self.num_engines
        return out

    def score(self, sequences: Sequence[Sequence[int]]) -> List[List[float]]:
        """Per-token logprobs from engine 0 (every engine holds the same weights)."""
        return self.engines[0].score(sequences)

    # ------------------------------------------------------------------ weights and memory
    def update_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Load a stream of HF-named tensors into every engine (one pass per engine: the stream is
        materialised once here)."""
        bucket = list(named_tensors)
        for engine in self.engines:
            engine.update_weights(iter(bucket))

    def _all(self, method: str, *args) -> None:
        refs = [(e, getattr(e.handle, method).remote(*args)) for e in self.engines]
        for engine, ref in refs:
            engine.get(ref, method)

    def sleep(self) -> None:
        """Every engine releases its accelerator memory (a no-op where unsupported)."""
        self._all("sleep")

    def wake(self, tags: Optional[List[str]] = None) -> None:
        """Every engine restores what :meth:`sleep` released (``tags`` as vLLM's ``wake_up``)."""
        self._all("wake", tags)

    def shutdown(self) -> None:
        """Stop every engine (its engine process first, then the actor)."""
        for engine in self.engines:
            try:
                engine.get(engine.handle.shutdown.remote(), "shutdown")
            except Exception:  # noqa: BLE001 - already dead: nothing to stop
                pass
            ray.kill(engine.handle, no_restart=True)
        self.engines = []
