"""Put evaluation results side by side: ``python evaluation/compare.py --help``.

The command line of :mod:`megatron_brrm.evaluation.compare` (the implementation lives in the
installed package; this file keeps the command the README names).
"""
import sys

from megatron_brrm.evaluation.compare import main

if __name__ == "__main__":
    sys.exit(main())
