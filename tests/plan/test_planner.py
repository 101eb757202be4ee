"""The pre-submit planner: layout rules, memory against hand-computed values, the CLI's exit codes,
and the launchers' #SBATCH lines checked against their recipes.

Every expected number below is derived by hand from the models' config.json values (written
out in the comments), never by the code under test.
"""
from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from megatron_brrm.config import load_config
from megatron_brrm.plan.cli import main as plan_main
from megatron_brrm.plan.layout import LayoutError, plan_layout
from megatron_brrm.plan.memory import engine_memory, lifecycle_phases, training_memory
from megatron_brrm.plan.sbatch import check_sbatch, parse_sbatch, parse_time
from megatron_brrm.plan.shapes import ShapeError, resolve_shape

REPO_ROOT = Path(__file__).resolve().parents[2]
R8B = REPO_ROOT / "model_configs" / "qwen3_8b.yaml"
R14B = REPO_ROOT / "model_configs" / "qwen3_14b_tp4pp2.yaml"
RTINY = REPO_ROOT / "model_configs" / "tiny_cpu.yaml"
GIB = 2 ** 30


def _plan(recipe, overrides=(), nodes=1, gpus=8):
    cfg = load_config(recipe, list(overrides))
    shape = resolve_shape(cfg.model)
    return cfg, shape, plan_layout(cfg, shape, nodes=nodes, gpus_per_node=gpus)


# ----------------------------------------------------------------------------- shapes
def test_parameter_counts_match_the_published_sizes():
    # Qwen3-8B, per layer: qkv 4096 x (32*128 + 2*8*128) = 4096 x 6144 = 25,165,824; proj 4096 x 4096 =
    # 16,777,216; fc1 4096 x 2*12288 = 100,663,296; fc2 12288 x 4096 = 50,331,648 -> 192,937,984 split
    # by TP, + norms 2*4096 + q/k norms 2*128 = 8,448. 36 layers + embedding and output 2 x 151936 x
    # 4096 = 1,244,659,712 + final norm 4096 = 8,190,735,360 (Qwen's "8.2B").
    s8 = resolve_shape(load_config(R8B).model)
    assert (s8.layer_split_params, s8.layer_replicated_params) == (192_937_984, 8_448)
    assert s8.num_params() == 36 * (192_937_984 + 8_448) + 2 * 151_936 * 4096 + 4096 == 8_190_735_360
    # Qwen3-14B: qkv 5120 x (40*128 + 2*8*128) = 36,700,160; proj 26,214,400; fc1 5120 x 34816 =
    # 178,257,920; fc2 17408 x 5120 = 89,128,960 -> 330,301,440; norms 2*5120 + 256 = 10,496.
    # 40 layers + 2 x 151936 x 5120 + 5120 = 14,768,307,200 ("14.8B").
    s14 = resolve_shape(load_config(R14B).model)
    assert (s14.layer_split_params, s14.layer_replicated_params) == (330_301_440, 10_496)
    assert s14.num_params() == 14_768_307_200


def test_shape_sources(tmp_path, tiny_qwen3_dir):
    cfg = load_config(RTINY)
    tiny = resolve_shape(cfg.model)
    assert (tiny.num_layers, tiny.hidden_size, tiny.num_query_groups) == (2, 64, 2)
    folder = resolve_shape(dataclasses.replace(cfg.model, hf_path=str(tiny_qwen3_dir)))
    assert folder.name == str(tiny_qwen3_dir) and folder.head_dim == 32 and folder.qk_layernorm
    with pytest.raises(ShapeError, match="--hf-config"):
        resolve_shape(dataclasses.replace(cfg.model, hf_path="someone/unknown-model"))
    with pytest.raises(ShapeError, match="no such config.json"):
        resolve_shape(cfg.model, hf_config=str(tmp_path / "missing.json"))


# ----------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("recipe, nodes, gpus, expect", [
    (R8B, 2, 8, dict(tp=2, pp=1, dp=8, world_size=16, num_engines=16, num_microbatches=32, sequence_parallel=True)),
    (R14B, 8, 8, dict(tp=4, pp=2, dp=8, world_size=64, num_engines=32, num_microbatches=32)),
    (RTINY, 1, 0, dict(tp=2, pp=1, dp=1, world_size=2, num_engines=1, num_microbatches=16)),
])
def test_known_layouts_are_accepted(recipe, nodes, gpus, expect):
    _, _, layout = _plan(recipe, nodes=nodes, gpus=gpus)
    assert {k: getattr(layout, k) for k in expect} == expect


