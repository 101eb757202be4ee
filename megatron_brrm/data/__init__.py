"""Preference data: one record type (:class:`PreferencePair`), one adapter per public source,
JSONL io, order augmentation, benchmark decontamination and the train/val mix builder.

This package imports nothing else of the project (docs/design.md §2).
"""
from .adapters import ADAPTERS, get_adapter, load_source
from .augment import SWAP_SUFFIX, base_id, both_orders, swapped_copy
from .benchmark_prompts import benchmark_prompts
from .loader import PairLoader
from .io import iter_pairs, iter_records, read_pairs, write_json, write_pairs
from .mix import MixResult, SourceSpec, build_mix, discover_sources, parse_source_spec
from .prompts import Prompt, load_prompt_sets, prompts_from_pairs, read_prompts
from .schema import DataError, PreferencePair
from .sets import PreferenceData, load_preference_data
from .summary import MixSummary, SourceSummary

__all__ = [
    "ADAPTERS", "get_adapter", "load_source", "SWAP_SUFFIX", "base_id", "both_orders", "swapped_copy",
    "benchmark_prompts", "iter_pairs", "iter_records", "read_pairs", "write_json", "write_pairs",
    "MixResult", "SourceSpec", "build_mix", "discover_sources", "parse_source_spec",
    "DataError", "PreferencePair", "PairLoader", "MixSummary", "SourceSummary", "PreferenceData",
    "load_preference_data", "Prompt", "load_prompt_sets", "prompts_from_pairs", "read_prompts",
]
