"""make_remote / EngineActor without a Ray cluster: the plain classes stay plain and the
engine host forwards every call to the engine built by its factory."""
from __future__ import annotations

import functools

import pytest
import ray
import torch

from megatron_brrm.rollout.engine import EngineAbilities, GenerationEngine, GenerationOutput, SamplingParams
from megatron_brrm.workers.actors import EngineActor
from megatron_brrm.workers.remote import as_actor_class, impl_class, make_remote, merge_runtime_env


class ScriptedEngine(GenerationEngine):
    """Deterministic stand-in: sample j of prompt p is ``reversed(p) + [j]``; weights live in a dict."""

    def __init__(self, tag: str = "scripted"):
        self.tag, self.weights, self.asleep, self.loads = tag, {}, False, 0

    @property
    def tokenizer(self):
        return {"name": self.tag}

    @property
    def abilities(self):
        return EngineAbilities(eos_token_ids=frozenset([7]), supports_sleep=True)

    def generate(self, prompts, params, group_ids=None):
        if self.asleep:
            raise RuntimeError("generate called while asleep")
        return [[GenerationOutput(list(reversed(p)) + [j], f"{self.tag}:{j}", [-0.5] * (len(p) + 1), "stop")
                 for j in range(params.n)] for p in prompts]

    def update_weights(self, named_tensors):
        self.loads += 1
        for name, tensor in named_tensors:
            if not name.startswith("model."):
                raise KeyError(f"unknown parameter {name}")
            self.weights[name] = tensor.clone()

    def sleep(self):
        self.asleep = True

    def wake(self, tags=None):
        self.asleep = False

    def state(self):
        return {"weights": self.weights, "asleep": self.asleep, "loads": self.loads}


class Counter:
    def __init__(self, start: int = 0):
        self.value = start

    def add(self, k: int) -> int:
        self.value += k
        return self.value


def test_make_remote_wraps_without_changing_the_plain_class():
    remote = make_remote(Counter, num_cpus=0.5)
    assert isinstance(remote, ray.actor.ActorClass)
    assert impl_class(remote) is Counter and impl_class(Counter) is Counter
    assert as_actor_class(remote) is remote
    c = Counter(2)  # the Impl class is still an ordinary class, usable in-process
    assert c.add(3) == 5 and not hasattr(Counter, "remote")
    with pytest.raises(TypeError, match="already a Ray actor class"):
        make_remote(remote)
    with pytest.raises(TypeError, match="expected a class"):
        make_remote(c)


def test_rank_env_is_merged_into_the_class_runtime_env():
    # .options(runtime_env=...) replaces a class's runtime_env in Ray; the group merges instead.
    remote = make_remote(Counter, runtime_env={"env_vars": {"A": "1", "B": "0"}})
    assert merge_runtime_env(remote, {"B": "2", "RANK": "0"}) == {"env_vars": {"A": "1", "B": "2", "RANK": "0"}}
    assert merge_runtime_env(make_remote(Counter), {"RANK": "1"}) == {"env_vars": {"RANK": "1"}}


def test_engine_actor_forwards_to_the_factory_engine():
    host = EngineActor(functools.partial(ScriptedEngine, "t"))
    out = host.generate([[1, 2, 3], [4]], SamplingParams(n=2))
    assert [[o.token_ids for o in row] for row in out] == [[[3, 2, 1, 0], [3, 2, 1, 1]], [[4, 0], [4, 1]]]
    assert host.tokenizer() == {"name": "t"}
    w = torch.arange(6, dtype=torch.float32)
    assert host.update_weights([("model.w", w)]) == 24  # 6 float32 values = 24 bytes
    assert torch.equal(host.call("state")["weights"]["model.w"], w)
    host.sleep()
    assert host.call("state")["asleep"]
    host.wake()
    assert not host.call("state")["asleep"]
    with pytest.raises(TypeError, match="returned dict, not a megatron_brrm.rollout.engine.GenerationEngine"):
        EngineActor(dict)
