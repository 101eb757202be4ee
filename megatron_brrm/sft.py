"""SFT warm start on judge traces: ``python -m megatron_brrm.sft --config <recipe>.yaml [key=value ...]``.

Trains the Megatron policy (the same Ray policy workers as GRPO) with a masked NLL loss on
the assistant turns of judge conversations, then writes the result as an HF folder that
GRPO starts from (``model.hf_path``). RM-R1 warm-starts its judge this way (distilled
reasoning traces); BR-RM trains from the base model, so SFT is optional.

Traces come from ``sft.traces_path`` (JSONL, one ``{"messages": [...]}`` per line), or, when
unset, ``sft.num_synthetic`` format-correct BR-RM conversations built from
``data.train_path`` pairs (:func:`megatron_brrm.rollout.traces.synthetic_trace`, verdicts per
``sft.verdict``). Token layout = the two-turn rollout's, so SFT and GRPO train on the same
sequences. Config: ``sft.num_steps`` optimizer steps of ``sft.global_batch_size`` traces with
the SFT's own optimizer and learning-rate schedule, ``sft.optimizer`` (GRPO's are not used).
"""
from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from tqdm.auto import tqdm
from transformers import AutoTokenizer

from megatron_brrm.config import ConfigError, RunConfig, load_config, save_config
from megatron_brrm.data import DataError
from megatron_brrm.data.sets import load_preference_data
from megatron_brrm.judge import get_protocol
from megatron_brrm.metrics import MetricsLogger
from megatron_brrm.rollout.traces import TraceError, read_traces, synthetic_trace, tokenize_trace
from megatron_brrm.workers.batching import sequences_to_batch
from megatron_brrm.workers.cluster import Cluster
from megatron_brrm.rl.loss import SFTLoss
from megatron_brrm.workers.policy_group import Policy

log = logging.getLogger("megatron_brrm.sft")


class SFTInputError(ValueError):
    """The SFT inputs are unusable (a broken traces or pairs file, no trace that fits); the message names the file."""


def build_sft_sequences(cfg: RunConfig, tokenizer) -> List[Tuple[List[int], List[int]]]:
    """Tokenized ``(token_ids, loss_mask)`` SFT sequences for the run (see module docstring).

    Raises:
        SFTInputError: a broken traces / pairs file (file and line named), no traces / pairs, or
            none fits ``rollout.max_total_sequence_length``.
    """
    try:
        return _build_sft_sequences(cfg, tokenizer)
    except (TraceError, DataError) as exc:
        raise SFTInputError(str(exc)) from None


def _build_sft_sequences(cfg: RunConfig, tokenizer) -> List[Tuple[List[int], List[int]]]:

    s = cfg.sft
    if s.traces_path:
        traces = list(read_traces(s.traces_path))
    else:
        protocol = get_protocol(cfg.judge.protocol, cfg.judge.template_dir)
        rng = random.Random(cfg.data.seed)
        try:
            pairs = load_preference_data(cfg.data).train
        except DataError as exc:
            raise SFTInputError(f"{exc} (or give judge traces in sft.traces_path)") from None
        rng.shuffle(pairs)
        traces = [synthetic_trace(protocol, p, rng, verdict=s.verdict, style=s.trace_style)
                  for p in pairs[: s.num_synthetic]]
    seqs = [tokenize_trace(tokenizer, t, tokenizer.eos_token_id) for t in traces]
    kept = [x for x in seqs if len(x[0]) <= cfg.rollout.max_total_sequence_length]
    if len(kept) < len(seqs):
        log.warning("dropped %d of %d SFT traces longer than rollout.max_total_sequence_length=%d",
                    len(seqs) - len(kept), len(seqs), cfg.rollout.max_total_sequence_length)
    if not kept:
        raise SFTInputError(f"no SFT trace fits rollout.max_total_sequence_length={cfg.rollout.max_total_sequence_length}")
    return kept


def run_sft(cfg: RunConfig) -> Path:
    """Run the SFT stage; returns the HF folder written (``sft.output_hf_dir``)."""


    if not cfg.model.hf_path:
        raise SFTInputError("model.hf_path is unset: SFT starts from an HF model folder")
    out = Path(cfg.logging.output_dir) / "sft"
    save_config(cfg, out)
    target = Path(cfg.sft.output_hf_dir or Path(cfg.logging.output_dir) / "sft_hf")
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.hf_path)
    seqs = build_sft_sequences(cfg, tokenizer)
    cluster = Cluster.from_config(cfg)
    metrics = MetricsLogger(out, tensorboard=cfg.logging.tensorboard)
    policy = Policy(cluster, cfg, optimizer=cfg.sft.optimizer, total_steps=cfg.sft.num_steps)
    try:
        order = list(range(len(seqs)))
        rng = random.Random(cfg.data.seed)
        pos, bs = len(order), cfg.sft.global_batch_size
        bar = tqdm(range(cfg.sft.num_steps), desc="SFT", unit="step", dynamic_ncols=True)
        for step in bar:
            rows = []
            while len(rows) < bs:
                if pos >= len(order):
                    rng.shuffle(order)
                    pos = 0
                rows.append(order[pos])
                pos += 1
            batch = sequences_to_batch([seqs[i][0] for i in rows], [seqs[i][1] for i in rows],
                                       pad_id=tokenizer.pad_token_id or 0)
            res = policy.train(batch, SFTLoss())
            m = {f"sft/{k}": v for k, v in res.metrics.items()}
            metrics.log(step + 1, m)
            bar.set_postfix(loss=f"{m.get('sft/loss', float('nan')):.3f}")
        policy.export_hf(target, cfg.model.hf_path, params_dtype=cfg.model.params_dtype)
    finally:
        cluster.shutdown()  # shuts the policy group down too (each rank tears down its process groups)
        metrics.close()
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megatron_brrm.sft", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML recipe (model_configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sft.num_steps=50 sft.traces_path=traces.jsonl")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        target = run_sft(cfg)
    except SFTInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"SFT finished: HF model written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
