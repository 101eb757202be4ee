"""GRPO / SFT / Bradley-Terry losses against independent references.

* On a fixed batch (prompt + generated tokens, loss mask, advantages, old / reference /
  rollout logprobs) and a tiny random Qwen3 HF model, the loss value and the gradient of
  every parameter computed through ``megatron_brrm.rl`` (logprobs.token_logprobs +
  loss.clipped_pg_loss) match (a) a plain-PyTorch implementation written here from the
  formulas and (b) TRL 1.16 ``GRPOTrainer._compute_loss`` itself (loss_type="dapo",
  epsilon 0.2 / epsilon_high 0.28, beta, token-truncated vLLM importance sampling).
  Tolerance 1e-5 relative: every path is float32 on the same weights; what differs is the
  summation order (TRL's chunked LM head vs a full log_softmax), ~1e-7 relative per op.
* The same loss summed over any micro-batch split with the global normaliser equals the
  full-batch loss (value and gradients, 1e-6 relative).
"""
import contextlib
import types
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from megatron_brrm.rl.logprobs import token_logprobs
from megatron_brrm.rl.loss import (ClippedPGConfig, Normalizer, bradley_terry_loss, clipped_pg_loss, kl_penalty,
                                   reduce_metrics, sft_nll_loss)

REL = 1e-5
B, P, C = 4, 5, 7  # sequences, prompt length, completion length
BETA, EPS_LOW, EPS_HIGH, TIS_CAP = 0.04, 0.2, 0.28, 1.3


