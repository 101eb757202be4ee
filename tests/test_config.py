"""Config: YAML recipes, dotted overrides, and errors that name the key and the source."""
import pytest

from megatron_brrm.config import ConfigError, load_config, save_config


def test_defaults_match_brrm_recipe():
    cfg = load_config()
    assert (cfg.grpo.num_generations, cfg.grpo.ratio_clip_low, cfg.grpo.ratio_clip_high) == (8, 0.2, 0.28)
    assert (cfg.judge.reward.correct, cfg.judge.reward.wrong, cfg.judge.reward.malformed) == (0.0, -1.0, -100.0)


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("grpo:\n  num_generations: 4\n  optimizer:\n    lr: 1.0e-6\nparallel:\n  tensor_model_parallel_size: 2\n")
    cfg = load_config(f, ["grpo.num_generations=16", "judge.reward.wrong=-10"])
    assert cfg.grpo.num_generations == 16 and cfg.grpo.optimizer.lr == 1e-6
    assert cfg.parallel.tensor_model_parallel_size == 2 and cfg.judge.reward.wrong == -10.0


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("grpo:\n  num_generatoins: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "grpo.num_generatoins" in str(e.value) and str(f) in str(e.value)


def test_wrong_type_on_command_line_names_key():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["grpo.num_generations=eight"])
    assert "grpo.num_generations" in str(e.value) and "command line" in str(e.value)


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["grpo.num_generations"])


def test_every_recipe_loads(repo_root):
    recipes = sorted((repo_root / "model_configs").glob("*.yaml"))
    assert recipes, "model_configs/ holds no recipe"
    for r in recipes:
        load_config(r)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["grpo.kl_coef=0.01", "name=x"])
    path = save_config(cfg, tmp_path / "out")
    assert load_config(path) == cfg


@pytest.mark.parametrize("override, message", [
    ("rollout.engine=sglang", "rollout.engine='sglang' is not one of 'hf', 'vllm'"),
    ("rollout.refit_transport=nccl", "rollout.refit_transport='nccl' is not one of 'auto', 'shm', 'collective', 'ray'"),
    ("rollout.colocated_offload=weights", "rollout.colocated_offload='weights' is not one of 'all', 'optimizer', 'none'"),
    ("grpo.kl_type=k2", "grpo.kl_type='k2' is not one of 'k1', 'k3'"),
    ("sft.verdict=maybe", "sft.verdict='maybe' is not one of 'random', 'label'"),
    ("grpo.global_batch_size=300", "grpo.global_batch_size=300 must divide grpo.num_prompts_per_step x grpo.num_generations = 1024"),
])
def test_choices_and_cross_field_rules_are_checked_at_load(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value) and "command line" in str(e.value)