@pytest.mark.parametrize("recipe, overrides, nodes, gpus, message", [
    # world size: 6 GPUs cannot hold TP 4 x PP 2 = 8 ranks per replica
    (R14B, [], 1, 6, "policy world size 6 is not a multiple of TP x PP x CP = 4 x 2 x 1 = 8"),
    (R8B, ["parallel.tensor_model_parallel_size=3"], 2, 8, "tensor_model_parallel_size=3 does not divide "
                                                           "num_attention_heads=32"),
    (R8B, ["parallel.tensor_model_parallel_size=16", "rollout.tensor_parallel_size=1"], 2, 8,
     "tensor_model_parallel_size=16 does not divide num_query_groups (KV heads)=8"),
    (R8B, ["parallel.pipeline_model_parallel_size=5"], 5, 2, "num_layers=36 (Qwen/Qwen3-8B) is not divisible by PP=5"),
    (R14B, ["parallel.virtual_pipeline_model_parallel_size=3"], 8, 8,
     "num_layers=40 (Qwen/Qwen3-14B) is not divisible by PP=2 x VPP=3 = 6"),
    (R8B, ["grpo.micro_batch_size=3"], 2, 8, "grpo.global_batch_size=256 is not divisible by DP x micro-batch = "
                                             "8 x 3 = 24"),
    (R14B, ["rollout.tensor_parallel_size=16"], 8, 8, "rollout.tensor_parallel_size=16 exceeds the 8 GPU(s) of a node"),
    (R8B, ["rollout.tensor_parallel_size=3"], 2, 8, "rollout.tensor_parallel_size=3 does not divide gpus_per_node=8"),
    (R8B, ["rollout.num_engines=17"], 2, 8, "rollout.num_engines=17: colocated engines share the 16 policy GPU(s), "
                                            "so 1 to 16 fit"),
    (R8B, ["rollout.colocated=false"], 2, 8, "rollout.colocated=false on GPU needs rollout.num_engines"),
    (R8B, ["parallel.context_parallel_size=2", "rollout.max_total_sequence_length=16386"], 2, 8,
     "rollout.max_total_sequence_length=16386 is not divisible by 2 x CP = 4"),
    (R8B, ["model.fp8=e5m2"], 2, 8, "model.fp8='e5m2' is not one of ['e4m3', 'hybrid']"),
])
def test_bad_layouts_are_rejected_with_the_numbers(recipe, overrides, nodes, gpus, message):
    with pytest.raises(LayoutError) as err:
        _plan(recipe, overrides, nodes=nodes, gpus=gpus)
    assert any(message in p for p in err.value.problems), err.value.problems


def test_all_problems_are_reported_together():
    with pytest.raises(LayoutError) as err:
        _plan(R8B, ["parallel.tensor_model_parallel_size=3", "grpo.micro_batch_size=3"], nodes=2, gpus=8)
    assert len(err.value.problems) >= 3  # heads, query groups, micro-batch
    assert str(err.value).startswith("layout check failed:\n  - ")


