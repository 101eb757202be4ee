"""Evaluate a reward model on RewardBench, RM-Bench and RMB: ``python evaluation/run.py --help``.

The command line of :mod:`megatron_brrm.evaluation.run` (the implementation lives in the
installed package; this file keeps the command the README names).
"""
import sys

from megatron_brrm.evaluation.run import main

if __name__ == "__main__":
    sys.exit(main())
