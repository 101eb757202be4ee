"""Plain classes as Ray actors: the wrapper, the class behind a wrapper, and runtime environments.

NeMo-RL keeps its workers as plain classes and makes them Ray actors with a thin
``@ray.remote`` wrapper, because Ray-decorated classes cannot be subclassed or called
in-process; :func:`make_remote` does that wrapping here, so the plain class stays usable (and
testable) without Ray. Torch-free.
"""
from __future__ import annotations

from typing import Any, Dict

import ray


def make_remote(cls: type, num_cpus: float = 1, num_gpus: float = 0, **options) -> Any:
    """A Ray actor class for the plain class ``cls`` (``cls`` itself is left unchanged).

    Args:
        cls: a plain Python class (not already ``@ray.remote``).
        num_cpus, num_gpus: default resources per actor (a WorkerGroup overrides them with
            its placement's share).
        **options: other ``ray.remote`` options (``max_concurrency``, ``runtime_env``, ...).

    Returns:
        A Ray ``ActorClass``; create actors with ``.remote(...)`` or ``.options(...).remote(...)``.

    Raises:
        TypeError: ``cls`` is not a class or is already a Ray actor class.
    """
    if isinstance(cls, ray.actor.ActorClass):
        raise TypeError(f"make_remote: {impl_class(cls).__name__} is already a Ray actor class")
    if not isinstance(cls, type):
        raise TypeError(f"make_remote: expected a class, got {type(cls).__name__}")
    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0, max_task_retries=0, **options)(cls)


def impl_class(actor_cls: Any) -> type:
    """The plain class behind ``actor_cls`` (a plain class or a Ray actor class)."""
    if isinstance(actor_cls, ray.actor.ActorClass):
        modified = actor_cls.__ray_metadata__.modified_class
        return getattr(modified, "__ray_actor_class__", modified)
    return actor_cls


def as_actor_class(actor_cls: Any) -> Any:
    """``actor_cls`` as a Ray actor class (plain classes are wrapped with :func:`make_remote`)."""
    return actor_cls if isinstance(actor_cls, ray.actor.ActorClass) else make_remote(actor_cls)


def merge_runtime_env(remote_cls: Any, env_vars: Dict[str, str]) -> dict:
    """The actor class's own ``runtime_env`` (from ``ray.remote(runtime_env=...)``) plus ``env_vars``.

    ``.options(runtime_env=...)`` replaces the class default rather than merging (Ray 2.x), so
    a class's pip/py_executable/env settings would be lost without this.
    """
    default = dict(getattr(remote_cls, "_default_options", {}).get("runtime_env") or {})
    default["env_vars"] = {**(default.get("env_vars") or {}), **env_vars}
    return default
