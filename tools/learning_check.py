"""GRPO learning check: ``python tools/learning_check.py [--quick] [--config ...] [key=value ...]``.

The end-to-end test that catches sign, mask and advantage bugs (issue 5, "Learning check").

Task (``megatron_brrm/data/synthetic.py``): in every preference pair the preferred response
holds the marker word ``correct`` and the rejected one does not; both orders of every pair
are present (a position-only judge scores exactly 50%). ``--signal hint`` (default) also
names the better reply in the user turn (``first``/``second``, repeated ``--hint-repeats``
times): the verdict is then a one-hop lookup of a context token; ``--signal marker`` leaves
only the marker, so the judge must tell *where* the marker is (a two-hop, order-dependent
rule). Held-out pairs use filler words disjoint from the training ones.

Steps, all in this process with the project's own APIs:

1. a tiny random Qwen3 model (sizes from ``model.tiny_*``) with a BPE tokenizer trained on
   the task's traces and the shipped samples (markers become whole-word tokens);
2. train / held-out JSONL of the marker task;
3. SFT warm start (:func:`megatron_brrm.sft.run_sft`, TP=2 policy ranks) on format-correct
   BR-RM traces (:func:`warm_start_traces`): every task pair with a seeded coin-flip verdict
   (the format, and nothing about what ``first``/``second`` mean, so held-out accuracy starts
   near 50%), plus as many labelled *cue* pairs whose user turn names the better reply with
   other words (``--sft-cue-words``: left/right, up/down, ... eight pairs; no marker in either
   response). The cue pairs teach the skill "read the preference named in the user turn"; GRPO
   must then learn the task's own words from rewards alone. The traces use short analyses (one
   focus dimension, one-word analyses) so generations stay short on CPU;
4. GRPO (:class:`megatron_brrm.train.GRPOTrainer` ``.fit()``: two-turn HF-engine rollouts,
   Megatron policy at TP=2 in Ray actors, refit every step), with validation on the held-out
   pairs every ``grpo.val_every_n_steps`` steps (one sample per pair, fixed seed);
5. the summary: held-out accuracy and format-error rate after SFT (GRPO step 0) and after
   GRPO, the per-step curves, the elapsed time and the load average, printed and written to
   ``<output-dir>/learning_check.json``.

Exit status 0 when the targets are met, 1 when they are missed, 2 on a bad config.

Targets. Full form: final held-out accuracy >= 0.80, format-error rate not raised beyond
sampling noise (``p1 <= p0 + 3 * sigma_diff``, below), within ``--time-limit`` seconds (600).
Its warm start leaves only ~1-7% malformed outputs at temperature 0.7, too few for a
significant drop at N = 128; the quick form is the one that asserts GRPO lowers the rate.
Rollouts (and validation) sample at temperature 0.7, GRPO runs 40 steps with a 10-step lr
warm-up; the reasons for each setting are in ``model_configs/learning_check.yaml``.
``--quick`` (CI): temperature 1.0 after a shorter SFT without cue pairs (80 steps at lr 1e-2,
format errors ~0.4; with the cue pairs the same SFT left only ~0.04 at temperature 1.0, and
nothing to lower), 20 GRPO steps at a constant lr; the held-out format-error rate must fall by
at least ``3 * sigma_diff``, ``sigma_diff = sqrt((p0 (1 - p0) + p1 (1 - p1)) / N)`` the standard
deviation of the difference of two independent binomial rates p0 (after SFT) and p1 (after
GRPO) over N = 128 held-out trajectories (a policy that did not improve passes with
probability ~0.1%), and held-out accuracy must not fall below chance on the well-formed
verdicts (``acc >= 0.5 * (1 - format_error) - 3 * sqrt(0.25 / N)``): a sign error in the
advantages or a mask that misses generated tokens fails it. The quick form does not assert an
accuracy gain: at temperature 1.0 the format, not the verdict, dominates its 20 steps.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from megatron_brrm.config import ConfigError, load_config  # noqa: E402
from megatron_brrm.data import write_pairs  # noqa: E402
from megatron_brrm.data.synthetic import FILLER_WORDS, HINT_WORDS, TOPICS, marker_task  # noqa: E402
from megatron_brrm.judge import get_protocol  # noqa: E402
from megatron_brrm.rollout.traces import synthetic_trace, tokenize_trace, write_traces  # noqa: E402
from megatron_brrm.run_summary import diff_se, read_metrics  # noqa: E402  (after the sys.path entry)

DEFAULT_CONFIG = REPO_ROOT / "model_configs" / "learning_check.yaml"

# The reduced CI form, applied before the user's overrides: a short, weakly warm-started run at
# temperature 1.0 whose format-error rate starts high (~0.4), so 20 GRPO steps must lower it by
# far more than sampling noise (measured 0.38 -> 0.29 after 10 steps, under 2 sigma; 0.38 ->
# 0.14 after 20, 4.6 sigma). It checks the sign of the whole signal path (reward -> advantage ->
# masked token loss -> optimizer -> refit) in ~4 minutes; the accuracy target needs the full
# form (module docstring).
QUICK_OVERRIDES = [
    "grpo.max_num_steps=20", "grpo.val_every_n_steps=10", "rollout.temperature=1.0", "grpo.kl_coef=0.01",
    "grpo.optimizer.lr_warmup_steps=0", "grpo.optimizer.lr_decay_style=constant", "sft.num_steps=80", "sft.optimizer.lr=1e-2",
]

FULL_TARGETS = {"min_final_accuracy": 0.80}
SIGNAL_TEXT = {
    "hint": "the user turn names the better reply ('first'/'second'), which also holds the word 'correct'",
    "marker": "the better reply holds the word 'correct' (position must be read)",
}


def _noise_sigma(n: int) -> float:
    """Largest std of the difference of two independent rates over ``n`` trajectories (variance <= 0.25 each)."""
    return math.sqrt(2 * 0.25 / max(n, 1))


def _diff_sigma(p0: float, p1: float, n: int) -> float:
    """Std of ``p0 - p1`` for two independent binomial proportions over ``n`` trials each (Wald)."""
    return diff_se(p0, n, p1, n)


def short_traces(protocol, pairs, verdicts: Sequence[int]) -> List[List[Dict[str, str]]]:
    """Format-correct BR-RM conversations for the SFT warm start, one per pair, with the given verdicts.

    The short style of :func:`megatron_brrm.rollout.traces.synthetic_trace` (one focus
    dimension, one-word analyses: ~100 generated tokens instead of ~300). ``verdicts[i]`` (1 or
    2) is written in both turns of trace ``i``: seeded coin flips carry no information about the
    answer, the labels of the cue pairs teach the reading skill (:func:`warm_start_traces`).

    Raises:
        ValueError: ``verdicts`` and ``pairs`` differ in length.
    """
    if len(verdicts) != len(pairs):
        raise ValueError(f"short_traces: {len(pairs)} pairs but {len(verdicts)} verdicts")
    rng = random.Random(0)  # unused by the short style with given verdicts
    return [synthetic_trace(protocol, dataclasses.replace(p, preference=v), rng, verdict="label", style="short")
            for p, v in zip(pairs, verdicts)]


def warm_start_traces(protocol, train, cue_pairs, seed: int) -> List[List[Dict[str, str]]]:
    """The SFT traces: every task pair with a coin-flip verdict, then every cue pair with its label.

    The task pairs (hint words ``first``/``second``) teach the format and nothing about the
    answer: their verdicts are ``random.Random(seed)`` coin flips, and SFT drives the verdict
    of exactly these words to 50/50. The cue pairs (other hint words, no marker in either
    response) carry correct verdicts: they teach the judge to read a preference cue from the
    user turn, a skill, without the task's own words. Without them the random-verdict SFT
    leaves a saddle (the verdict logit does not depend on the input at all) that GRPO left
    after 60-80 steps at one model seed and not within 80 at another; with them GRPO only has
    to learn what ``first``/``second`` mean (measured in ``model_configs/learning_check.yaml``).
    """
    rng = random.Random(seed)
    coin = [rng.choice((1, 2)) for _ in train]
    return short_traces(protocol, train, coin) + short_traces(protocol, cue_pairs, [p.preference for p in cue_pairs])


def teacher_forced_verdicts(model_dir, protocol, pairs) -> Dict[str, float]:
    """How a model's verdict depends on the input, read off its logits (no sampling).

    For each pair, the short trace of :func:`short_traces` is written twice, with verdict 1
    and with verdict 2; the two token sequences first differ at the verdict token. The model
    (``transformers``, fp32, CPU) reads the shared prefix, and ``d = logit(verdict-1 token) -
    logit(verdict-2 token)`` at its last position is the judge's preference for Response 1.

    Returns:
        ``{"accuracy": share of pairs with sign(d) matching the label, "logit_diff_std": std of
        d over the pairs}``. A judge that ignores the input has std ~0 (and accuracy 0.5 on
        pairs present in both orders).

    Raises:
        ValueError: no pairs, or the two traces of a pair do not differ (the protocol does not
            write the verdict as text).
    """
    import torch  # lazy: keeps learning_check.py --help fast
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: keeps learning_check.py --help fast

    if not pairs:
        raise ValueError("teacher_forced_verdicts: no pairs")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    diffs, right = [], 0
    with torch.no_grad():
        for p in pairs:
            ids1, ids2 = (tokenize_trace(tok, t, tok.eos_token_id)[0] for t in short_traces(protocol, [p, p], [1, 2]))
            pos = next((i for i, (a, b) in enumerate(zip(ids1, ids2)) if a != b), None)
            if pos is None:
                raise ValueError(f"teacher_forced_verdicts: verdicts 1 and 2 give the same tokens for pair {p.id}")
            logits = model(torch.tensor([ids1[:pos]])).logits[0, -1]
            d = float(logits[ids1[pos]] - logits[ids2[pos]])
            diffs.append(d)
            right += (d > 0) == (p.preference == 1)
    mean = sum(diffs) / len(diffs)
    return {"accuracy": right / len(pairs), "logit_diff_std": math.sqrt(sum((d - mean) ** 2 for d in diffs) / len(diffs))}


def _task_tokenizer(out: Path, traces, vocab_size: int) -> str:
    """Train the tiny BPE tokenizer on the task's own texts first, then the shipped samples.

    :func:`megatron_brrm.model.tiny.train_tokenizer` reads at most 3M characters, in file
    order; putting the judge conversations first makes the BR-RM markers whole-word tokens
    (a trace is ~340 tokens instead of ~590), which halves generation time on CPU.
    """
    # lazy: keeps learning_check.py --help fast
    from megatron_brrm.model.tiny import default_corpus_files, train_tokenizer

    corpus = out / "tokenizer_corpus.txt"
    corpus.write_text("\n".join(m["content"] for t in traces for m in t), encoding="utf-8")
    tok = train_tokenizer(vocab_size, [corpus] + default_corpus_files())
    tok.save_pretrained(out / "tokenizer")
    return str(out / "tokenizer")


def _resolve(path: Optional[str]) -> Optional[str]:
    """A relative path that does not exist from the current folder is taken from the repo root."""
    if path is None or os.path.isabs(path) or os.path.exists(path):
        return path
    return str(REPO_ROOT / path)



DEFAULT_CUE_WORDS = "left,right;up,down;red,blue;hot,cold;east,west;black,white;old,new;top,bottom"


def _cue_words(text: str) -> List[Dict[int, str]]:
    """argparse type of ``--sft-cue-words``: ``none``, or ``;``-separated pairs ``w1,w2`` of distinct
    single words, none of them a task hint word, a filler word or a question topic
    (:mod:`megatron_brrm.data.synthetic`)."""
    if text == "none":
        return []
    reserved = set(HINT_WORDS.values()) | set(FILLER_WORDS) | set(TOPICS)
    out, seen = [], set()
    for item in text.split(";"):
        words = item.split(",")
        if (len(words) != 2 or not all(w.isalpha() for w in words) or words[0] == words[1]
                or set(words) & (reserved | seen)):
            raise argparse.ArgumentTypeError(
                f"expected 'none' or ';'-separated pairs 'w1,w2' of distinct words, each used once and none of "
                f"the task's hint, filler or topic words; bad pair {item!r} in {text!r}")
        seen |= set(words)
        out.append({1: words[0], 2: words[1]})
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/learning_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="recipe (default model_configs/learning_check.yaml)")
    p.add_argument("--quick", action="store_true", help="reduced CI form with the weaker criterion (module docstring)")
    p.add_argument("--output-dir", default=None, help="default: logging.output_dir of the recipe (+ '_quick')")
    p.add_argument("--num-train-pairs", type=int, default=128, help="base training pairs (x2 orders)")
    p.add_argument("--num-val-pairs", type=int, default=64, help="base held-out pairs (x2 orders)")
    p.add_argument("--num-cue-pairs", type=int, default=None,
                   help="base cue pairs (x2 orders) in the warm start, split over --sft-cue-words (default: twice "
                        "--num-train-pairs; with as many as the task pairs one of three seeds had not learned to read "
                        "the cue after the 150 SFT steps)")
    p.add_argument("--tokenizer-dir", default=None, help="reuse a saved tiny tokenizer (skips training one)")
    p.add_argument("--signal", choices=("hint", "marker"), default="hint",
                   help="task signal (megatron_brrm/data/synthetic.py): hint (the user names the better reply) or "
                        "marker (the better reply holds the word 'correct')")
    p.add_argument("--hint-repeats", type=int, default=16, help="repetitions of the hint word in the context")
    p.add_argument("--sft-cue-words", default=None, type=_cue_words,
                   help="hint-word pairs ('w1,w2;w3,w4;...') of the warm start's labelled cue pairs, which teach reading "
                        "a cue from the user turn (several pairs, so the skill is not tied to one word); 'none': the "
                        f"warm start has only the task's random-verdict traces (default: {DEFAULT_CUE_WORDS}; "
                        "with --quick: none, see the module docstring)")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds allowed for SFT + GRPO (full form)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. grpo.max_num_steps=40")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning,ignore::FutureWarning")
    overrides = (QUICK_OVERRIDES if args.quick else []) + list(args.overrides)
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.checkpoint.save_dir:
        print("note: checkpoint.save_dir is set; the learning check writes no checkpoint, ignoring it", file=sys.stderr)
    out = Path(args.output_dir or (cfg.logging.output_dir + ("_quick" if args.quick else ""))).absolute()
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    t_start = time.time()

    from megatron_brrm.model.tiny import build_tiny_hf_model  # lazy: keeps learning_check.py --help fast

    template_dir = _resolve(cfg.judge.template_dir)
    protocol = get_protocol(cfg.judge.protocol, template_dir)
    task = dict(signal=args.signal, hint_repeats=args.hint_repeats, num_filler_words=0)
    train = marker_task(args.num_train_pairs, seed=cfg.data.seed, split="train", **task)
    val = marker_task(args.num_val_pairs, seed=cfg.data.seed, split="val", **task)
    cue_words = args.sft_cue_words
    if cue_words is None:
        cue_words = [] if args.quick else _cue_words(DEFAULT_CUE_WORDS)
    cue_pairs = []  # --num-cue-pairs base pairs (x2 orders), split over the cue-word pairs
    num_cue = 2 * args.num_train_pairs if args.num_cue_pairs is None else args.num_cue_pairs
    for k, words in enumerate(cue_words):
        n = num_cue // len(cue_words) + (k < num_cue % len(cue_words))
        if n:
            cue_pairs += marker_task(n, seed=cfg.data.seed + 1 + k, split="train", marker=None, signal="hint",
                                     hint_repeats=args.hint_repeats, num_filler_words=0, hint_words=words)
    write_pairs(out / "train.jsonl", train)
    write_pairs(out / "val.jsonl", val)
    traces = warm_start_traces(protocol, train, cue_pairs, seed=cfg.data.seed)
    traces_path = out / "sft_traces.jsonl"
    write_traces(traces_path, traces)
    tokenizer_dir = args.tokenizer_dir or _task_tokenizer(out, traces, cfg.model.tiny_vocab_size)

    m = cfg.model
    hf_dir = build_tiny_hf_model(out / "tiny_hf", arch="qwen3", seed=cfg.parallel.seed, tokenizer_dir=tokenizer_dir,
                                 num_layers=m.tiny_num_layers, hidden_size=m.tiny_hidden_size,
                                 num_attention_heads=m.tiny_num_attention_heads,
                                 num_key_value_heads=m.tiny_num_key_value_heads, head_dim=m.tiny_head_dim,
                                 intermediate_size=m.tiny_intermediate_size, vocab_size=m.tiny_vocab_size,
                                 tie_word_embeddings=m.tiny_tie_word_embeddings)
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, hf_path=str(hf_dir), megatron_path=None),
        data=dataclasses.replace(cfg.data, train_path=str(out / "train.jsonl"), val_path=str(out / "val.jsonl")),
        judge=dataclasses.replace(cfg.judge, template_dir=template_dir),
        checkpoint=dataclasses.replace(cfg.checkpoint, save_dir=None),
        logging=dataclasses.replace(cfg.logging, output_dir=str(out)),
        sft=dataclasses.replace(cfg.sft, traces_path=str(traces_path), output_hf_dir=str(out / "sft_hf")),
    )
    t_setup = time.time() - t_start

    from megatron_brrm.sft import run_sft  # lazy: keeps learning_check.py --help fast
    from megatron_brrm.train import GRPOTrainer  # lazy: keeps learning_check.py --help fast

    t0 = time.time()
    sft_hf = run_sft(cfg)
    t_sft = time.time() - t0
    warm_start = {"task": teacher_forced_verdicts(sft_hf, protocol, val)}
    if cue_pairs:
        cue_val = marker_task(args.num_val_pairs, seed=cfg.data.seed + 1, split="val", marker=None, signal="hint",
                              hint_repeats=args.hint_repeats, num_filler_words=0, hint_words=cue_words[0])
        warm_start["cue"] = teacher_forced_verdicts(sft_hf, protocol, cue_val)
        if warm_start["cue"]["accuracy"] < 0.9:
            print(f"warning: the warm start does not read the cue (held-out cue accuracy "
                  f"{warm_start['cue']['accuracy']:.2f}, teacher-forced); GRPO will likely stay near chance. "
                  f"Raise sft.num_steps or --num-cue-pairs.", file=sys.stderr)

    metrics_path = out / "metrics.jsonl"
    if metrics_path.exists():
        metrics_path.unlink()  # fit() appends; a rerun into the same folder starts a fresh curve
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hf_path=str(sft_hf)))
    t0 = time.time()
    trainer = GRPOTrainer(cfg, resume=False)
    try:
        last = trainer.fit()
        if "validation/accuracy" not in last:
            last = dict(last, **trainer.validate())
            trainer.metrics.log(trainer.step, {k: v for k, v in last.items() if k.startswith("validation/")})
    finally:
        trainer.close()
    t_grpo = time.time() - t0
    elapsed = time.time() - t_start

    rows = read_metrics(metrics_path)
    val_curve = [{"step": r["step"], "accuracy": r["validation/accuracy"],
                  "format_error_rate": r["validation/format_error_rate"]} for r in rows if "validation/accuracy" in r]
    train_curve = [{"step": r["step"], "accuracy": r.get("rollout/accuracy"),
                    "format_error_rate": r.get("rollout/format_error_rate"), "reward_mean": r.get("rollout/reward_mean"),
                    "step_s": r.get("timing/step")} for r in rows if "rollout/accuracy" in r]
    if not val_curve or val_curve[0]["step"] != 0:
        print("error: no step-0 validation in metrics.jsonl (data.val_path unset?)", file=sys.stderr)
        return 1
    before, after = val_curve[0], val_curve[-1]
    n_val = min(len(val), cfg.grpo.val_num_pairs)
    sigma = _noise_sigma(n_val)
    checks: Dict[str, bool] = {}
    fmt_before, fmt_after = before["format_error_rate"], after["format_error_rate"]
    if args.quick:
        checks["format_error_drop>=3sigma"] = fmt_before - fmt_after >= 3 * _diff_sigma(fmt_before, fmt_after, n_val)
        checks["accuracy_not_below_chance"] = after["accuracy"] >= 0.5 * (1 - fmt_after) - 3 * math.sqrt(0.25 / n_val)
    else:
        checks["final_accuracy>=0.80"] = after["accuracy"] >= FULL_TARGETS["min_final_accuracy"]
        # a guard, not a gain: after this warm start only ~1-7% of held-out outputs are malformed at
        # temperature 0.7, too few for a significant drop at N=128 (the quick form asserts the drop)
        checks["format_error_not_raised"] = fmt_after <= fmt_before + 3 * _diff_sigma(fmt_before, fmt_after, n_val)
        checks["within_time_limit"] = t_sft + t_grpo <= args.time_limit
    passed = all(checks.values())
    summary = {
        "mode": "quick" if args.quick else "full", "passed": passed, "checks": checks,
        "signal": SIGNAL_TEXT[args.signal] + "; both orders of every pair present",
        "hint_repeats": args.hint_repeats if args.signal == "hint" else 0, "sft_cue_words": [[w[1], w[2]] for w in cue_words],
        "warm_start_teacher_forced": warm_start,
        "before": before, "after": after, "num_val_trajectories": n_val, "noise_sigma_diff": sigma,
        "validation_curve": val_curve, "train_curve": train_curve,
        "seconds": {"setup": t_setup, "sft": t_sft, "grpo": t_grpo, "total": elapsed},
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "config": {"grpo.max_num_steps": cfg.grpo.max_num_steps, "grpo.num_prompts_per_step": cfg.grpo.num_prompts_per_step,
                   "grpo.num_generations": cfg.grpo.num_generations, "grpo.optimizer.lr": cfg.grpo.optimizer.lr,
                   "grpo.kl_coef": cfg.grpo.kl_coef, "rollout.temperature": cfg.rollout.temperature,
                   "sft.num_steps": cfg.sft.num_steps, "sft.optimizer.lr": cfg.sft.optimizer.lr,
                   "num_train_rows": len(train), "num_val_rows": len(val)},
        "output_dir": str(out),
    }
    (out / "learning_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\nGRPO learning check (%s)" % summary["mode"])
    print(f"  held-out accuracy     {before['accuracy']:.3f} (after SFT) -> {after['accuracy']:.3f} (after GRPO, "
          f"step {after['step']}); noise sigma of the difference {sigma:.3f} (N={n_val})")
    print(f"  held-out format error {fmt_before:.3f} -> {fmt_after:.3f}")
    print("  warm start, teacher-forced verdicts on held-out pairs: " + ", ".join(
        f"{k} accuracy {v['accuracy']:.2f} (logit-difference std {v['logit_diff_std']:.3f})" for k, v in warm_start.items()))
    print("  validation curve: " + ", ".join(f"{r['step']}:{r['accuracy']:.2f}/{r['format_error_rate']:.2f}" for r in val_curve))
    print(f"  time: setup {t_setup:.0f} s, SFT {t_sft:.0f} s, GRPO {t_grpo:.0f} s, total {elapsed:.0f} s; "
          f"load average {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    print("  checks: " + ", ".join(f"{k}={'ok' if v else 'FAILED'}" for k, v in checks.items()))
    print(f"  summary: {out / 'learning_check.json'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
