"""VLLMEngine without vLLM: the clear error, its pure helpers, and its refit/generate plumbing driven
through a fake ``LLM`` that runs the real worker extension in-process; and the engine factory.
The real engine (vllm-cpu) is tested in ``test_vllm_cpu.py``."""
from __future__ import annotations

import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch

from megatron_brrm.config import RolloutConfig
from megatron_brrm.rollout import vllm_engine as V
from megatron_brrm.rollout.engine import SamplingParams
from megatron_brrm.rollout.factory import make_engine
from megatron_brrm.rollout.hf_engine import HFEngine
from megatron_brrm.rollout.sampling import derive_sample_seed
from megatron_brrm.rollout.vllm_worker import WORKER_EXTENSION_CLS, BRRMWorkerExtension
from megatron_brrm.checkpoint.hf_io import HFSafetensorsReader

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def tok(tiny_qwen3_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen3_dir)


def test_missing_vllm_is_a_clear_error(tiny_qwen3_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # what a venv without vLLM sees: import vllm fails
    for build in (lambda: V.VLLMEngine(str(tiny_qwen3_dir)),
                  lambda: make_engine(RolloutConfig(engine="vllm"), str(tiny_qwen3_dir))):
        with pytest.raises(RuntimeError) as err:
            build()
        msg = str(err.value)
        assert "pip install -e .[gpu]" in msg and "tools/install_vllm_cpu.sh" in msg and "rollout.engine=hf" in msg


def test_factory_names(tiny_qwen3_dir):
    eng = make_engine(RolloutConfig(engine="hf", device="cpu", dtype="fp32", max_batch_size=4), str(tiny_qwen3_dir))
    assert isinstance(eng, HFEngine) and eng.max_batch_size == 4 and eng.model.dtype == torch.float32
    with pytest.raises(ValueError, match=r"rollout.engine='sglang'.*\['hf', 'vllm'\]"):
        make_engine(RolloutConfig(engine="sglang"), str(tiny_qwen3_dir))
    with pytest.raises(ValueError, match="rollout.dtype"):
        make_engine(RolloutConfig(engine="hf", dtype="int4"), str(tiny_qwen3_dir))


# ---------------------------------------------------------------- fake vLLM objects
def fake_request(token_ids, finish="stop", logprobs=None):
    lp = None if logprobs is None else [{t: SimpleNamespace(logprob=v), t + 1: SimpleNamespace(logprob=-99.0)}
                                        for t, v in zip(token_ids, logprobs)]
    return SimpleNamespace(outputs=[SimpleNamespace(token_ids=token_ids, logprobs=lp, finish_reason=finish,
                                                    text="vLLM text without specials")])


def test_convert_request_outputs(tok):
    eos = tok.eos_token_id
    reqs = [fake_request([10, 11, eos], "stop", [-0.1, -0.2, -0.3]), fake_request([12], "length", [-1.5]),
            fake_request([13, 14], "stop", [-0.4, -0.5]), fake_request([15], "length", [-2.5])]
    out = V.convert_request_outputs(reqs, tok, n=2, want_logprobs=True)
    assert [[o.token_ids for o in r] for r in out] == [[[10, 11, eos], [12]], [[13, 14], [15]]]
    assert out[0][0].logprobs == [-0.1, -0.2, -0.3] and out[1][1].logprobs == [-2.5]
    assert out[0][0].text == tok.decode([10, 11, eos], skip_special_tokens=False) and out[0][0].text.endswith("<|im_end|>")
    assert [o.finish_reason for r in out for o in r] == ["stop", "length", "stop", "length"]
    with pytest.raises(RuntimeError, match="finish_reason='abort'"):
        V.convert_request_outputs([fake_request([1], "abort", [-1.0])], tok, 1, True)
    with pytest.raises(RuntimeError, match="misaligned"):
        V.convert_request_outputs([fake_request([1, 2], "stop", [-1.0])], tok, 1, True)
    with pytest.raises(RuntimeError, match="not a multiple"):
        V.convert_request_outputs(reqs[:3], tok, 2, True)


def test_eos_ids_from_generation_config(tok):
    assert V.eos_ids_of({"eos_token_id": [5, 9]}, tok) == {5, 9, tok.eos_token_id}
    assert V.eos_ids_of({"eos_token_id": 4}, tok) == {4, tok.eos_token_id}
    assert V.eos_ids_of({}, tok) == {tok.eos_token_id}


class RecordingRunner:
    """Stands in for vLLM's model runner: records what ``reload_weights`` receives (copies)."""

    def __init__(self):
        self.reloads = []

    def reload_weights(self, weights_iterator, is_checkpoint_format):
        assert is_checkpoint_format
        self.reloads.append([(n, t.clone()) for n, t in weights_iterator])

    def get_model(self):
        return SimpleNamespace(packed_modules_mapping={"qkv_proj": ["q_proj", "k_proj", "v_proj"],
                                                       "gate_up_proj": ["gate_proj", "up_proj"]})


class FakeLLM:
    """``collective_rpc`` runs the real worker extension in this process, on a recording runner; its
    arguments are pickled first, as a multiprocess vLLM engine does (a tensor among them fails)."""

    def __init__(self):
        self.rpcs, self.resets, self.generated = [], 0, None
        self.worker = BRRMWorkerExtension()
        self.worker.device = torch.device("cpu")
        self.worker.model_runner = RecordingRunner()

    def collective_rpc(self, method, args=()):
        import pickle

        args = pickle.loads(pickle.dumps(args))
        self.rpcs.append((method, args))
        return [getattr(self.worker, method)(*args)]

    def reset_prefix_cache(self):
        self.resets += 1

    def generate(self, requests, sampling_params, use_tqdm=False):
        self.generated = (requests, sampling_params)
        return [fake_request([7, 8], "stop", [-0.5, -0.6]) for _ in requests]


def bare_engine(tok, model_dir, tied=False, bucket=1 << 20):
    import functools

    from megatron_brrm.rollout.engine import EngineAbilities
    from megatron_brrm.rollout.refit import fused_module_key

    eng = V.VLLMEngine.__new__(V.VLLMEngine)  # skip the vLLM constructor; plumbing only
    eng.llm, eng._tokenizer, eng.refit_bucket_bytes = FakeLLM(), tok, bucket
    eng.manifest, eng.tied_embeddings = HFSafetensorsReader(model_dir).shapes(), tied
    eng._vllm = SimpleNamespace(SamplingParams=lambda **kw: SimpleNamespace(**kw))
    eng._weights_dirty, eng.last_update_stats = False, {}
    eng.packed_modules = {k: tuple(v) for k, v in eng.llm.collective_rpc("brrm_packed_modules")[0].items()}
    eng.module_key = functools.partial(fused_module_key, packed=eng.packed_modules)
    eng._abilities = EngineAbilities(eos_token_ids=frozenset([tok.eos_token_id]))
    return eng


def test_vllm_update_weights_sends_descriptors_not_tensors(tok, tiny_qwen3_dir):
    """Buckets reach the workers as shared-memory descriptors (the RPC arguments pickle), hold whole
    fused modules, and the workers' reload sees exactly the tensors sent; the prefix cache is reset
    once before the next generation however many buckets the refit had."""
    from safetensors.torch import load_file

    state = load_file(str(tiny_qwen3_dir / "model.safetensors"))
    eng = bare_engine(tok, tiny_qwen3_dir, bucket=8 * 1024)  # below one layer's q+k+v (16 KiB)
    eng.update_weights(iter(state.items()))
    loads = [a[0] for m, a in eng.llm.rpcs if m == "brrm_load_bucket"]
    assert len(loads) > 3 and all(d["kind"] == "shm" for d in loads)
    reloads = eng.llm.worker.model_runner.reloads
    assert sorted(n for r in reloads for n, _ in r) == sorted(state)  # the state dict is alphabetical: k before q
    assert all(torch.equal(t, state[n]) for r in reloads for n, t in r)
    for r in reloads:  # every call holds whole fused modules
        assert V.missing_fused_members([n for n, _ in r]) == {}
    qkv = next(r for r in reloads if "model.layers.0.self_attn.q_proj.weight" in dict(r))
    assert {"model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight"} <= set(dict(qkv))
    assert not any(os.path.exists(d["path"]) for d in loads)  # the bucket files are gone
    assert eng.last_update_stats == {"tensors": len(state), "bytes": sum(t.numel() * 4 for t in state.values())}
    assert eng.llm.resets == 0
    eng.generate([[1, 2]], SamplingParams(max_new_tokens=2))
    eng.generate([[1, 2]], SamplingParams(max_new_tokens=2))
    assert eng.llm.resets == 1
    with pytest.raises(KeyError, match="model.layers.7.mlp.up_proj.weight"):
        eng.update_weights([("model.layers.7.mlp.up_proj.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="shape mismatch for 'model.norm.weight'"):
        eng.update_weights([("model.norm.weight", torch.zeros(5))])
    q = "model.layers.0.self_attn.q_proj.weight"
    with pytest.raises(ValueError, match=r"fused module model.layers.0.self_attn.qkv_proj incomplete.*k_proj"):
        eng.update_weights([(q, state[q])])  # a caller that split q from k/v is refused, not corrupted
    tied = bare_engine(tok, tiny_qwen3_dir, tied=True)
    tied.update_weights([("lm_head.weight", torch.zeros(1)), ("model.norm.weight", torch.zeros(64))])
    assert [n for n, _ in tied.llm.worker.model_runner.reloads[0]] == ["model.norm.weight"]  # the tied alias is dropped


def test_vllm_load_shm_bucket_forwards_the_file(tok, tiny_qwen3_dir):
    """A bucket the policy ranks already wrote is handed over by path: the engine process never copies it."""
    from safetensors.torch import load_file

    from megatron_brrm.rollout.shm import SharedBuffers, layout_entries, map_buffer, pack_bucket, unmap_buffers

    state = load_file(str(tiny_qwen3_dir / "model.safetensors"))
    names = [n for n in state if n.startswith("model.layers.1.")]
    entries = layout_entries((n, state[n].shape, "float32") for n in names)
    eng = bare_engine(tok, tiny_qwen3_dir)
    with SharedBuffers(entries[-1].end, count=1) as files:
        pack_bucket(map_buffer(files.paths[0], entries[-1].end), [(n, state[n]) for n in names], entries)
        assert eng.load_shm_bucket(files.paths[0], entries[-1].end, entries) == sum(state[n].numel() * 4 for n in names)
        descriptor = eng.llm.rpcs[-1][1][0]
        assert descriptor["path"] == files.paths[0] and descriptor["kind"] == "shm"
        with pytest.raises(ValueError, match="fused module model.layers.1.mlp.gate_up_proj"):
            eng.load_shm_bucket(files.paths[0], entries[-1].end, [e for e in entries if "gate_proj" not in e.hf_name])
    unmap_buffers()
    got = dict(eng.llm.worker.model_runner.reloads[0])
    assert list(got) == names and all(torch.equal(got[n], state[n]) for n in names)


def test_vllm_generate_requests_one_seeded_request_per_sample(tok, tiny_qwen3_dir):
    eng = bare_engine(tok, tiny_qwen3_dir)
    prompts = [[1, 2, 3], [4, 5]]
    out = eng.generate(prompts, SamplingParams(n=3, temperature=0.9, top_p=0.8, max_new_tokens=9,
                                               stop=["[The End of Ranking Score]"], seed=4))
    requests, sps = eng.llm.generated
    assert [r["prompt_token_ids"] for r in requests] == [[1, 2, 3]] * 3 + [[4, 5]] * 3
    assert [sp.seed for sp in sps] == [derive_sample_seed(4, p, j) for p in prompts for j in range(3)]
    sp = sps[0]
    assert (sp.n, sp.temperature, sp.top_p, sp.max_tokens, sp.logprobs, sp.include_stop_str_in_output) == \
        (1, 0.9, 0.8, 9, 0, True)
    assert sp.stop == ["[The End of Ranking Score]"]
    assert [len(r) for r in out] == [3, 3] and out[1][2].logprobs == [-0.5, -0.6]


def test_worker_extension_rejects_unknown_descriptors():
    worker = BRRMWorkerExtension()
    worker.device = torch.device("cpu")
    worker.model_runner = RecordingRunner()
    with pytest.raises(ValueError, match="unknown bucket descriptor kind 'tcp'"):
        worker.brrm_load_bucket({"kind": "tcp", "nbytes": 0, "entries": []})
    assert worker.brrm_packed_modules()["qkv_proj"] == ["q_proj", "k_proj", "v_proj"]
    assert WORKER_EXTENSION_CLS == "megatron_brrm.rollout.vllm_worker.BRRMWorkerExtension"


def test_vllm_auto_dtype_is_the_checkpoints(tiny_qwen3_dir, tmp_path):
    """vLLM's own "auto" would run an fp32 checkpoint in half precision; rollout.dtype=auto means the
    checkpoint's declared dtype."""
    import json

    from megatron_brrm.rollout.factory import checkpoint_dtype

    assert json.loads((tiny_qwen3_dir / "config.json").read_text())["dtype"] == "float32"
    assert checkpoint_dtype(str(tiny_qwen3_dir)) == "float32"
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert checkpoint_dtype(str(tmp_path)) == "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps({}))
    assert checkpoint_dtype(str(tmp_path)) == "auto" and checkpoint_dtype("Qwen/Qwen3-8B") == "auto"
