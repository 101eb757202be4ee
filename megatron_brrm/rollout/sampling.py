"""Token sampling shared by the generation engines: per-sample seeds, temperature, top-p, logprobs.

Conventions (chosen to match vLLM's V1 sampler, ``vllm/v1/sample/sampler.py``):

* ``temperature < GREEDY_EPS`` (vLLM's ``_SAMPLING_EPS`` = 1e-5) means greedy decoding
  (argmax; ties go to the lowest token id). The reported logprob is then the log-softmax of
  the *unscaled* logits, as vLLM reports for greedy requests.
* Otherwise the logits are divided by the temperature, top-p (nucleus) filtering keeps the
  smallest set of most-probable tokens whose mass reaches ``top_p`` (a token is kept when the
  mass of the tokens ranked above it is ``< top_p``; the most probable token is always kept),
  and the token is drawn from the renormalised nucleus.
* The reported logprob of a sampled token is the log-softmax of the temperature-scaled
  logits over the *full* vocabulary, i.e. before top-p renormalisation. With ``top_p == 1``
  (the GRPO setting, docs/design.md §6) this equals vLLM's ``logprobs_mode="processed_logprobs"``
  and the trainer's ``log_softmax(logits / T)``; with ``top_p < 1`` vLLM's processed
  logprobs additionally subtract ``log(nucleus mass)``, ours do not (the trainer cannot see
  the nucleus, so the unrenormalised value is the one an importance ratio needs).

Randomness: every sample (row) owns a ``torch.Generator`` seeded by :func:`derive_sample_seed`
from the call's seed, the prompt's token ids and the sample's index within its prompt. A row's
random stream therefore does not depend on which other prompts share the batch, on the batch
size or on the row's position: generating a prompt alone or inside a padded batch draws the
same numbers. Draws use the exponential race (``argmax(p_i / q_i)``, ``q_i ~ Exp(1)``, which
samples ``i`` with probability ``p_i / sum(p)``; the same trick as vLLM's ``random_sample``).
"""
from __future__ import annotations

import hashlib
import struct
from typing import List, Optional, Sequence

import torch

from .engine import SamplingParams

GREEDY_EPS = 1e-5
_SEED_MASK = (1 << 63) - 1


def derive_sample_seed(seed: int, prompt_ids: Sequence[int], sample_index: int) -> int:
    """A 63-bit seed for one sample: blake2b of (seed, sample_index, prompt token ids).

    Args:
        seed: the call's seed (any Python int; reduced modulo 2**64).
        prompt_ids: the prompt's token ids (the hash covers all of them).
        sample_index: index of the sample among the ``n`` samples of this prompt.

    Returns:
        An int in ``[0, 2**63)``, usable by ``torch.Generator.manual_seed`` and vLLM.
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(struct.pack("<QQ", seed & 0xFFFFFFFFFFFFFFFF, sample_index & 0xFFFFFFFFFFFFFFFF))
    h.update(torch.as_tensor(list(prompt_ids), dtype=torch.int64).numpy().tobytes())
    return int.from_bytes(h.digest(), "little") & _SEED_MASK


def make_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> List[torch.Generator]:
    """One ``torch.Generator`` on ``device`` per seed."""
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s))
        gens.append(g)
    return gens


def top_p_keep_mask(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean mask of the tokens kept by nucleus filtering.

    Args:
        probs: ``[B, V]`` probabilities (float32), rows summing to 1.
        top_p: nucleus mass in ``(0, 1]``.

    Returns:
        ``[B, V]`` bool; a token is kept when the total probability of the tokens sorted
        before it (descending probability, ties by lower index first) is ``< top_p``.
    """
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p
    keep_sorted = mass_before < top_p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted)
    keep.scatter_(-1, order, keep_sorted)
    return keep


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, generators: Optional[Sequence[torch.Generator]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row and report its sampling logprob (conventions in the module doc).

    Args:
        logits: ``[B, V]`` next-token logits (any float dtype; computed in float32).
        temperature: ``>= 0``; below :data:`GREEDY_EPS` decoding is greedy.
        top_p: in ``(0, 1]``.
        generators: one generator per row (ignored when greedy).

    Returns:
        ``(tokens [B] int64, logprobs [B] float32)``.
    """
    logits = logits.float()
    if temperature < GREEDY_EPS:
        logp = torch.log_softmax(logits, dim=-1)
        tokens = torch.argmax(logits, dim=-1)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    scores = logp
    if top_p < 1.0:
        scores = logp.masked_fill(~top_p_keep_mask(logp.exp(), top_p), float("-inf"))
    if generators is None or len(generators) != logits.shape[0]:
        raise ValueError(f"sample_tokens needs one generator per row: got "
                         f"{None if generators is None else len(generators)} for {logits.shape[0]} rows")
    q = torch.stack([torch.empty(logits.shape[-1], device=logits.device, dtype=torch.float32).exponential_(generator=g)
                     for g in generators])
    q.clamp_(min=torch.finfo(torch.float32).tiny)  # Exp(1) may return 0.0; log(0) would break the argmax
    tokens = torch.argmax(scores - torch.log(q), dim=-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def validate_request(prompts, params: SamplingParams) -> None:
    """Raise ``ValueError`` naming the bad field of a ``generate`` request (shared by both engines)."""
    if not isinstance(prompts, (list, tuple)):
        raise ValueError(f"generate: prompts must be a list of token-id lists, got {type(prompts).__name__}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"generate: prompt {i} is empty; every prompt needs at least one token")
    if int(params.n) < 1:
        raise ValueError(f"SamplingParams.n must be >= 1, got {params.n}")
    if params.temperature < 0:
        raise ValueError(f"SamplingParams.temperature must be >= 0, got {params.temperature}")
    if not 0.0 < params.top_p <= 1.0:
        raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {params.top_p}")
    if int(params.max_new_tokens) < 1:
        raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {params.max_new_tokens}")