def _load(path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()


@pytest.fixture(scope="module")
def batch(tiny_qwen3_dir):
    gen = torch.Generator().manual_seed(1)
    model = _load(tiny_qwen3_dir)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (B, P), generator=gen)
    completion = torch.randint(0, vocab, (B, C), generator=gen)
    lengths = torch.tensor([7, 3, 5, 1])  # generated tokens per sequence (right padding after)
    cmask = (torch.arange(C).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids = torch.cat([prompt, completion], 1)
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    cur = lp[:, P - 1:]  # [B, C] current logprobs of the completion tokens
    noise = lambda s: torch.randn(B, C, generator=gen) * s  # noqa: E731
    old = cur + noise(0.3)  # ratios spread over both clip bounds
    ref = cur + noise(0.2)
    rollout = old + noise(0.2)
    adv = torch.tensor([1.0, -0.7, 0.4, -1.5])
    return dict(prompt=prompt, completion=completion, cmask=cmask, ids=ids, old=old, ref=ref, rollout=rollout,
                adv=adv, model_dir=tiny_qwen3_dir)


def _full(x, fill=0.0):
    """[B, C] completion tensor -> [B, P + C] aligned to input positions."""
    return torch.cat([torch.full((x.shape[0], P), fill, dtype=x.dtype), x], 1)


def _ours(model, b, rows=None, cfg=None, norm=None):
    rows = list(range(B)) if rows is None else rows
    cfg = cfg or ClippedPGConfig(ratio_clip_low=EPS_LOW, ratio_clip_high=EPS_HIGH, kl_coef=BETA, kl_type="k3",
                                 kl_input_clamp=None, kl_output_clamp=None, truncated_importance_sampling=TIS_CAP)
    mask = _full(b["cmask"])[rows]
    norm = norm or Normalizer(*Normalizer.local_counts(_full(b["cmask"])).tolist())
    logits = model(input_ids=b["ids"][rows]).logits
    lp, ent = token_logprobs(logits, b["ids"][rows], with_entropy=True)
    data = {"loss_mask": mask, "advantages": b["adv"][rows], "old_logprobs": _full(b["old"])[rows],
            "ref_logprobs": _full(b["ref"])[rows], "rollout_logprobs": _full(b["rollout"])[rows]}
    return clipped_pg_loss(lp, data, cfg, norm, entropy=ent)


def _plain(model, b):
    """The GRPO loss from the formulas, nothing imported from megatron_brrm."""
    logits = model(input_ids=b["ids"]).logits
    logp_all = torch.log_softmax(logits[:, P - 1:-1].float(), -1)
    lp = logp_all.gather(-1, b["completion"].unsqueeze(-1)).squeeze(-1)
    a = b["adv"].unsqueeze(1)
    r = torch.exp(lp - b["old"])
    surrogate = torch.max(-a * r, -a * torch.clamp(r, 1 - EPS_LOW, 1 + EPS_HIGH))
    w = torch.clamp(torch.exp(b["old"] - b["rollout"]), max=TIS_CAP)
    d = b["ref"] - lp
    k3 = torch.exp(d) - d - 1
    per_token = w * surrogate + BETA * k3
    m = b["cmask"].float()
    return (per_token * m).sum() / m.sum()


def _trl(model, b):
    """TRL's own GRPOTrainer._compute_loss on a stand-in trainer object holding exactly
    the attributes that method reads (no Trainer/accelerate machinery)."""
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model, temperature=1.0, outputs=("log_probs", "entropy"))
    acc = types.SimpleNamespace(num_processes=1, is_main_process=True, autocast=contextlib.nullcontext, sync_gradients=True,
                                gather=lambda x: x, gather_for_metrics=lambda x: x, reduce=lambda x, reduction: x)
    fake = types.SimpleNamespace(
        model=model, accelerator=acc, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=BETA, loss_type="dapo", epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH,
        use_vllm=True, vllm_importance_sampling_correction=True, current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1))
    fake._get_per_token_logps_and_entropies = types.MethodType(GRPOTrainer._get_per_token_logps_and_entropies, fake)
    inputs = {"prompt_ids": b["prompt"], "prompt_mask": torch.ones(B, P, dtype=torch.long),
              "completion_ids": b["completion"], "completion_mask": b["cmask"], "advantages": b["adv"],
              "old_per_token_logps": b["old"], "ref_per_token_logps": b["ref"],
              "importance_sampling_ratio": torch.clamp(torch.exp(b["old"] - b["rollout"]), max=TIS_CAP),
              "num_items_in_batch": b["cmask"].sum()}
    return GRPOTrainer._compute_loss(fake, model, inputs)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def test_grpo_loss_and_grads_match_plain_torch_and_trl(batch):
    results = {}
    for name, fn in [("ours", lambda m: _ours(m, batch)[0]), ("plain", lambda m: _plain(m, batch)),
                     ("trl", lambda m: _trl(m, batch))]:
        model = _load(batch["model_dir"])
        loss = fn(model)
        loss.backward()
        results[name] = (loss.detach(), _grads(model))
    loss_ours, g_ours = results["ours"]
    assert loss_ours.abs() > 1e-3  # a real, non-degenerate loss
    for ref in ("plain", "trl"):
        loss_ref, g_ref = results[ref]
        assert _rel(loss_ours, loss_ref) <= REL, (ref, float(loss_ours), float(loss_ref))
        assert set(g_ref) == set(g_ours)
        worst = max(_rel(g_ours[n], g_ref[n]) for n in g_ref)
        print(f"vs {ref}: loss {float(loss_ours):.6g} rel err {_rel(loss_ours, loss_ref):.2e}, worst grad rel err {worst:.2e}")
        assert worst <= REL, (ref, worst)
        assert all(g_ref[n].norm() > 0 for n in g_ref)  # every parameter receives gradient


