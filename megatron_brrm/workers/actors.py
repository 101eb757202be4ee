"""Generation engines in Ray actors: the actor, its driver-side handle, and their creation.

:class:`EngineActor` builds its engine *inside* the actor from a factory callable (the
engine's weights and, on GPU, its CUDA context never exist in the driver) and forwards
``generate`` / ``update_weights`` / ``sleep`` / ``wake``; for the same-node refit
(:mod:`megatron_brrm.workers.refit_shm`) it loads buckets from shared memory
(``load_refit_bucket``) or moves its engine's weights into shared memory for the policy
ranks to write directly (``share_refit_weights``). :class:`RemoteEngine` is the
driver-side handle that implements the same ``GenerationEngine`` interface over it, so
rollout code treats local and remote engines alike (used for vLLM engines in their own
actors).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

import ray
import torch

from megatron_brrm.rollout.engine import EngineAbilities, GenerationEngine, GenerationOutput, SamplingParams
from megatron_brrm.rollout.refit import fused_module_key, iter_buckets
from megatron_brrm.rollout.shm import unmap_buffers
from megatron_brrm.workers.errors import WorkerError, describe_ray_error
from megatron_brrm.workers.refit_shm import load_bucket, seal_engine_weights, share_engine_weights
from megatron_brrm.workers.remote import make_remote, merge_runtime_env


class EngineActor:
    """Hosts one generation engine inside a Ray actor.

    Args:
        engine_factory: zero-argument callable returning a ``GenerationEngine``; it runs in
            the actor process (so it must be picklable: a module-level function, a class, or a
            ``functools.partial`` of one). The environment holds ``BRRM_ENGINE_INDEX`` and
            ``BRRM_ENGINE_BUNDLE_INDICES`` (comma-separated bundle indices of the engine's
            TP ranks in the current placement group) when created by :func:`create_engine_actors`.

    Raises:
        TypeError: the factory did not return a GenerationEngine.
    """

    def __init__(self, engine_factory: Callable[[], GenerationEngine]):
        engine = engine_factory()
        if not isinstance(engine, GenerationEngine):
            raise TypeError(f"EngineActor: the engine factory returned {type(engine).__name__}, "
                            "not a megatron_brrm.rollout.engine.GenerationEngine")
        self.engine = engine

    def tokenizer(self):
        """The engine's tokenizer (pickled to the caller)."""
        return self.engine.tokenizer

    def abilities(self) -> EngineAbilities:
        """The engine's declared abilities."""
        return self.engine.abilities

    def score(self, sequences: List[List[int]]) -> List[List[float]]:
        """``engine.score``: per-token logprobs of whole sequences (temperature 1)."""
        return self.engine.score(sequences)

    def generate(self, prompts: List[List[int]], params: SamplingParams,
                 group_ids: Optional[Sequence[int]] = None) -> List[List[GenerationOutput]]:
        """``engine.generate``: ``[len(prompts)][params.n]`` outputs."""
        return self.engine.generate(prompts, params, group_ids)

    def update_weights(self, named_tensors: Sequence[Tuple[str, torch.Tensor]]) -> int:
        """Load one bucket of ``(hf_name, full tensor)`` pairs; returns the bytes loaded."""
        self.engine.update_weights(iter(named_tensors))
        return int(sum(t.numel() * t.element_size() for _, t in named_tensors))

    def load_refit_bucket(self, path: str, buffer_bytes: int, entries: Sequence[Any], num_threads: int = 1) -> int:
        """Load one same-node refit bucket from the shared-memory file ``path``; returns the bytes loaded.

        Maps the file (kept mapped until :meth:`release_refit_buffers`, at most two files),
        and hands it to ``engine.load_shm_bucket`` (see :class:`~megatron_brrm.rollout.shm.BucketEntry`),
        with ``num_threads`` torch threads for the copy (restored afterwards).

        Raises:
            FileNotFoundError / ValueError: the buffer is missing or too small; KeyError /
            ValueError from the engine (unknown name, shape mismatch).
        """
        return load_bucket([self.engine], path, buffer_bytes, entries, num_threads)

    def release_refit_buffers(self) -> int:
        """Unmap the refit buffers this actor holds; returns how many."""
        return unmap_buffers()

    def share_refit_weights(self, names: Sequence[str], fresh: bool = False) -> Optional[dict]:
        """Move the engine's weights into shared memory so that policy ranks write them directly.

        See :class:`~megatron_brrm.workers.refit_shm.SharedModuleWeights`. Returns its
        ``info()``, or None when the engine has no CPU torch ``model`` holding every name
        (it then loads buckets through :meth:`load_refit_bucket`).
        """
        return share_engine_weights(self.engine, names, fresh=fresh)

    def seal_refit_weights(self, num_tensors: int, num_bytes: int) -> None:
        """After a direct refit of ``num_tensors`` tensors (``num_bytes`` bytes): remove the
        shared-weights file's name once the ranks have mapped it (memory stays mapped) and record
        the refit in the engine's ``last_update_stats``."""
        seal_engine_weights(self.engine, num_tensors, num_bytes)

    def last_update_stats(self) -> dict:
        """The engine's ``last_update_stats`` (tensors and bytes of its last weight update)."""
        return dict(self.engine.last_update_stats)

    def node_id(self) -> str:
        """The Ray node id of this actor's node (hex)."""
        return ray.get_runtime_context().get_node_id()

    def state_dict_cpu(self) -> dict:
        """``{name: CPU copy}`` of the engine model's parameters, for refit checks on small models.

        Raises:
            AttributeError: the engine has no torch ``model`` attribute (e.g. vLLM engines).
        """
        model = getattr(self.engine, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise AttributeError(f"{type(self.engine).__name__} has no torch 'model' attribute to read weights from")
        return {n: p.detach().cpu().clone() for n, p in model.named_parameters()}

    def sleep(self) -> None:
        """``engine.sleep()``."""
        self.engine.sleep()

    def wake(self, tags: Optional[List[str]] = None) -> None:
        """``engine.wake(tags)``."""
        self.engine.wake(tags)

    def shutdown(self) -> None:
        """``engine.shutdown()`` (stops e.g. vLLM's engine process before the actor exits)."""
        self.engine.shutdown()

    def call(self, method: str, *args, **kwargs) -> Any:
        """Call an engine-specific method (e.g. a vLLM worker-extension entry point)."""
        return getattr(self.engine, method)(*args, **kwargs)

    def placement_info(self) -> dict:
        """Engine index, bundle indices, ``CUDA_VISIBLE_DEVICES`` (as Ray set it) and process id."""
        return {"engine_index": int(os.environ.get("BRRM_ENGINE_INDEX", "-1")),
                "bundle_indices": [int(i) for i in os.environ.get("BRRM_ENGINE_BUNDLE_INDICES", "").split(",") if i],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}


class RemoteEngine(GenerationEngine):
    """Driver-side ``GenerationEngine`` backed by an :class:`EngineActor`.

    Args:
        handle: the Ray actor handle of an ``EngineActor``.
        index: engine number (named in errors).
        timeout_s: per-call timeout in seconds (None: none).
        bucket_bytes: ``update_weights`` sends the stream in buckets of at most this many
            bytes (a tensor larger than the bucket goes alone), one actor call per bucket.
        node: IP of the actor's node (named in errors).
        group: the name errors give the engine's group (``generation``; a judge environment's
            engine: ``reward_env``).
    """

    def __init__(self, handle, index: int = 0, timeout_s: Optional[float] = None, bucket_bytes: int = 512 << 20,
                 node: str = "?", group: str = "generation"):
        self.handle, self.index, self.timeout_s, self.bucket_bytes = handle, index, timeout_s, int(bucket_bytes)
        self.node, self.group = node, group
        self._tokenizer = None
        self._abilities = None

    def get(self, ref, method: str = "generate"):
        """``ray.get(ref)`` with this handle's timeout; failures become :class:`WorkerError` naming ``method``."""
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise WorkerError(self.group, self.index, method, f"timed out after {self.timeout_s:g} s",
                              self.node) from None
        except ray.exceptions.RayError as exc:
            cause, detail = describe_ray_error(exc)
            raise WorkerError(self.group, self.index, method, cause, self.node, detail) from exc

    @property
    def tokenizer(self):
        """The engine's tokenizer (fetched once)."""
        if self._tokenizer is None:
            self._tokenizer = self.get(self.handle.tokenizer.remote(), "tokenizer")
        return self._tokenizer

    @property
    def abilities(self) -> EngineAbilities:
        """The actor's engine's abilities (fetched once)."""
        if self._abilities is None:
            self._abilities = self.get(self.handle.abilities.remote(), "abilities")
        return self._abilities

    def score(self, sequences: List[List[int]]) -> List[List[float]]:
        """Forwarded to the actor; see ``GenerationEngine.score``."""
        return self.get(self.handle.score.remote([list(s) for s in sequences]), "score")

    def generate_async(self, prompts: List[List[int]], params: SamplingParams):
        """Start ``generate`` on the actor and return its ``ObjectRef`` at once (resolve with :meth:`get`),
        so that several engines generate concurrently."""
        return self.handle.generate.remote(prompts, params)

    def generate(self, prompts: List[List[int]], params: SamplingParams,
                 group_ids: Optional[Sequence[int]] = None) -> List[List[GenerationOutput]]:
        """Forwarded to the actor; see ``GenerationEngine.generate``."""
        return self.get(self.handle.generate.remote(prompts, params), "generate")

    def update_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Stream ``(hf_name, tensor)`` pairs to the actor in buckets of ``bucket_bytes`` that never
        split a fused module (:func:`~megatron_brrm.rollout.refit.iter_buckets`).

        At most one bucket is held in the driver at a time; the call for a bucket is
        awaited before the next bucket is filled.
        """
        for bucket in iter_buckets(named_tensors, self.bucket_bytes, group_key=fused_module_key):
            self.get(self.handle.update_weights.remote(bucket), "update_weights")

    def node_id(self) -> str:
        """Ray node id of the actor's node (asked once, then cached)."""
        cached = getattr(self, "_node_id", None)
        if cached is None:
            cached = self._node_id = self.get(self.handle.node_id.remote(), "node_id")
        return cached

    def load_refit_bucket_async(self, path: str, buffer_bytes: int, entries: Sequence[Any], num_threads: int = 1):
        """Start :meth:`EngineActor.load_refit_bucket` and return its ``ObjectRef`` (resolve with
        ``get(ref, "load_refit_bucket")``), so that several engines load a bucket concurrently."""
        return self.handle.load_refit_bucket.remote(path, buffer_bytes, list(entries), num_threads)

    def release_refit_buffers(self) -> int:
        """Unmap the actor's refit buffers (see :meth:`EngineActor.release_refit_buffers`)."""
        return self.get(self.handle.release_refit_buffers.remote(), "release_refit_buffers")

    def share_refit_weights(self, names: Sequence[str], fresh: bool = False) -> Optional[dict]:
        """See :meth:`EngineActor.share_refit_weights`."""
        return self.get(self.handle.share_refit_weights.remote(list(names), fresh), "share_refit_weights")

    def seal_refit_weights(self, num_tensors: int, num_bytes: int) -> None:
        """See :meth:`EngineActor.seal_refit_weights`."""
        self.get(self.handle.seal_refit_weights.remote(num_tensors, num_bytes), "seal_refit_weights")

    def sleep(self) -> None:
        """Forwarded to the actor."""
        self.get(self.handle.sleep.remote(), "sleep")

    def wake(self, tags: Optional[List[str]] = None) -> None:
        """Forwarded to the actor."""
        self.get(self.handle.wake.remote(tags), "wake")


def create_engine_actors(cluster, engine_factory: Callable[[], GenerationEngine], num_engines: Optional[int] = None,
                         env: Optional[dict] = None, timeout_s: Optional[float] = None,
                         ready_timeout_s: float = 600.0, bucket_bytes: Optional[int] = None) -> List[RemoteEngine]:
    """Start one :class:`EngineActor` per ``cluster.engine_placements`` entry (or the first ``num_engines``).

    Args:
        cluster: the :class:`megatron_brrm.workers.cluster.Cluster`.
        engine_factory: see :class:`EngineActor`.
        num_engines: how many engines (default: every engine placement).
        env: extra environment variables for the actors.
        timeout_s: per-call timeout of the returned :class:`RemoteEngine` handles.
        ready_timeout_s: seconds to wait for every engine's construction.
        bucket_bytes: refit bucket size of the handles (default ``rollout.refit_bucket_size_mb``).

    Returns:
        One :class:`RemoteEngine` per engine; ``.handle`` is the Ray actor (kill it with
        ``ray.kill`` or let ``cluster.shutdown()`` remove its placement group).

    Raises:
        ValueError: more engines than placements. WorkerError: an engine failed to build.
    """
    placements = cluster.engine_placements
    n = len(placements) if num_engines is None else num_engines
    if not 0 <= n <= len(placements):
        raise ValueError(f"create_engine_actors: {n} engine(s) asked, the cluster has {len(placements)} engine "
                         f"placement(s) ({cluster.describe()})")
    remote_cls = make_remote(EngineActor)
    handles = []
    for p in placements[:n]:
        actor_env = {"BRRM_ENGINE_INDEX": str(p.index), "OMP_NUM_THREADS": "1",
                     "BRRM_ENGINE_BUNDLE_INDICES": ",".join(str(i) for i in p.bundle_indices),
                     # vLLM on CPU binds every engine to core 0 unless told otherwise: spread them
                     "VLLM_CPU_OMP_THREADS_BIND": str(p.index % (os.cpu_count() or 1))}
        actor_env.update({k: str(v) for k, v in (env or {}).items()})
        opts = dict(p.actor.actor_options(), runtime_env=merge_runtime_env(remote_cls, actor_env))
        handles.append(remote_cls.options(**opts).remote(engine_factory))
    deadline = time.monotonic() + ready_timeout_s
    for i, h in enumerate(handles):
        try:
            ray.get(h.__ray_ready__.remote(), timeout=max(0.0, deadline - time.monotonic()))
        except ray.exceptions.RayError as exc:  # GetTimeoutError included
            for other in handles:
                ray.kill(other, no_restart=True)
            cause, detail = describe_ray_error(exc)
            raise WorkerError("generation", i, "__init__", cause, placements[i].actor.node_ip, detail) from exc
    bucket = cluster.refit_bucket_bytes if bucket_bytes is None else bucket_bytes
    return [RemoteEngine(h, i, timeout_s=timeout_s, bucket_bytes=bucket, node=p.actor.node_ip)
            for i, (h, p) in enumerate(zip(handles, placements))]
