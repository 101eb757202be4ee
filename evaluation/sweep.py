"""Evaluate every saved step of a training run: ``python evaluation/sweep.py --help``.

The command line of :mod:`megatron_brrm.evaluation.sweep` (the implementation lives in the
installed package; this file keeps the command the README names).
"""
import sys

from megatron_brrm.evaluation.sweep import main

if __name__ == "__main__":
    sys.exit(main())
