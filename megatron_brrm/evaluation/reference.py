"""Published RewardBench / RM-Bench / RMB numbers, as reference rows for ``compare.py``.

Values are percentages as published; ``None`` = not reported. Sources (labels in the
``source`` field): "BR-RM card" = the model cards / README of nvidia/Qwen3-Nemotron-{8B,14B}-BRRM
and github.com/yzjiao/BR-RM; "RM-R1 page" = the RM-R1 project page table
(rm-r1-uiuc.github.io/rmr1-site); "RM-R1 results" = the stored result files of
github.com/RM-R1-UIUC/RM-R1 @ d4c2542 (``eval/result``); "Skywork-V2 README" =
github.com/SkyworkAI/Skywork-Reward-V2. The same model can differ between sources
(different harness or RewardBench weighting); the BR-RM paper's RewardBench number uses the
unweighted per-section micro-average, RM-R1's the official EXAMPLE_COUNTS weighting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional


@dataclass(frozen=True)
class ReferenceRow:
    """One published result: headline scores (percent) and where they come from."""

    model: str
    kind: str  # "ReasRM 2-turn", "ReasRM", "GenRM", "scalar"
    rewardbench: Optional[float]
    rmbench: Optional[float]
    rmb: Optional[float]
    avg: Optional[float]
    source: str
    group: str  # "brrm" | "rmr1" | "baseline"


REFERENCE_ROWS: List[ReferenceRow] = [
    ReferenceRow("BR-RM Qwen3-Nemotron-14B", "ReasRM 2-turn", 92.1, 85.9, 74.7, 84.2, "BR-RM card", "brrm"),
    ReferenceRow("BR-RM Qwen3-Nemotron-8B", "ReasRM 2-turn", 91.0, 85.0, 71.8, 82.6, "BR-RM card", "brrm"),
    ReferenceRow("RM-R1-DeepSeek-Distilled-Qwen-32B", "ReasRM", 90.9, 83.9, 69.8, 81.5, "RM-R1 results/page", "rmr1"),
    ReferenceRow("RM-R1-Qwen-Instruct-32B", "ReasRM", 91.4, 79.1, 73.0, 81.2, "RM-R1 page", "rmr1"),
    ReferenceRow("RM-R1-DeepSeek-Distilled-Qwen-14B", "ReasRM", 88.9, 81.5, 68.5, 79.6, "RM-R1 page", "rmr1"),
    ReferenceRow("RM-R1-Qwen-Instruct-14B", "ReasRM", 88.2, 76.1, 69.2, 77.8, "RM-R1 page", "rmr1"),
    ReferenceRow("RM-R1-Qwen-Instruct-7B", "ReasRM", 85.2, 70.2, 66.4, 73.9, "RM-R1 page", "rmr1"),
    ReferenceRow("RM-R1-DeepSeek-Distilled-Qwen-7B", "ReasRM", 80.1, 72.4, 55.1, 69.2, "RM-R1 page", "rmr1"),
    ReferenceRow("Self-taught-evaluator-Llama3.1-70B", "ReasRM", 90.2, 71.4, 67.0, 76.2, "RM-R1 page", "baseline"),
    ReferenceRow("DeepSeek-GRM-27B", "ReasRM", 86.0, None, 69.0, None, "RM-R1 page", "baseline"),
    ReferenceRow("DeepSeek-GRM-27B-RFT", "ReasRM", 84.5, None, 67.0, None, "RM-R1 page", "baseline"),
    ReferenceRow("DeepSeek-PairRM-27B", "ReasRM", 87.1, None, 58.2, None, "RM-R1 page", "baseline"),
    ReferenceRow("JudgeLRM-7B", "ReasRM", 75.2, 64.7, 53.1, 64.3, "RM-R1 page", "baseline"),
    ReferenceRow("GPT-4o-0806", "GenRM", 86.7, 72.5, 73.8, 77.7, "RM-R1 page", "baseline"),
    ReferenceRow("Skywork-Critic-Llama-3.1-70B", "GenRM", 93.3, 71.9, 65.5, 76.9, "RM-R1 page", "baseline"),
    ReferenceRow("Gemini-1.5-pro", "GenRM", 88.2, 75.2, 56.5, 73.3, "RM-R1 page", "baseline"),
    ReferenceRow("Llama3.1-70B-Instruct", "GenRM", 84.0, 65.5, 68.9, 72.8, "RM-R1 page", "baseline"),
    ReferenceRow("Claude-3.5-sonnet-20240620", "GenRM", 84.2, 61.0, 70.6, 71.9, "RM-R1 page", "baseline"),
    ReferenceRow("INF-ORM-Llama3.1-70B", "scalar", 95.1, 70.9, 70.5, 78.8, "RM-R1 page", "baseline"),
    ReferenceRow("Skywork-Reward-Llama-3.1-8B", "scalar", 92.5, 70.1, 69.3, 77.5, "RM-R1 page", "baseline"),
    ReferenceRow("Nemotron-4-340B-Reward", "scalar", 92.0, 69.5, 69.9, 77.1, "RM-R1 page", "baseline"),
    ReferenceRow("ArmoRM-Llama3-8B-v0.1", "scalar", 90.4, 67.7, 64.6, 74.2, "RM-R1 page", "baseline"),
    ReferenceRow("Skywork-Reward-Gemma-2-27B", "scalar", 93.8, 67.3, 60.2, 73.8, "RM-R1 page", "baseline"),
    ReferenceRow("Internlm2-20b-reward", "scalar", 90.2, 68.3, 62.9, 73.6, "RM-R1 page", "baseline"),
    ReferenceRow("Skywork-Reward-V2-Llama-3.1-8B", "scalar", 96.4, 92.8, 86.4, None, "Skywork-V2 README", "baseline"),
    ReferenceRow("Skywork-Reward-V2-Qwen3-8B", "scalar", 93.7, 82.6, 81.2, None, "Skywork-V2 README", "baseline"),
    ReferenceRow("J1-Llama-70B", "ReasRM", 93.3, 82.7, None, None, "Skywork-V2 README", "baseline"),
    ReferenceRow("EvalPlanner (Llama-3.3-70B)", "ReasRM", 93.8, 82.1, None, None, "Skywork-V2 README", "baseline"),
]

# BR-RM-14B per-section breakdown (BR-RM README), in the detail layout of report.py.
BRRM_14B_DETAIL: Dict[str, Dict[str, float]] = {
    "rewardbench": {"Chat": 97.0, "Chat-Hard": 82.4, "Safety": 90.0, "Reasoning": 98.8, "Overall": 92.1},
    "rmbench": {"Chat": 77.3, "Math": 92.6, "Code": 79.8, "Safety": 93.7, "Easy": 92.0, "Normal": 88.1,
                "Hard": 77.6, "Overall": 85.9},
    "rmb": {"Help-BoN": 67.0, "Help-Pair": 81.0, "Harm-BoN": 69.3, "Harm-Pair": 81.6, "Overall": 74.7},
}


def reference_rows(groups: Optional[List[str]] = None) -> List[ReferenceRow]:
    """The reference rows of the given groups (``"brrm"``, ``"rmr1"``, ``"baseline"``; None = all)."""
    return [r for r in REFERENCE_ROWS if groups is None or r.group in groups]
