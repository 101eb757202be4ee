"""The scalar reward head in the mapping registry and through the converters.

* registry: ``head="scalar"`` maps ``output_layer.weight`` ``[1, hidden]`` to HF ``score.weight``,
  TP-replicated, never tied (also for a tied causal LM), and is what a ``*ForSequenceClassification``
  config selects; ``num_labels != 1`` is refused;
* converters: an HF ``Qwen3ForSequenceClassification`` folder -> Megatron (converted for TP=2, PP=2) -> HF
  is bit-exact, writes the sequence-classification config (architectures, one label, pad token),
  and the result loads with ``AutoModelForSequenceClassification`` and scores like the original.
"""
from __future__ import annotations

import json

import pytest
import torch

from megatron_brrm.model.architectures import UnsupportedArchitectureError, config_head
from megatron_brrm.model.mapping import get_mapping
from megatron_brrm.parallel.launch import run_on_ranks

CFG = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 128,
       "vocab_size": 2048, "tie_word_embeddings": True}
SEQ_CLS = {**CFG, "architectures": ["Qwen3ForSequenceClassification"], "id2label": {"0": "LABEL_0"}}


def test_registry_scalar_head():
    lm = get_mapping(CFG)
    assert lm.head == "lm" and lm.tied and "output_layer.weight" not in lm.megatron_param_names()
    for m in (get_mapping(CFG, head="scalar"), get_mapping(SEQ_CLS)):
        assert m.head == "scalar" and not m.tied
        assert m.megatron_param_names()[-1] == "output_layer.weight"
        assert m.hf_names_for("output_layer.weight") == ["score.weight"]
        assert m.hf_param_names()[-1] == "score.weight" and "lm_head.weight" not in m.hf_param_names()
        assert m.full_shape("output_layer.weight") == (1, 64) and m.hf_shape("score.weight") == (1, 64)
        assert m.tp_split_axis("output_layer.weight") is None
        w = torch.randn(1, 64)
        assert all(torch.equal(m.shard("output_layer.weight", w, r, 2), w) for r in range(2))
        assert torch.equal(m.to_hf("output_layer.weight", w)["score.weight"], w)
    assert config_head(SEQ_CLS) == "scalar" and config_head(CFG) == "lm"
    with pytest.raises(UnsupportedArchitectureError, match=r"num_labels=3: only scalar reward models"):
        config_head({**SEQ_CLS, "id2label": {"0": "a", "1": "b", "2": "c"}})
    with pytest.raises(UnsupportedArchitectureError, match="num_labels=2"):  # transformers' default without id2label
        config_head({**SEQ_CLS, "id2label": None})


def _roundtrip(rank, world, src, root):
    from megatron_brrm.checkpoint.model_ckpt import convert_hf_to_megatron
    from megatron_brrm.checkpoint.model_export import convert_megatron_to_hf

    convert_hf_to_megatron(src, f"{root}/mg", tp=2, pp=2)
    convert_megatron_to_hf(f"{root}/mg", f"{root}/hf")
    return json.loads(open(f"{root}/mg/hf/config.json").read())


def test_sequence_classification_roundtrip_is_exact(tiny_reward_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    stored = run_on_ranks(_roundtrip, 1, args=(str(tiny_reward_dir), str(tmp_path)), timeout_s=300,
                          env={"OMP_NUM_THREADS": "1"})[0]
    assert stored["architectures"] == ["Qwen3ForSequenceClassification"]
    src = load_file(str(tiny_reward_dir / "model.safetensors"))
    out = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert set(src) == set(out) and "score.weight" in out
    assert all(torch.equal(src[k], out[k]) for k in src)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3ForSequenceClassification"] and cfg["id2label"] == {"0": "LABEL_0"}
    assert cfg["pad_token_id"] == json.loads((tiny_reward_dir / "config.json").read_text())["pad_token_id"]
    a = AutoModelForSequenceClassification.from_pretrained(tiny_reward_dir, dtype=torch.float32)
    b = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    ids = torch.randint(3, 2000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)
