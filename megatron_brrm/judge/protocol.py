"""The judge-protocol interface and the per-trajectory environment (:class:`Episode`).

A :class:`JudgeProtocol` turns a preference pair into chat messages, tells the rollout loop
what to append between turns and where to stop generating, and parses the judge's outputs.
An :class:`Episode` is one trajectory's environment: the rollout loop feeds it the text the
judge generated for the current turn and gets back either the next user message or, after
the final turn, the parsed verdict and the reward. Protocols: ``brrm`` (two turns, BR-RM,
arXiv 2510.23596) and ``rmr1`` (one turn, RM-R1 chain-of-rubrics, arXiv 2505.02387).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, List, Optional, Sequence

from .results import EnvStep, Turn1Result, Verdict
from .reward import RewardRule, check_label, compute_reward


def check_responses(response1: str, response2: str) -> None:
    """Raise ``ValueError`` unless both responses are str."""
    for name, value in (("response1", response1), ("response2", response2)):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a str, got {type(value).__name__}")


def check_preference(preference: int) -> int:
    """Return ``preference`` if it is 1 or 2, else raise ``ValueError``."""
    if isinstance(preference, bool) or preference not in (1, 2):
        raise ValueError(f"preference must be 1 or 2, got {preference!r}")
    return int(preference)


def check_analysis(name: str, text: str, forbidden: Sequence[str]) -> str:
    """Return ``text`` stripped; raise ``ValueError`` if not a str or it contains a marker
    (case-insensitive), which would make the formatted output parse differently."""
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a str, got {type(text).__name__}")
    low = text.lower()
    for marker in forbidden:
        if marker.lower() in low:
            raise ValueError(f"{name} contains the format marker {marker!r}; remove it so the output parses back")
    return text.strip()


class JudgeProtocol(ABC):
    """A pairwise generative-judge format.

    Attributes:
        name: registry name (``"brrm"``, ``"rmr1"``).
        num_turns: generated turns per trajectory (brrm 2, rmr1 1).
        template_dir: the folder the templates were loaded from (``None`` = shipped wording).
    """

    name: str = ""
    num_turns: int = 1
    template_dir: Optional[str] = None

    @abstractmethod
    def turn1_messages(self, context: List[Dict[str, str]], response1: str, response2: str) -> List[Dict[str, str]]:
        """Chat messages ``[{"role", "content"}, ...]`` that open a trajectory; feed them to
        ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``.

        Raises:
            ValueError: malformed ``context`` (names the message index) or non-str responses.
        """

    @abstractmethod
    def followup_message(self, turn: int) -> Optional[Dict[str, str]]:
        """The user message to append before 0-based turn ``turn`` (``None`` if there is none)."""

    @abstractmethod
    def stop_strings(self, turn: int) -> List[str]:
        """Stop strings for generating 0-based turn ``turn`` (kept in the output).

        Raises:
            ValueError: ``turn`` is not in ``range(num_turns)``.
        """

    @abstractmethod
    def parse_turn1(self, text: str) -> Turn1Result:
        """Parse the first turn's output. Never raises."""

    @abstractmethod
    def parse_verdict(self, text: str) -> Verdict:
        """Parse the final turn's output into a verdict. Never raises on any string."""

    @abstractmethod
    def format_turn_output(self, turn: int, *, preference: int, dimensions: Optional[Sequence[str]] = None,
                           analysis1: str = "", analysis2: str = "") -> str:
        """A well-formed judge output for ``turn`` (synthetic SFT traces, tests).

        Raises:
            ValueError: bad ``turn``, ``preference`` not 1/2, unknown or 0 / >3 dimensions, or an
                analysis text containing a format marker (it would not parse back).
        """

    def new_episode(self, label: int, rule: Optional[RewardRule] = None) -> "Episode":
        """A fresh environment for one trajectory judged against human ``label`` (1 or 2).

        Raises:
            ValueError: ``label`` is not 1 or 2.
        """
        return Episode(self, label, rule if rule is not None else RewardRule())

    def _check_turn(self, turn: int) -> int:
        if isinstance(turn, bool) or not isinstance(turn, int) or not 0 <= turn < self.num_turns:
            raise ValueError(f"protocol {self.name!r} has turns 0..{self.num_turns - 1}, got turn={turn!r}")
        return turn

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, num_turns={self.num_turns}, template_dir={self.template_dir!r})"


class Episode:
    """One trajectory's environment; stateful, one :meth:`step` per generated turn.

    Attributes:
        protocol, label, rule: as given.
        turn: 0-based index of the turn the next :meth:`step` call consumes.
        done: True after the final turn.
        turn1: the parsed first turn (multi-turn protocols), else ``None``.
        verdict, reward: set when done.
        texts: the generated texts given so far.
    """

    def __init__(self, protocol: JudgeProtocol, label: int, rule: RewardRule):
        self.protocol = protocol
        self.label = check_label(label)
        self.rule = rule
        self.turn = 0
        self.done = False
        self.turn1: Optional[Turn1Result] = None
        self.verdict: Optional[Verdict] = None
        self.reward: Optional[float] = None
        self.texts: List[str] = []

    def stop_strings(self) -> List[str]:
        """Stop strings for the turn about to be generated.

        Raises:
            RuntimeError: the episode is finished.
        """
        if self.done:
            raise RuntimeError("episode is finished; no further turn to generate")
        return self.protocol.stop_strings(self.turn)

    def step(self, text: str) -> EnvStep:
        """Consume the judge's generated ``text`` for the current turn.

        Returns:
            Before the final turn: ``EnvStep(done=False, next_message=<user message>, turn1=...)``.
            After the final turn: ``EnvStep(done=True, reward=float, verdict=Verdict, turn1=...)``.
            A malformed output is a reward (``rule.malformed``), never an exception.

        Raises:
            RuntimeError: the episode already finished (create a new one per trajectory).
            TypeError: ``text`` is not a str (a caller bug, not a model output).
        """
        if self.done:
            raise RuntimeError(
                f"episode already finished after {self.protocol.num_turns} turn(s); "
                f"call protocol.new_episode(...) for the next trajectory"
            )
        if not isinstance(text, str):
            raise TypeError(f"Episode.step expects the generated text as str, got {type(text).__name__}")
        self.texts.append(text)
        last = self.protocol.num_turns - 1
        if self.turn < last:
            if self.turn == 0:
                self.turn1 = self.protocol.parse_turn1(text)
            self.turn += 1
            return EnvStep(done=False, next_message=self.protocol.followup_message(self.turn), turn1=self.turn1)
        self.verdict = self.protocol.parse_verdict(text)
        self.reward = compute_reward(self.verdict, self.label, self.rule, self.turn1)
        self.done = True
        return EnvStep(done=True, next_message=None, reward=self.reward, verdict=self.verdict, turn1=self.turn1)