# ----------------------------------------------------------------------------- memory
def test_qwen3_8b_memory_by_hand():
    cfg, shape, layout = _plan(R8B, nodes=2, gpus=8)
    mem = training_memory(shape, layout, cfg)
    st = mem.peak
    # Padded vocabulary: next multiple of 128 * lcm(TP=2, 8) = 1024 above 151936 -> 149 * 1024 = 152576.
    assert mem.padded_vocab == 152_576
    # Parameters per GPU (TP=2, PP=1): 36 x (192,937,984 / 2 + 8,448) = 3,473,187,840
    #   + embedding and output 2 x 152576 x 4096 / 2 = 624,951,296 + final norm 4096 = 4,098,143,232
    assert st.params == 4_098_143_232
    assert st.weights == 2 * 4_098_143_232 == 8_196_286_464          # bf16: 7.63 GiB
    assert st.grads == 4 * 4_098_143_232 == 16_392_572_928           # fp32 main grads: 15.27 GiB
    # Adam: fp32 main weights + 2 moments = 12 B/param; distributed over DP=8 -> 1.5 B/param
    assert st.optimizer == st.optimizer_distributed == 12 * 4_098_143_232 // 8 == 6_147_214_848   # 5.73 GiB
    assert st.optimizer_replicated == 49_177_718_784                 # 45.80 GiB without it
    # Activations, 16384 tokens (micro-batch 1 x max_total_sequence_length), bf16, TP=2 + SP:
    #   per layer per token A = 2 B x (4h + 3q + 3kv + 3f) / 2 = (16384 + 12288 + 3072 + 36864) = 68,608 B
    #   full recompute, 1 layer per chunk: 36 layer inputs 2 B x 4096 / 2 x 16384 = 67,108,864 each
    #     = 2,415,919,104, + one layer recomputed 68,608 x 16384 = 1,124,073,472
    #   logits (last stage): 16384 x (2 x 2 B x 4096 / 2 + (2 + 8) B x 152576 / 2) = 16384 x 771,072
    #     = 12,633,243,648
    assert st.activations == 2_415_919_104 + 1_124_073_472 + 12_633_243_648 == 16_173_236_224   # 15.06 GiB
    #   no recompute: 36 x 1,124,073,472 + logits = 53,099,888,640 (49.45 GiB); selective == none
    assert st.activations_by_recompute["none"] == 53_099_888_640 == st.activations_by_recompute["selective"]
    assert st.total == 46_909_310_464                                # 43.69 GiB
    # vLLM engine, TP=1, bf16: all 8,190,735,360 parameters (151936 is a multiple of 64) x 2 B
    eng = engine_memory(shape, layout, cfg, 80 * GIB)
    assert eng.weights == 16_381_470_720                             # 15.26 GiB
    # KV: 2 (K, V) x 36 layers x 8 KV heads x 128 x 2 B = 147,456 B/token; 1024 trajectories / 16
    # engines = 64 sequences x 16384 tokens -> 154,618,822,656 B (144 GiB) for full concurrency
    assert (eng.kv_bytes_per_token, eng.sequences, eng.kv_needed) == (147_456, 64, 154_618_822_656)
    # vLLM share 0.6 x 80 GiB = 51,539,607,552; minus weights = 35,158,136,832 for KV
    #   / (16384 x 147,456 = 2,415,919,104 per full sequence) = 14 sequences at once
    assert (eng.budget, eng.kv_budget, eng.concurrent_full_sequences) == (51_539_607_552, 35_158_136_832, 14)
    phases = {p.name: p.total for p in lifecycle_phases(st, eng, layout, cfg, 2 * GIB)}
    # colocated_offload=all: generation = vLLM share + reserve; refit = policy weights + engine weights
    # + one 512 MiB bucket + reserve
    assert phases == {"generation": 51_539_607_552 + 2 * GIB, "training": 46_909_310_464 + 2 * GIB,
                      "refit": 8_196_286_464 + 16_381_470_720 + 512 * 2 ** 20 + 2 * GIB}


def test_qwen3_14b_memory_by_hand():
    cfg, shape, layout = _plan(R14B, nodes=8, gpus=8)
    mem = training_memory(shape, layout, cfg)
    first, last = mem.stages
    # TP=4, PP=2 (20 layers per stage): 20 x (330,301,440 / 4 + 10,496) = 1,651,717,120
    #   stage 0 + embedding 152576 x 5120 / 4 = 195,297,280          -> 1,847,014,400
    #   stage 1 + output layer 195,297,280 + final norm 5120          -> 1,847,019,520
    assert (first.params, last.params) == (1_847_014_400, 1_847_019_520)
    # Activations per token per layer: 2 B x (4 x 5120 + 3 x 5120 + 3 x 1024 + 3 x 17408) / 4 = 45,568 B;
    # 1F1B with 32 micro-batches: stage 0 holds min(2, 32) = 2 in flight, stage 1 one.
    #   layer inputs per micro-batch: 20 x 2 B x 5120 / 4 x 16384 = 838,860,800
    #   one recomputed layer: 45,568 x 16384 = 746,586,112
    #   logits (stage 1): 16384 x (2 x 2 x 5120 / 4 + 10 x 152576 / 4) = 16384 x 386,560 = 6,333,399,040
    assert (first.inflight_microbatches, last.inflight_microbatches) == (2, 1)
    assert first.activations == 2 * 838_860_800 + 746_586_112 == 2_424_307_712
    assert last.activations == 838_860_800 + 746_586_112 + 6_333_399_040 == 7_918_845_952
    assert last.activations_by_recompute["none"] == 20 * 746_586_112 + 6_333_399_040
    # stage 1 total: weights 2 B + grads 4 B + optimizer 12 B / DP 8 per parameter, + activations
    #   3,694,039,040 + 7,388,078,080 + 2,770,529,280 + 7,918,845,952 = 21,771,492,352 (20.28 GiB)
    assert mem.peak is last and last.total == 21_771_492_352
    assert first.total == 3_694_028_800 + 7_388_057_600 + 2_770_521_600 + 2_424_307_712
    # vLLM TP=2: 40 x (330,301,440 / 2 + 10,496) + 2 x 151936 x 5120 / 2 + 5120 = 7,384,366,080 params x 2 B
    eng = engine_memory(shape, layout, cfg, 80 * GIB)
    assert eng.weights == 14_768_732_160                              # 13.75 GiB
    # KV: 2 x 40 layers x (8 / 2) KV heads x 128 x 2 B = 81,920 B/token; 1024 / 32 engines = 32 sequences
    assert (eng.kv_bytes_per_token, eng.sequences, eng.kv_needed) == (81_920, 32, 32 * 16384 * 81_920)
    # (0.6 x 80 GiB - 14,768,732,160) / (16384 x 81,920) = 36,770,875,392 / 1,342,177,280 -> 27
    assert eng.concurrent_full_sequences == 27


