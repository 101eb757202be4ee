"""A synthetic preference task whose correct answer a tiny model can learn (the GRPO learning check).

The signal. Every pair asks the same kind of short question; both responses are a few
filler words, and the *preferred* response additionally contains a fixed marker word
(default ``"correct"``) while the rejected one never does. The label is therefore a
deterministic function of the text: "the response that holds the marker is better". Both
orders of every pair are emitted (the swapped copy has the label flipped, as training uses
in BR-RM, docs/design.md §5), so a judge can only score above chance by looking at *where* the
marker is (Response 1 or Response 2), never by a fixed position preference. A random judge,
or one that ignores the responses, scores 50% on this data by construction.

``signal="hint"`` adds a second, easier cue: the user turn names the better reply
("... I like the reply: second second ...", the word repeated ``hint_repeats`` times; the
swapped copy names the other one). The verdict is then a one-hop lookup of a context token
instead of the two-hop "which block holds the marker" rule, which a 2-layer model did not
pick up within a CPU budget (see ``tools/learning_check.py``).

Train and held-out splits draw their filler words from disjoint halves of the word list, so
held-out accuracy measures the learned rule, not memorised pairs.

This module imports nothing of the project except the record type (docs/design.md §2).
"""
from __future__ import annotations

import random
from typing import Dict, List, Optional, Sequence

from .augment import swapped_copy
from .schema import DataError, PreferencePair

# Common English words (each in the shipped samples, so the tiny tokenizer has them as one or
# two tokens). Index parity splits them into the train and held-out pools.
FILLER_WORDS = (
    "apple", "river", "green", "table", "music", "stone", "light", "paper", "house", "water",
    "cloud", "chair", "smile", "bread", "north", "money", "plant", "glass", "sound", "story",
    "field", "night", "train", "voice", "metal", "floor", "dream", "power", "earth", "heart",
    "color", "sugar", "horse", "small", "large", "quick", "happy", "early", "clean", "round",
)
TOPICS = ("cats", "rain", "maps", "tea", "boats", "songs", "trees", "games", "books", "stars")
MARKER = "correct"
SOURCE = "synthetic_marker"
SIGNALS = ("hint", "marker")
HINT_WORDS = {1: "first", 2: "second"}
HINT_PREFIX = " I like the reply: "


def word_pool(split: str) -> List[str]:
    """The filler words of ``split``: ``"train"`` (even indices) or ``"val"`` (odd indices).

    Raises:
        DataError: unknown split name.
    """
    if split == "train":
        return list(FILLER_WORDS[0::2])
    if split == "val":
        return list(FILLER_WORDS[1::2])
    raise DataError(f"synthetic task: split must be 'train' or 'val', got {split!r}")


