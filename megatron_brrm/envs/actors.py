"""The environments' Ray actors: a Bradley-Terry scorer and a judge's generation engine, each in an
actor of its own, outside the policy's placement group.

The reward model never lives in the driver: :class:`ScorerActor` holds a
:class:`~megatron_brrm.rollout.scalar.SequenceClassifierScorer` (the one scoring rule of
:func:`~megatron_brrm.rollout.scalar.scored_ids`), :func:`start_judge_engine` an
:class:`~megatron_brrm.workers.actors.EngineActor` (the same actor as the generation fleet's) with
the judge's engine. Each reserves ``env.num_cpus`` CPUs and ``env.num_gpus`` GPUs from the Ray
cluster's free resources (on a 2-core CPU machine 0 CPUs: the policy bundles hold the cores and a
1-CPU actor would wait for ever, docs/design.md §7). Every call has ``env.timeout_s``; a failing,
dying or hanging actor becomes a :class:`~megatron_brrm.workers.errors.WorkerError` of the group
``reward_env``.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Sequence, Tuple

import ray
import torch

from megatron_brrm.rollout.engine import GenerationEngine
from megatron_brrm.rollout.scalar import SequenceClassifierScorer
from megatron_brrm.workers.actors import EngineActor, RemoteEngine
from megatron_brrm.workers.errors import WorkerError, describe_ray_error
from megatron_brrm.workers.remote import make_remote, merge_runtime_env

GROUP = "reward_env"


class ScorerActor:
    """A Bradley-Terry reward model in a Ray actor (a plain class; :func:`start_scorer` makes it remote).

    Args: those of :class:`~megatron_brrm.rollout.scalar.SequenceClassifierScorer` (``model_path``,
    ``device``, ``dtype``, ``batch_size``, ``max_length``).
    """

    def __init__(self, model_path: str, device: str = "auto", dtype: str = "auto", batch_size: int = 16,
                 max_length=None):
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        self.scorer = SequenceClassifierScorer(model_path, device=device, dtype=dtype, batch_size=batch_size,
                                               max_length=max_length)

    def score_batch(self, contexts: List[List[Dict[str, str]]], responses: List[str]) -> List[float]:
        """Rewards of ``responses[i]`` to ``contexts[i]`` (float, the model's logit scale)."""
        return self.scorer.score_batch(contexts, responses)

    def truncated(self) -> int:
        """Sequences scored so far that were longer than ``max_length`` (their end was kept)."""
        return int(self.scorer.truncated)

    def node_id(self) -> str:
        """The Ray node id of this actor's node (hex)."""
        return ray.get_runtime_context().get_node_id()


def _node_ip(node_id: str) -> str:
    return next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id), "?")


def _start(actor_cls: type, args: tuple, num_cpus: float, num_gpus: float, ready_timeout_s: float) -> Tuple[Any, str]:
    """Create one actor of ``actor_cls(*args)`` and wait until it is constructed; returns ``(handle, node ip)``.

    Raises:
        WorkerError: the constructor raised, the actor died or did not start within ``ready_timeout_s``.
    """
    remote_cls = make_remote(actor_cls, num_cpus=num_cpus, num_gpus=num_gpus)
    handle = remote_cls.options(runtime_env=merge_runtime_env(remote_cls, {"OMP_NUM_THREADS": "1"})).remote(*args)
    try:
        ray.get(handle.__ray_ready__.remote(), timeout=ready_timeout_s)
        node = _node_ip(ray.get(handle.node_id.remote(), timeout=ready_timeout_s))
    except ray.exceptions.GetTimeoutError:
        ray.kill(handle, no_restart=True)
        raise WorkerError(GROUP, 0, "__init__", f"not started within {ready_timeout_s:g} s (env.num_cpus / "
                          "env.num_gpus free in the Ray cluster?)") from None
    except ray.exceptions.RayError as exc:
        ray.kill(handle, no_restart=True)
        cause, detail = describe_ray_error(exc)
        raise WorkerError(GROUP, 0, "__init__", cause, "?", detail) from exc
    return handle, node


class RemoteScorer:
    """Driver-side handle of a :class:`ScorerActor` (``score_batch`` like a ``ScalarScorer``).

    Args:
        handle: the actor; node: its node's IP (named in errors); timeout_s: per call.
    """

    def __init__(self, handle, node: str = "?", timeout_s: float = 1800.0):
        self.handle, self.node, self.timeout_s = handle, node, float(timeout_s)

    def _get(self, ref, method: str):
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise WorkerError(GROUP, 0, method, f"timed out after {self.timeout_s:g} s (env.timeout_s)",
                              self.node) from None
        except ray.exceptions.RayError as exc:
            cause, detail = describe_ray_error(exc)
            raise WorkerError(GROUP, 0, method, cause, self.node, detail) from exc

    def score_batch(self, contexts: Sequence[List[Dict[str, str]]], responses: Sequence[str]) -> List[float]:
        """Rewards from the actor (see :meth:`ScorerActor.score_batch`)."""
        return self._get(self.handle.score_batch.remote(list(contexts), list(responses)), "score_batch")

    def truncated(self) -> int:
        """See :meth:`ScorerActor.truncated`."""
        return self._get(self.handle.truncated.remote(), "truncated")

    def shutdown(self) -> None:
        """Kill the actor (idempotent)."""
        if self.handle is not None:
            ray.kill(self.handle, no_restart=True)
            self.handle = None


def start_scorer(model_path: str, device: str, dtype: str, batch_size: int, max_length, num_cpus: float = 0.0,
                 num_gpus: float = 0.0, timeout_s: float = 1800.0) -> RemoteScorer:
    """A :class:`ScorerActor` for the ``*ForSequenceClassification`` folder ``model_path``, started and ready.

    Raises:
        WorkerError: it failed to start (e.g. not a one-label sequence classifier: the cause names it).
    """
    handle, node = _start(ScorerActor, (str(model_path), device, dtype, int(batch_size), max_length), num_cpus,
                          num_gpus, timeout_s)
    return RemoteScorer(handle, node, timeout_s)


class JudgeEngine(RemoteEngine):
    """A :class:`~megatron_brrm.workers.actors.RemoteEngine` that owns its actor: :meth:`shutdown`
    stops the engine (its processes) and kills the actor."""

    def shutdown(self) -> None:
        """Stop the engine, then kill its actor (idempotent; an already dead actor is fine)."""
        if self.handle is None:
            return
        try:
            self.get(self.handle.shutdown.remote(), "shutdown")
        except WorkerError:
            pass  # already dead: nothing to stop
        ray.kill(self.handle, no_restart=True)
        self.handle = None


def start_judge_engine(engine_factory: Callable[[], GenerationEngine], num_cpus: float = 0.0, num_gpus: float = 0.0,
                       timeout_s: float = 1800.0) -> JudgeEngine:
    """An :class:`~megatron_brrm.workers.actors.EngineActor` building the judge's engine with
    ``engine_factory`` (picklable), started and ready; returned as a :class:`JudgeEngine` whose
    errors name the group ``reward_env``.

    Raises:
        WorkerError: the engine failed to build.
    """
    handle, node = _start(EngineActor, (engine_factory,), num_cpus, num_gpus, timeout_s)
    return JudgeEngine(handle, 0, timeout_s=timeout_s, node=node, group=GROUP)
