"""tools/quantize.py on a tiny judge: FP8, INT8 (SmoothQuant) and INT4-AWQ exports that load with
their quantisation config, and whose judge outputs still parse.

The judge is the tiny Qwen3 fixture after a short in-process SFT on format-correct BR-RM traces
(short templates, labelled verdicts), so that its greedy outputs are well-formed verdicts before
quantisation; the tool then reports them again for the quantised export, rebuilt from its stored
low-precision weights and scales.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("modelopt", reason="nvidia-modelopt is in the test extra (pip install -e .[test])")

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tools"))
TEMPLATES = str(REPO_ROOT / "model_configs" / "templates" / "brrm_short")


def _traces(protocol, pairs):
    from megatron_brrm.judge import DIMENSIONS

    out = []
    for p in pairs:
        m = list(protocol.turn1_messages(p.context, p.response1, p.response2))
        m.append({"role": "assistant", "content": protocol.format_turn_output(
            0, preference=p.preference, dimensions=[DIMENSIONS[0]], analysis1="None.", analysis2="None.")})
        m.append(protocol.followup_message(1))
        m.append({"role": "assistant", "content": protocol.format_turn_output(
            1, preference=p.preference, analysis1="Checked.", analysis2="Checked.")})
        out.append(m)
    return out


@pytest.fixture(scope="module")
def judge(tmp_path_factory, tiny_qwen3_dir):
    """(folder of a tiny judge that emits well-formed verdicts, pairs JSONL)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_brrm.data.io import write_pairs
    from megatron_brrm.data.synthetic import marker_task
    from megatron_brrm.judge import get_protocol
    from megatron_brrm.rollout.traces import tokenize_trace

    root = tmp_path_factory.mktemp("quantize")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32)
    protocol = get_protocol("brrm", TEMPLATES)
    pairs = marker_task(16, seed=1, split="train", signal="hint", num_filler_words=0)
    data = [tokenize_trace(tok, t, tok.eos_token_id) for t in _traces(protocol, pairs)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    width = max(len(i) for i, _ in data)  # one padded shape: CPU kernels are not re-planned every step
    # measured: greedy outputs well-formed on 4 of 4 held-out pairs after 120 steps (loss ~0.01), 0-1 of 4
    # after 60-90 steps
    for step in range(120):
        batch = random.Random(step).sample(data, 4)
        ids = torch.tensor([i + [0] * (width - len(i)) for i, _ in batch])
        mask = torch.tensor([m + [0] * (width - len(m)) for _, m in batch], dtype=torch.float32)[:, 1:]
        logp = torch.log_softmax(model(ids).logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        loss = -(logp * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    folder = root / "judge_hf"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    data_path = root / "pairs.jsonl"
    write_pairs(data_path, pairs + marker_task(4, seed=2, split="val", signal="hint", num_filler_words=0,
                                               both_orders=False))
    return folder, data_path


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fmt, algo, weight_dtype", [("fp8", "FP8", torch.float8_e4m3fn),
                                                     ("int8", "W8A8_SQ_PER_CHANNEL", torch.int8),
                                                     ("int4_awq", "W4A16_AWQ", torch.uint8)])
def test_export_loads_with_its_quantization_config_and_judges(tmp_path, judge, fmt, algo, weight_dtype):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    import quantize as tool
    from megatron_brrm.checkpoint.quantized_hf import load_quantized_hf

    folder, data = judge
    out = tmp_path / f"judge-{fmt}"
    # the tiny model's layer inputs are 64 and 128 wide: INT4 groups of 64
    argv = ["--model", str(folder), "--output", str(out), "--format", fmt, "--calib-data", str(data),
            "--calib-size", "16", "--check-pairs", "4", "--max-new-tokens", "96", "--template-dir", TEMPLATES,
            "--awq-block-size", "64"]
    assert tool.main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "modelopt" and cfg["quantization_config"]["quant_algo"] == algo
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()
    stored = load_file(str(out / "model.safetensors"))
    q = "model.layers.0.self_attn.q_proj"
    assert stored[f"{q}.weight"].dtype == weight_dtype and f"{q}.weight_scale" in stored
    assert stored["model.embed_tokens.weight"].dtype == torch.float32  # excluded layers stay as they were

    loaded, info = load_quantized_hf(out)
    # 2 layers x 7 linear layers (q, k, v, o, gate, up, down); lm_head and embeddings excluded
    assert info.quant_algo == algo and len(info.layers) == 14 and "lm_head" not in info.layers
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    w, wq = ref.get_parameter(f"{q}.weight"), loaded.get_parameter(f"{q}.weight")
    if fmt == "fp8":
        # per-tensor scale s = amax / 448; E4M3 rounding errs by <= 2^-4 relative (+ s * 2^-10 near zero)
        s = float(stored[f"{q}.weight_scale"])
        assert s == pytest.approx(float(w.abs().max()) / 448, rel=1e-6)
        assert bool(((wq - w).abs() <= w.abs() / 16 + s * 2 ** -10).all())
    elif fmt == "int4_awq":
        # AWQ folds q_proj's smoothing into input_layernorm, so the layer pair computes the same function:
        # compare norm weight x W column-wise; 4-bit groups of 64: error <= half a step of the group's scale
        ln_ref = ref.get_parameter("model.layers.0.input_layernorm.weight")
        ln_q = loaded.get_parameter("model.layers.0.input_layernorm.weight")
        eff_ref, eff_q = w * ln_ref[None, :], wq * ln_q[None, :]
        step = stored[f"{q}.weight_scale"].repeat_interleave(64, dim=1) * ln_q[None, :].abs()
        assert bool(((eff_q - eff_ref).abs() <= step * 0.5 + 1e-6).all())
    report = json.loads((out / "quantization_report.json").read_text())
    check = report["judge_check"]
    assert check["pairs"] == 4 and check["well_formed_original"] >= 0.75, check
    # the quantised judge's outputs still parse into verdicts
    assert check["well_formed_quantized"] >= 0.75, check
    assert report["weights_bytes_quantized"] < report["weights_bytes_original"]


def test_bad_inputs_are_named(tmp_path, judge, capsys):
    import quantize as tool

    folder, data = judge
    base = ["--model", str(folder), "--calib-data", str(data), "--check-pairs", "0", "--template-dir", TEMPLATES]
    assert tool.main(base + ["--output", str(tmp_path / "a"), "--format", "int4_awq", "--awq-block-size", "48"]) == 2
    assert "--awq-block-size 48 does not divide the input dimension 64 of model.layers.0.self_attn.q_proj" \
        in capsys.readouterr().err
    assert tool.main(base + ["--output", str(tmp_path / "b"), "--format", "fp8", "--max-prompt-tokens", "5"]) == 2
    assert "no pair's judge prompt fits --max-prompt-tokens 5" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    assert tool.main(base + ["--output", str(tmp_path / "c"), "--format", "fp8"]) == 2
    assert "already exists" in capsys.readouterr().err
