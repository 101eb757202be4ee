"""VLLMEngine without vLLM: the clear error, its pure helpers, and its refit/generate plumbing
driven through fake vLLM objects; and the engine factory."""
from __future__ import annotations

import importlib.util
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
from megatron_brrm.rollout.weights import hf_checkpoint_manifest

HAS_VLLM = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


@pytest.fixture(scope="module")
def tok(tiny_qwen3_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen3_dir)


def test_missing_vllm_is_a_clear_error(tiny_qwen3_dir):
    if HAS_VLLM:  # on a GPU machine with vLLM the engine must construct instead
        assert V._import_vllm() is not None
        return
    for build in (lambda: V.VLLMEngine(str(tiny_qwen3_dir)),
                  lambda: make_engine(RolloutConfig(engine="vllm"), str(tiny_qwen3_dir))):
        with pytest.raises(RuntimeError) as err:
            build()
        msg = str(err.value)
        assert "pip install -e .[gpu]" in msg and "rollout.engine=hf" in msg


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


def test_iter_buckets_bounds_and_order():
    stream = [(f"t{i}", torch.zeros(n, dtype=torch.float32)) for i, n in enumerate([10, 10, 30, 100, 5, 5, 5])]
    buckets = list(V.iter_buckets(iter(stream), bucket_bytes=160))
    assert [[n for n, _ in b] for b in buckets] == [["t0", "t1"], ["t2"], ["t3"], ["t4", "t5", "t6"]]
    for b in buckets:  # each bucket <= bound unless it is a single larger tensor
        assert len(b) == 1 or sum(t.numel() * 4 for _, t in b) <= 160


def test_eos_ids_from_generation_config(tok):
    assert V.eos_ids_of({"eos_token_id": [5, 9]}, tok) == {5, 9, tok.eos_token_id}
    assert V.eos_ids_of({"eos_token_id": 4}, tok) == {4, tok.eos_token_id}
    assert V.eos_ids_of({}, tok) == {tok.eos_token_id}


def test_manifest_reads_safetensors_headers(tiny_qwen3_dir):
    from safetensors.torch import load_file

    manifest = hf_checkpoint_manifest(tiny_qwen3_dir)
    ref = {k: tuple(v.shape) for k, v in load_file(str(tiny_qwen3_dir / "model.safetensors")).items()}
    assert manifest == ref and "model.layers.1.self_attn.q_norm.weight" in manifest
    with pytest.raises(FileNotFoundError, match="safetensors"):
        hf_checkpoint_manifest(tiny_qwen3_dir / "nonexistent")


class FakeLLM:
    def __init__(self):
        self.rpcs, self.resets, self.generated = [], 0, None

    def collective_rpc(self, method, args=()):
        self.rpcs.append((method, args))
        return [True]

    def reset_prefix_cache(self):
        self.resets += 1

    def generate(self, requests, sampling_params, use_tqdm=False):
        self.generated = (requests, sampling_params)
        return [fake_request([7, 8], "stop", [-0.5, -0.6]) for _ in requests]


def bare_engine(tok, model_dir, tied=False, bucket=1 << 20):
    eng = V.VLLMEngine.__new__(V.VLLMEngine)  # skip the vLLM constructor; plumbing only
    eng.llm, eng._tokenizer, eng.refit_bucket_bytes = FakeLLM(), tok, bucket
    eng.manifest, eng.tied_embeddings, eng._processed_logprobs = hf_checkpoint_manifest(model_dir), tied, True
    eng._vllm = SimpleNamespace(SamplingParams=lambda **kw: SimpleNamespace(**kw))
    eng._weights_dirty = False
    return eng


def test_vllm_update_weights_plumbing(tok, tiny_qwen3_dir):
    from safetensors.torch import load_file

    state = load_file(str(tiny_qwen3_dir / "model.safetensors"))
    eng = bare_engine(tok, tiny_qwen3_dir, bucket=64 * 2048 * 4)  # one embedding matrix per bucket
    items = list(state.items())
    eng.update_weights(iter(items[:5]))  # a bucketed refit: several calls, finalised once before generating
    eng.update_weights(iter(items[5:]))
    assert "brrm_finish_weight_update" not in [m for m, _ in eng.llm.rpcs] and eng.llm.resets == 0
    eng.generate([[1, 2]], SamplingParams(max_new_tokens=2))
    eng.generate([[1, 2]], SamplingParams(max_new_tokens=2))
    assert [m for m, _ in eng.llm.rpcs].count("brrm_finish_weight_update") == 1 and eng.llm.resets == 1
    loads = [a[0] for m, a in eng.llm.rpcs if m == "brrm_load_weights"]
    sent = [n for bucket in loads for n, _ in bucket]
    assert sent == list(state) and len(loads) > 1
    assert all(t.device.type == "cpu" for bucket in loads for _, t in bucket)
    assert eng.last_update_stats["tensors"] == len(state) - 5
    with pytest.raises(KeyError, match="model.layers.7.mlp.up_proj.weight"):
        eng.update_weights([("model.layers.7.mlp.up_proj.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="shape mismatch for 'model.norm.weight'"):
        eng.update_weights([("model.norm.weight", torch.zeros(5))])
    tied = bare_engine(tok, tiny_qwen3_dir, tied=True)
    tied.update_weights([("lm_head.weight", torch.zeros(1)), ("model.norm.weight", torch.zeros(64))])
    assert [n for n, _ in tied.llm.rpcs[0][1][0]] == ["model.norm.weight"]  # the tied alias is dropped


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


def test_worker_extension_loads_on_device():
    calls = []
    worker = BRRMWorkerExtension()
    worker.device = torch.device("cpu")
    worker.model_runner = SimpleNamespace(model=SimpleNamespace(load_weights=lambda weights: calls.append(list(weights))))
    assert worker.brrm_load_weights([("a", torch.ones(2)), ("b", torch.zeros(3))]) == 2
    assert [n for n, _ in calls[0]] == ["a", "b"] and torch.equal(calls[0][0][1], torch.ones(2))
    assert WORKER_EXTENSION_CLS == "megatron_brrm.rollout.vllm_worker.BRRMWorkerExtension"
