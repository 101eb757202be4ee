"""A scripted generation engine for rollout bookkeeping tests (no model).

Each ``generate`` call consumes the next entry of ``script``: a function
``(call_index, prompt_index, sample_index, prompt_ids) -> token ids`` giving the tokens the
"model" would emit. The engine then applies the real stopping contract of the engines
(EOS, stop strings via :class:`StopStringChecker`, ``max_new_tokens``) to that sequence, and
reports made-up but position-identifiable logprobs: token k of call c gets
``-(c + 1) - (k + 1) / 1000``. Every call is recorded for assertions.
"""
from __future__ import annotations

from typing import Callable, List, Sequence

from megatron_brrm.rollout.engine import EngineAbilities, GenerationEngine, GenerationOutput, SamplingParams
from megatron_brrm.rollout.stops import StopStringChecker


def fake_logprob(call_index: int, k: int) -> float:
    """The logprob the scripted engine reports for output token ``k`` of call ``call_index``."""
    return -(call_index + 1) - (k + 1) / 1000.0


class ScriptedEngine(GenerationEngine):
    def __init__(self, tokenizer, script: Sequence[Callable]):
        self._tok = tokenizer
        self.script = list(script)
        self.calls: List[dict] = []
        self.eos_token_ids = frozenset([tokenizer.eos_token_id])

    @property
    def tokenizer(self):
        return self._tok

    @property
    def abilities(self):
        return EngineAbilities(eos_token_ids=self.eos_token_ids)

    def generate(self, prompts, params: SamplingParams, group_ids=None):
        c = len(self.calls)
        self.calls.append({"prompts": [list(p) for p in prompts], "params": params})
        fn = self.script[c]
        stops = StopStringChecker(self._tok, params.stop)
        result = []
        for i, p in enumerate(prompts):
            row = []
            for j in range(params.n):
                planned = list(fn(c, i, j, list(p)))
                out, reason = [], None
                for t in planned:
                    out.append(t)
                    if t in self.eos_token_ids or stops.hit(out):
                        reason = "stop"
                        break
                    if len(out) >= params.max_new_tokens:
                        reason = "length"
                        break
                if reason is None:
                    raise AssertionError(f"script of call {c} ran out of tokens without EOS/stop/length")
                row.append(GenerationOutput(
                    token_ids=out, text=self._tok.decode(out, skip_special_tokens=False),
                    logprobs=[fake_logprob(c, k) for k in range(len(out))] if params.logprobs else [],
                    finish_reason=reason))
            result.append(row)
        return result

    def update_weights(self, named_tensors):
        raise NotImplementedError
