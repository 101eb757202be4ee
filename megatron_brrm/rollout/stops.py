"""Stop-string detection on the decoded text of generated tokens.

Token-boundary rule (shared by :class:`~megatron_brrm.rollout.hf_engine.HFEngine`; vLLM applies
the same rule to its token ids): after each generated token the engine asks whether
``tokenizer.decode(generated_ids)`` contains one of the stop strings. Generation ends at the
first token for which it does; that token is kept whole, so the stop string is kept in the
output, and no later token is generated. When the completing token also carries characters
after the stop string (e.g. a token ``"]\\n"`` completing ``"...Score]"``), those characters
stay in ``token_ids`` and in ``text`` (``text == decode(token_ids)``): tokens are what the
model generated and are never split. (vLLM's own ``text`` would cut the characters after the
stop string; its ``token_ids`` keep the whole token, as here.)

Only the tail of the generated ids is decoded: an occurrence that ends in the newest token
spans at most ``len(stop.encode("utf-8"))`` tokens (every token is at least one byte), so a
window of that many tokens plus a margin of two (for a split multi-byte character and for
decoders that drop a leading space of the first token) sees every new occurrence. Checking
each step this way is equivalent to checking the full decoded text, at O(1) cost per step.
"""
from __future__ import annotations

from typing import Sequence


class StopStringChecker:
    """Detect stop strings in generated token ids.

    Args:
        tokenizer: HF tokenizer used to decode (special tokens kept, no space clean-up).
        stop: the stop strings; empty strings are rejected.

    Raises:
        ValueError: a stop string is empty.
    """

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.stop = [s for s in stop]
        for s in self.stop:
            if not isinstance(s, str) or s == "":
                raise ValueError(f"stop strings must be non-empty str, got {s!r}")
        self.tokenizer = tokenizer
        self.window = (max(len(s.encode("utf-8")) for s in self.stop) + 2) if self.stop else 0

    def __bool__(self) -> bool:
        return bool(self.stop)

    def hit(self, generated_ids: Sequence[int]) -> bool:
        """True when the decoded tail of ``generated_ids`` contains a stop string."""
        if not self.stop or not generated_ids:
            return False
        tail = self.tokenizer.decode(list(generated_ids[-self.window:]), skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)
        return any(s in tail for s in self.stop)
