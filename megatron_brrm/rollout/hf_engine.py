"""``HFEngine``: a ``transformers`` causal LM as a :class:`GenerationEngine` (CPU and GPU).

The sampling loop is written here (not ``model.generate``) so that logprobs, stop strings and
seeding follow one documented contract, the one of vLLM (see :mod:`.sampling`, :mod:`.stops`):

* Prompts are left-padded into a batch; the attention mask zeroes the padding and position ids
  count real tokens only (``cumsum(mask) - 1``), so a padded row computes what it would alone.
* Each distinct prompt is prefilled once; its KV cache is then repeated for its ``n`` samples.
* Decoding feeds one token per row with the KV cache (``past_key_values``); rows that finish
  are dropped from the batch and the cache (``Cache.batch_select_indices``).
* A row finishes on an EOS token (``"stop"``, EOS kept), on a stop string (``"stop"``, see
  :mod:`.stops` for the token-boundary rule) or after ``max_new_tokens`` (``"length"``; a
  last token that is also an EOS/stop counts as ``"stop"``, as in vLLM).
* Per-row generators seeded from (call seed, prompt ids, sample index) make results
  independent of batch composition and reproducible for a given seed. With ``seed=None`` a
  seed is drawn from torch's global generator (so ``torch.manual_seed`` fixes it too).
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from .engine import EngineAbilities, GenerationEngine, GenerationOutput, SamplingParams
from .sampling import derive_sample_seed, make_generators, sample_tokens, validate_request
from .stops import StopStringChecker
from .weights import copy_named_tensors


class HFEngine(GenerationEngine):
    """Batched sampling with a KV cache on a ``transformers`` ``AutoModelForCausalLM``.

    Args:
        model_path_or_model: an HF model folder (loaded with ``AutoModelForCausalLM``) or an
            already-built causal LM module (its parameters are used in place; refit writes them).
        tokenizer: the HF tokenizer; loaded from the folder when omitted. Required with a module.
        device: where the model runs (the model is moved there).
        dtype: parameter dtype (the model is cast; sampling maths is float32 regardless).
        max_batch_size: most rows (prompt x sample) decoded together; larger requests are
            processed in chunks of this size (results do not depend on it, see module doc).
        attn_implementation: passed to ``from_pretrained`` (default: transformers' choice, sdpa).

    Raises:
        ValueError: a module is given without a tokenizer, or ``max_batch_size < 1``.
    """

    def __init__(self, model_path_or_model, tokenizer=None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, max_batch_size: int = 64,
                 attn_implementation: Optional[str] = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: keeps train --help fast

        if max_batch_size < 1:
            raise ValueError(f"HFEngine: max_batch_size must be >= 1, got {max_batch_size}")
        if isinstance(model_path_or_model, torch.nn.Module):
            if tokenizer is None:
                raise ValueError("HFEngine: pass tokenizer=... together with a model object "
                                 "(or pass the model's folder to load both)")
            model = model_path_or_model
        else:
            kwargs = {"dtype": dtype}
            if attn_implementation is not None:
                kwargs["attn_implementation"] = attn_implementation
            model = AutoModelForCausalLM.from_pretrained(str(model_path_or_model), **kwargs)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(str(model_path_or_model))
        self.device = torch.device(device)
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self._tokenizer = tokenizer
        self.max_batch_size = int(max_batch_size)
        self.eos_token_ids = self._eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else min(self.eos_token_ids))
        self.last_update_stats = {"tensors": 0, "bytes": 0}

    @staticmethod
    def _eos_ids(model, tokenizer) -> frozenset:
        ids = set()
        gen_cfg = getattr(model, "generation_config", None)
        for src in (getattr(gen_cfg, "eos_token_id", None), getattr(model.config, "eos_token_id", None),
                    tokenizer.eos_token_id):
            if src is None:
                continue
            ids.update([src] if isinstance(src, int) else list(src))
        if not ids:
            raise ValueError("HFEngine: neither the model's generation config nor the tokenizer defines an EOS token")
        return frozenset(int(i) for i in ids)

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def abilities(self) -> EngineAbilities:
        """EOS ids from the model's generation config, config and tokenizer; no sleep (the
        weights stay where they are); shares its weights when they live on the CPU."""
        return EngineAbilities(eos_token_ids=self.eos_token_ids, supports_sleep=False,
                               shares_weights=self.device.type == "cpu")

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: List[List[int]], params: SamplingParams,
                 group_ids: Optional[Sequence[int]] = None) -> List[List[GenerationOutput]]:
        """Generate ``params.n`` samples per prompt; returns ``[len(prompts)][params.n]`` outputs
        (``group_ids`` is not needed by one engine).

        Raises:
            ValueError: an empty prompt or an out-of-range sampling parameter.
        """
        validate_request(prompts, params)
        prompts = [[int(t) for t in p] for p in prompts]
        seed = params.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        rows = [(i, j, derive_sample_seed(seed, prompts[i], j)) for i in range(len(prompts)) for j in range(params.n)]
        results: List[List[Optional[GenerationOutput]]] = [[None] * params.n for _ in prompts]
        stops = StopStringChecker(self._tokenizer, params.stop)
        for start in range(0, len(rows), self.max_batch_size):
            chunk = rows[start:start + self.max_batch_size]
            outs = self._generate_chunk([prompts[i] for i, _, _ in chunk], [s for _, _, s in chunk], params, stops)
            for (i, j, _), out in zip(chunk, outs):
                results[i][j] = out
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_chunk(self, row_prompts: Sequence[List[int]], seeds: Sequence[int], params: SamplingParams,
                        stops: StopStringChecker) -> List[GenerationOutput]:
        dev = self.device
        # Prefill each distinct prompt once (rows of one prompt are consecutive), then expand.
        uniq: List[List[int]] = []
        row_to_uniq: List[int] = []
        for p in row_prompts:
            if not uniq or uniq[-1] != p:
                uniq.append(p)
            row_to_uniq.append(len(uniq) - 1)
        width = max(len(p) for p in uniq)
        input_ids = torch.full((len(uniq), width), self.pad_token_id, dtype=torch.long, device=dev)
        attn = torch.zeros((len(uniq), width), dtype=torch.long, device=dev)
        for r, p in enumerate(uniq):
            input_ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long, device=dev)
            attn[r, width - len(p):] = 1
        positions = (attn.cumsum(-1) - 1).clamp_(min=0)
        out = self.model(input_ids=input_ids, attention_mask=attn, position_ids=positions, use_cache=True,
                         logits_to_keep=1)
        cache = out.past_key_values
        expand = torch.tensor(row_to_uniq, dtype=torch.long, device=dev)
        if len(uniq) != len(row_prompts):
            cache.batch_select_indices(expand)
        logits = out.logits[:, -1, :].index_select(0, expand)
        attn = attn.index_select(0, expand)
        last_pos = positions[:, -1].index_select(0, expand)

        n_rows = len(row_prompts)
        gens = make_generators(seeds, dev)
        active = list(range(n_rows))  # row index of each batch slot
        tokens: List[List[int]] = [[] for _ in range(n_rows)]
        logprobs: List[List[float]] = [[] for _ in range(n_rows)]
        finish: List[Optional[str]] = [None] * n_rows
        max_new = int(params.max_new_tokens)
        while True:
            next_tok, next_lp = sample_tokens(logits, params.temperature, params.top_p, [gens[r] for r in active])
            next_tok_list = next_tok.tolist()
            next_lp_list = next_lp.tolist()
            keep_slots = []
            for slot, r in enumerate(active):
                t = next_tok_list[slot]
                tokens[r].append(t)
                logprobs[r].append(next_lp_list[slot])
                if t in self.eos_token_ids or (stops and stops.hit(tokens[r])):
                    finish[r] = "stop"
                elif len(tokens[r]) >= max_new:
                    finish[r] = "length"
                else:
                    keep_slots.append(slot)
            if not keep_slots:
                break
            if len(keep_slots) != len(active):
                sel = torch.tensor(keep_slots, dtype=torch.long, device=dev)
                cache.batch_select_indices(sel)
                attn, last_pos, next_tok = attn.index_select(0, sel), last_pos.index_select(0, sel), next_tok.index_select(0, sel)
                active = [active[s] for s in keep_slots]
            attn = torch.cat([attn, attn.new_ones((len(active), 1))], dim=1)
            last_pos = last_pos + 1
            out = self.model(input_ids=next_tok[:, None], attention_mask=attn, position_ids=last_pos[:, None],
                             past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1, :]

        return [GenerationOutput(
            token_ids=tokens[r],
            text=self._tokenizer.decode(tokens[r], skip_special_tokens=False, clean_up_tokenization_spaces=False),
            logprobs=logprobs[r] if params.logprobs else [],
            finish_reason=finish[r] or "length",
        ) for r in range(n_rows)]

    @torch.inference_mode()
    def score(self, sequences: Sequence[Sequence[int]]) -> List[List[float]]:
        """Per-token logprobs at temperature 1 (see ``GenerationEngine.score``), computed in
        batches of ``max_batch_size`` right-padded rows (float32 log-softmax).

        Raises:
            ValueError: an empty sequence.
        """
        seqs = [[int(t) for t in s] for s in sequences]
        if any(len(s) == 0 for s in seqs):
            raise ValueError("score: every sequence needs at least one token")
        out: List[List[float]] = []
        for start in range(0, len(seqs), self.max_batch_size):
            chunk = seqs[start:start + self.max_batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), self.pad_token_id, dtype=torch.long, device=self.device)
            mask = torch.zeros_like(ids)
            for r, s in enumerate(chunk):
                ids[r, :len(s)] = torch.tensor(s, dtype=torch.long, device=self.device)
                mask[r, :len(s)] = 1
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            for r, s in enumerate(chunk):
                out.append([0.0] + lp[r, :len(s) - 1].tolist())
        return out

    # ------------------------------------------------------------------ refit
    def update_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Copy streamed ``(hf_name, tensor)`` pairs into the model's parameters, in place.

        Names are the model's ``named_parameters(remove_duplicate=False)`` names (tied weights
        answer to both names). Tensors are copied one by one (device/dtype converted by
        ``copy_``), so no second full copy of the model exists. ``last_update_stats`` records
        the tensor count and bytes of the last call.

        Raises:
            KeyError: an unknown name (named in the message).
            ValueError: a shape mismatch (name and both shapes in the message).
        """
        params = dict(self.model.named_parameters(remove_duplicate=False))
        count, nbytes = copy_named_tensors(params, named_tensors, where="the HF engine's model")
        self.last_update_stats = {"tensors": count, "bytes": nbytes}