def marker_pair(rng: random.Random, index: int, words: Sequence[str], marker: Optional[str] = MARKER,
                num_filler_words: int = 1, split: str = "train", signal: str = "marker",
                hint_repeats: int = 16, hint_words: Optional[Dict[int, str]] = None) -> PreferencePair:
    """One pair in its seeded order: the preferred response holds ``marker``.

    Args:
        rng: source of the question topic, the filler words and the order.
        index: row number (goes into the id ``"synthetic_marker:<split>:<index>"``).
        words: filler-word pool (must not contain ``marker``).
        marker: the word that makes a response the better one; ``None`` gives both responses
            only filler words, so the hint is the sole signal (needs ``signal="hint"``).
        num_filler_words: filler words per response besides the marker (>= 0; the rejected
            response gets one more, so both have the same word count).
        signal: ``"marker"`` or ``"hint"`` (module docstring); hint_repeats: copies of the hint word.
        hint_words: ``{1: word, 2: word}`` naming the better reply (default :data:`HINT_WORDS`).

    Returns:
        A validated :class:`PreferencePair`; ``preference`` is the position of the marker (1 or 2),
        or the position the hint names when ``marker`` is None.

    Raises:
        DataError: ``num_filler_words`` < 0, an empty pool, a pool containing the marker, an
            unknown ``signal``, ``marker=None`` without the hint, or hint words that are not two
            distinct single words for keys 1 and 2.
    """
    if num_filler_words < 0:
        raise DataError(f"synthetic task: num_filler_words must be >= 0, got {num_filler_words}")
    if not words or (marker is not None and marker in words):
        raise DataError(f"synthetic task: the filler pool must be non-empty and exclude the marker {marker!r}")
    if marker is None and signal != "hint":
        raise DataError("synthetic task: marker=None leaves no signal unless signal='hint'")
    hints = _check_hint_words(HINT_WORDS if hint_words is None else hint_words)
    good = " ".join(([marker] if marker is not None else [rng.choice(words)])
                    + [rng.choice(words) for _ in range(num_filler_words)])
    bad = " ".join(rng.choice(words) for _ in range(num_filler_words + 1))
    first = rng.random() < 0.5
    r1, r2, pref = (good, bad, 1) if first else (bad, good, 2)
    question = f"Tell me about {rng.choice(TOPICS)}."
    if signal == "hint":
        if hint_repeats < 1:
            raise DataError(f"synthetic task: hint_repeats must be >= 1, got {hint_repeats}")
        question += HINT_PREFIX + " ".join([hints[pref]] * hint_repeats)
    elif signal != "marker":
        raise DataError(f"synthetic task: signal must be one of {SIGNALS}, got {signal!r}")
    return PreferencePair(id=f"{SOURCE}:{split}:{index}", context=[{"role": "user", "content": question}],
                          response1=r1, response2=r2, preference=pref, domain="general",
                          source=SOURCE).validate()


def _check_hint_words(hint_words: Dict[int, str]) -> Dict[int, str]:
    if (not isinstance(hint_words, dict) or set(hint_words) != {1, 2} or hint_words[1] == hint_words[2]
            or not all(isinstance(w, str) and len(w.split()) == 1 for w in hint_words.values())):
        raise DataError(f"synthetic task: hint_words must map 1 and 2 to two distinct single words, got {hint_words!r}")
    return hint_words


def _swapped(pair: PreferencePair, signal: str, hint_words: Dict[int, str]) -> PreferencePair:
    out = swapped_copy(pair)
    if signal == "hint":
        question, hint = pair.context[-1]["content"].split(HINT_PREFIX)
        text = question + HINT_PREFIX + " ".join([hint_words[out.preference]] * len(hint.split()))
        out.context = pair.context[:-1] + [{"role": "user", "content": text}]
    return out


def marker_task(num_pairs: int, seed: int, split: str = "train", both_orders: bool = True,
                marker: Optional[str] = MARKER, num_filler_words: int = 1, signal: str = "marker",
                hint_repeats: int = 16, hint_words: Optional[Dict[int, str]] = None) -> List[PreferencePair]:
    """The synthetic marker task (module docstring): ``num_pairs`` base pairs of ``split``.

    Args:
        num_pairs: base pairs to draw (>= 1).
        seed: RNG seed; the same arguments always give the same records.
        split: ``"train"`` or ``"val"`` (disjoint filler-word pools).
        both_orders: emit every pair followed by its swapped copy (label flipped, id
            ``+ ":swap"``): ``2 * num_pairs`` records with exactly half labelled 1.
        marker, num_filler_words, signal, hint_repeats, hint_words: see :func:`marker_pair`.

    Returns:
        ``num_pairs`` (or ``2 * num_pairs``) :class:`PreferencePair` records.

    Raises:
        DataError: ``num_pairs`` < 1 or bad arguments (see :func:`marker_pair`).
    """
    if num_pairs < 1:
        raise DataError(f"synthetic task: num_pairs must be >= 1, got {num_pairs}")
    rng = random.Random(f"{seed}:{split}")
    words = word_pool(split)
    out: List[PreferencePair] = []
    hints = HINT_WORDS if hint_words is None else hint_words
    for i in range(num_pairs):
        pair = marker_pair(rng, i, words, marker=marker, num_filler_words=num_filler_words, split=split, signal=signal,
                           hint_repeats=hint_repeats, hint_words=hints)
        out.append(pair)
        if both_orders:
            out.append(_swapped(pair, signal, hints))
    return out
