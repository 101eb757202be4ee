"""Two-turn rollout through the real HF engine: the rollout logprobs on every generated token of
both turns equal one full forward of the model over the final token sequence (what the
trainer computes), <= 1e-4 in fp32; prompt/user tokens carry mask 0 and logprob 0.0."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from megatron_brrm.judge import RewardRule, get_protocol
from megatron_brrm.rollout.hf_engine import HFEngine
from megatron_brrm.rollout.two_turn import RolloutParams, rollout


def test_two_turn_logprobs_match_trainer_forward(tiny_qwen3_dir):
    engine = HFEngine(tiny_qwen3_dir)
    pairs = [SimpleNamespace(id="a", context=[{"role": "user", "content": "Is 7 prime?"}], response1="Yes.",
                             response2="No.", preference=1),
             SimpleNamespace(id="b", context=[{"role": "user", "content": "Name a colour."},
                                              {"role": "assistant", "content": "Blue."},
                                              {"role": "user", "content": "Another one?"}],
                             response1="Red.", response2="Seven.", preference=1)]
    T = 0.9
    params = RolloutParams(n=2, temperature=T, top_p=1.0, max_new_tokens=(10, 8), max_total_length=4096, seed=3)
    trajs = rollout(engine, get_protocol("brrm"), pairs, params, RewardRule())
    assert [t.group_id for t in trajs] == [0, 0, 1, 1]
    worst = 0.0
    for t in trajs:
        ids = torch.tensor([t.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(engine.model(input_ids=ids).logits[0].float() / T, dim=-1)
        mask = torch.tensor(t.loss_mask, dtype=torch.bool)
        pos = torch.nonzero(mask).flatten()
        ref = logp[pos - 1, ids[0, pos]]
        got = torch.tensor(t.rollout_logprobs)[pos]
        worst = max(worst, (ref - got).abs().max().item())
        assert int(mask.sum()) == sum(t.turn_lengths) and t.turn_lengths[0] <= 10 and t.turn_lengths[1] <= 8
        assert all(v == 0.0 for v, m in zip(t.rollout_logprobs, t.loss_mask) if not m)
        assert t.reward == -100.0  # random weights cannot write a verdict block in 8 tokens
        assert t.truncated == (t.finish_reasons[1] == "length")
    assert worst <= 1e-4, worst
    # same seed -> same rollout
    again = rollout(engine, get_protocol("brrm"), pairs, params, RewardRule())
    assert [t.token_ids for t in again] == [t.token_ids for t in trajs]