def test_metrics_are_meaningful(batch):
    model = _load(batch["model_dir"])
    with torch.no_grad():
        _, met = _ours(model, batch)
    m = batch["cmask"].bool()
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=batch["ids"]).logits[:, P - 1:-1], -1).gather(
            -1, batch["completion"][..., None])[..., 0]
    r = torch.exp(lp - batch["old"])
    a = batch["adv"][:, None].expand(B, C)
    clipped = ((r < 1 - EPS_LOW) & (a < 0)) | ((r > 1 + EPS_HIGH) & (a > 0))
    assert met["clip_fraction"].item() == pytest.approx(clipped[m].float().mean().item(), abs=1e-6)
    assert 0 < met["clip_fraction"] < 1
    assert met["ratio_max"].item() == pytest.approx(r[m].max().item(), rel=1e-5)
    assert met["ratio_mean"].item() == pytest.approx(r[m].mean().item(), rel=1e-5)
    mism = torch.exp((batch["rollout"] - batch["old"]).abs())[m].mean()
    assert met["train_rollout_mismatch"].item() == pytest.approx(mism.item(), rel=1e-5)
    d = batch["ref"] - lp
    assert met["kl"].item() == pytest.approx((torch.exp(d) - d - 1)[m].mean().item(), rel=1e-5)
    assert met["entropy"] > 0 and met["approx_entropy"] > 0


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
def test_micro_batch_splits_are_identical(batch, aggregation):
    cfg = ClippedPGConfig(kl_coef=BETA, aggregation=aggregation, truncated_importance_sampling=TIS_CAP,
                          ratio_clip_c=3.0)
    norm = Normalizer(*Normalizer.local_counts(_full(batch["cmask"])).tolist())
    runs = []
    for split in ([[0, 1, 2, 3]], [[0], [1, 2, 3]], [[3, 1], [0], [2]]):
        model = _load(batch["model_dir"])
        total, parts = 0.0, []
        for rows in split:
            loss, met = _ours(model, batch, rows, cfg, norm)
            loss.backward()
            total += float(loss.detach())
            parts.append(met)
        runs.append((total, _grads(model), reduce_metrics(parts)))
    full_loss, full_g, full_m = runs[0]
    for total, g, met in runs[1:]:
        assert total == pytest.approx(full_loss, rel=1e-6)
        assert max(_rel(g[n], full_g[n]) for n in full_g) <= 1e-6
        for k in ("kl", "clip_fraction", "ratio_mean", "ratio_max", "policy_loss", "loss"):
            assert met[k] == pytest.approx(full_m[k], rel=1e-5, abs=1e-7)


def test_seq_mean_formula():
    lp = torch.tensor([[0.0, -1.0, -2.0, -3.0], [0.0, -0.5, -0.5, 0.0]], requires_grad=True)
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 0]])
    data = {"loss_mask": mask, "advantages": torch.tensor([1.0, -2.0])}
    cfg = ClippedPGConfig(kl_coef=0.0, aggregation="seq_mean")
    loss, _ = clipped_pg_loss(lp, data, cfg, Normalizer(num_tokens=4, num_seqs=2))
    # on-policy: ratio 1 -> per token -A; seq means -1 and 2; mean over 2 sequences = 0.5
    assert float(loss.detach()) == pytest.approx(0.5)
    loss.backward()  # d/dlogp of -A*exp(logp-old) at ratio 1 = -A, over seq length, over num_seqs
    assert torch.allclose(lp.grad, torch.tensor([[0, -1 / 6, -1 / 6, -1 / 6], [0, 1.0, 0, 0]]))


