"""Registry of source adapters: name -> how to read that public dataset into PreferencePairs.

Use :func:`load_source` (one file) or look a spec up in :data:`ADAPTERS`. Each adapter's
docstring states the source schema, the recipe rules it applies and its id scheme; the common
rules (seeded position, DataError vs skip-and-count, ids) are in :mod:`.base`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Union

from ..schema import DataError, PreferencePair
from ..summary import SourceSummary
from .base import AdapterRun, chosen_first, group_of
from .brrm_sources import code_preference_pairs, helpsteer3, math_step_dpo, skywork80k
from .grouped_sources import generic, helpsteer, prm800k
from .rl_stack_sources import helpsteer3_nested, nemo_rl, verl
from .shipped_sources import chatbot_arena, hh_rlhf, pku_saferlhf, ultrafeedback_binarized


@dataclass(frozen=True)
class AdapterSpec:
    """One registered source.

    Attributes:
        name: registry name (also the id prefix, ``PreferencePair.source`` and the folder name
            under which ``--data-dir`` discovery looks for its files).
        fn: ``fn(run: AdapterRun, **options) -> Iterator[PreferencePair]``.
        summary: one line for ``--help``.
        brrm: part of the BR-RM training mix (HelpSteer3, Skywork-80K, Code-Preference, Math-Step-DPO).
    """

    name: str
    fn: Callable[..., Iterator[PreferencePair]]
    summary: str
    brrm: bool = False

    def options(self) -> Dict[str, Any]:
        """Option name -> default value, read from the adapter function's keyword arguments."""
        params = list(inspect.signature(self.fn).parameters.values())[1:]
        return {p.name: p.default for p in params}


ADAPTERS: Dict[str, AdapterSpec] = {s.name: s for s in (
    AdapterSpec("helpsteer3", helpsteer3, "nvidia/HelpSteer3 preference: ties dropped, context and domain kept", True),
    AdapterSpec("skywork80k", skywork80k, "Skywork-Reward-Preference-80K-v0.2: magpie_ultra dropped, last turns", True),
    AdapterSpec("code_preference_pairs", code_preference_pairs,
                "Vezora/Code-Preference-Pairs (original or reduced schema), seeded 8K subset", True),
    AdapterSpec("math_step_dpo", math_step_dpo, "xinlai/Math-Step-DPO-10K: initial_reason_steps + full_*", True),
    AdapterSpec("hh_rlhf", hh_rlhf, "Anthropic HH-RLHF transcripts split into turns"),
    AdapterSpec("ultrafeedback_binarized", ultrafeedback_binarized, "UltraFeedback binarized (trl-lib), ties dropped"),
    AdapterSpec("pku_saferlhf", pku_saferlhf, "PKU-SafeRLHF, preference=safer (default) or better"),
    AdapterSpec("chatbot_arena", chatbot_arena, "LMSYS Chatbot Arena 55k: ties and diverging multi-turn dropped"),
    AdapterSpec("prm800k", prm800k, "PRM800K step ratings: +1 step preferred over -1 step of one prefix"),
    AdapterSpec("helpsteer", helpsteer, "NVIDIA HelpSteer v1: response pairs of one prompt by helpfulness"),
    AdapterSpec("generic", generic, "any prompt/chosen/rejected JSONL or parquet (column names configurable)"),
    AdapterSpec("nemo_rl", nemo_rl, "NeMo-RL PreferenceDataset: context + completions with rank (lower preferred)"),
    AdapterSpec("verl", verl, "verl RM data: chosen/rejected full conversations (messages or Human:/Assistant:)"),
    AdapterSpec("helpsteer3_nested", helpsteer3_nested, "nested HelpSteer3: input + output[].answer.label.is_preferred"),
)}


def get_adapter(name: str) -> AdapterSpec:
    """The spec registered as ``name``.

    Raises:
        DataError: unknown name (the message lists the known ones).
    """
    if name not in ADAPTERS:
        raise DataError(f"unknown data source {name!r}; known sources: {', '.join(ADAPTERS)}")
    return ADAPTERS[name]


def load_source(name: str, path: Union[str, Path], *, seed: int = 42, skip_invalid: bool = False,
                summary: Optional[SourceSummary] = None, **options: Any) -> Iterator[PreferencePair]:
    """Stream validated pairs from one file of source ``name``.

    Args:
        name: a key of :data:`ADAPTERS`.
        path: the file (JSONL, JSON list, parquet; ``.gz`` allowed for JSON/JSONL).
        seed: seed of the chosen-position coin (and of any subset draw that uses the run seed).
        skip_invalid: skip malformed rows and count them in ``summary`` instead of raising.
        summary: counters to update; pass one to read the counts afterwards.
        **options: adapter options (see each adapter's keyword arguments).

    Raises:
        DataError: unknown source or option, or (without ``skip_invalid``) a malformed row,
            message ``"file:line: field: reason"``.
    """
    spec = get_adapter(name)
    known = spec.options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise DataError(f"source {name!r} has no option(s) {unknown}; its options: {known or 'none'}")
    run = AdapterRun(name, path, seed=seed, skip_invalid=skip_invalid, summary=summary)
    return spec.fn(run, **options)


__all__ = ["ADAPTERS", "AdapterSpec", "AdapterRun", "get_adapter", "load_source", "chosen_first", "group_of"]