def test_offload_modes_change_the_generation_phase():
    cfg, shape, layout = _plan(R8B, nodes=2, gpus=8)
    st = training_memory(shape, layout, cfg).peak
    eng = engine_memory(shape, layout, cfg, 80 * GIB)
    totals = {}
    for mode in ("all", "optimizer", "none"):
        c = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, colocated_offload=mode))
        totals[mode] = {p.name: p.total for p in lifecycle_phases(st, eng, layout, c, 0)}["generation"]
    # what the policy keeps on the GPU while vLLM generates: nothing / weights + grads / + optimizer
    assert totals["optimizer"] - totals["all"] == 8_196_286_464 + 16_392_572_928
    assert totals["none"] - totals["optimizer"] == 6_147_214_848


def test_cli_fits_and_does_not_fit(capsys):
    assert plan_main(["--config", str(R8B), "--nodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "result: fits" in out and "TP 2 x PP 1 x CP 1 x DP 8" in out
    # Qwen3-14B without model parallelism on one 8-GPU node: 14.77e9 x (2 + 4) B of weights and
    # gradients alone is 82.5 GiB per GPU
    code = plan_main(["--config", str(R14B), "--nodes", "1", "parallel.tensor_model_parallel_size=1",
                      "parallel.pipeline_model_parallel_size=1"])
    out = capsys.readouterr().out
    assert code == 1 and "does not fit: training:" in out and "exceeds 80.00 GiB" in out and "DOES NOT FIT" in out
    # a layout error exits 1 as well, naming the rule
    assert plan_main(["--config", str(R8B), "--nodes", "2", "grpo.micro_batch_size=3"]) == 1
    assert "8 x 3 = 24" in capsys.readouterr().out
    # an unknown key is a usage error (2), as in the driver
    assert plan_main(["--config", str(R8B), "grpo.no_such_key=1"]) == 2


# ----------------------------------------------------------------------------- launchers
SUBS = {"brrm_8b_2node.sub": ("model_configs/qwen3_8b.yaml", 2, 8, 600),
        "brrm_14b_tp4pp2.sub": ("model_configs/qwen3_14b_tp4pp2.yaml", 8, 8, 900),
        "brrm_tiny_cpu.sub": ("model_configs/tiny_cpu.yaml", 1, 0, 120)}


@pytest.mark.parametrize("name", sorted(SUBS))
def test_launchers_parse_and_match_their_recipes(name, capsys):
    path = REPO_ROOT / "slurm" / name
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    spec = parse_sbatch(path)
    recipe, nodes, gpus, lead = SUBS[name]
    assert (spec.recipe, spec.nodes, spec.gpus_per_node) == (recipe, nodes, gpus)
    assert spec.signal == (True, "SIGUSR1", lead) and "requeue" in spec.options
    assert check_sbatch(spec, REPO_ROOT) == []
    assert plan_main(["--sbatch", str(path)]) == 0, capsys.readouterr().out
    assert "result: fits" in capsys.readouterr().out


def _edited(tmp_path, name, old, new):
    text = (REPO_ROOT / "slurm" / name).read_text()
    assert old in text
    out = tmp_path / name
    out.write_text(text.replace(old, new))
    return out


@pytest.mark.parametrize("name, old, new, message", [
    ("brrm_14b_tp4pp2.sub", "--nodes=8", "--nodes=3",
     "grpo.global_batch_size=256 is not divisible by DP x micro-batch = 3 x 1 = 3"),
    ("brrm_8b_2node.sub", "#SBATCH --requeue\n", "", "no #SBATCH --requeue"),
    ("brrm_8b_2node.sub", "--signal=B:USR1@600", "--signal=USR1@600", "use B: so only the batch shell gets it"),
    ("brrm_tiny_cpu.sub", "--signal=B:USR1@120", "--signal=B:USR1@1800",
     "the signal comes 1800 s before a time limit of 1800 s"),
    ("brrm_tiny_cpu.sub", "--cpus-per-task=2", "--cpus-per-task=1", "--cpus-per-task=1 but the CPU run places 2"),
])
def test_bad_launchers_are_rejected(tmp_path, capsys, name, old, new, message):
    assert plan_main(["--sbatch", str(_edited(tmp_path, name, old, new))]) == 1
    assert message in capsys.readouterr().out


@pytest.mark.parametrize("text, seconds", [("30", 1800), ("1:30", 90), ("24:00:00", 86400), ("2-0", 172800),
                                           ("1-2:3", 93780), ("1-02:03:04", 93784)])
def test_sbatch_time_formats(text, seconds):
    assert parse_time(text) == seconds