def test_dual_clip_and_asymmetric_bounds_by_hand():
    old = torch.zeros(1, 5)
    lp = torch.log(torch.tensor([[1.0, 0.5, 1.5, 5.0, 1.1]])).requires_grad_()
    adv = torch.tensor([[0.0, 1.0, 1.0, -1.0, -1.0]])
    mask = torch.tensor([[0, 1, 1, 1, 1]])
    cfg = ClippedPGConfig(kl_coef=0.0, ratio_clip_c=3.0)
    loss, met = clipped_pg_loss(lp, {"loss_mask": mask, "advantages": adv, "old_logprobs": old}, cfg,
                                Normalizer(4, 1))
    # r=0.5,A=1 -> max(-0.5, -0.8) = -0.5 ; r=1.5,A=1 -> max(-1.5,-1.28) = -1.28 (clipped high)
    # r=5,A=-1 -> max(5, 1.28)=5 -> dual clip min(5, 3) = 3 ; r=1.1,A=-1 -> max(1.1, 1.1) = 1.1
    assert float(loss.detach()) == pytest.approx((-0.5 - 1.28 + 3.0 + 1.1) / 4, rel=1e-6)
    assert float(met["clip_fraction"]) == pytest.approx(1 / 4)  # only the r=1.5, A>0 token
    assert float(met["dual_clip_fraction"]) == pytest.approx(1 / 4)
    loss.backward()  # clipped tokens have zero gradient; unclipped: -A * r / 4
    assert torch.allclose(lp.grad, torch.tensor([[0.0, -0.5 / 4, 0.0, 0.0, 1.1 / 4]]), atol=1e-7)


def test_kl_estimators_and_clamp():
    lp = torch.tensor([0.0, -1.0, -30.0])
    ref = torch.tensor([-1.0, 0.0, 0.0])
    d = ref - lp
    assert torch.allclose(kl_penalty(lp, ref, "k1", None, None), -d)
    assert torch.allclose(kl_penalty(lp, ref, "k3", None, None), torch.exp(d) - 1 - d)
    clamped = kl_penalty(lp, ref, "k3", 20.0, 10.0)
    assert float(clamped[2]) == 10.0 and float(clamped[0]) == pytest.approx(float(torch.exp(d[0]) - 1 - d[0]))


def test_missing_inputs_raise_clear_errors():
    lp = torch.zeros(1, 3)
    mask = torch.ones(1, 3)
    with pytest.raises(KeyError, match="ref_logprobs"):
        clipped_pg_loss(lp, {"loss_mask": mask, "advantages": torch.ones(1)}, ClippedPGConfig(), Normalizer(3, 1))
    with pytest.raises(KeyError, match="rollout_logprobs"):
        clipped_pg_loss(lp, {"loss_mask": mask, "advantages": torch.ones(1)},
                        ClippedPGConfig(kl_coef=0, truncated_importance_sampling=2.0), Normalizer(3, 1))
    with pytest.raises(ValueError, match="old_logprobs"):
        clipped_pg_loss(lp, {"loss_mask": mask, "advantages": torch.ones(1), "old_logprobs": torch.zeros(1, 2)},
                        ClippedPGConfig(kl_coef=0), Normalizer(3, 1))
    with pytest.raises(ValueError, match="ratio_clip_c"):
        ClippedPGConfig(ratio_clip_c=0.5)


def test_sft_nll_matches_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=gen, requires_grad=True)
    ids = torch.randint(0, 11, (3, 6), generator=gen)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]])
    lp, _ = token_logprobs(logits, ids)
    loss, met = sft_nll_loss(lp, {"loss_mask": mask}, Normalizer(float(mask.sum()), 3.0))
    labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels.reshape(-1), ignore_index=-100)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    g = torch.autograd.grad(loss, logits)[0]
    g_ref = torch.autograd.grad(ref, logits)[0]
    assert torch.allclose(g, g_ref, atol=1e-7)


def test_bradley_terry_matches_formula():
    rc = torch.tensor([2.0, -1.0, 0.5], requires_grad=True)
    rr = torch.tensor([1.0, 0.0, 0.5], requires_grad=True)
    loss, met = bradley_terry_loss(rc, rr, num_pairs_global=3)
    d = torch.tensor([1.0, -1.0, 0.0])
    expected = torch.log1p(torch.exp(-d)).sum() / 3  # -log sigmoid(d)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    assert torch.allclose(rc.grad, (torch.sigmoid(d) - 1) / 3) and torch.allclose(rr.grad, (1 - torch.sigmoid(d)) / 3)
    assert float(met["accuracy"]) == pytest.approx(1 / 3)
