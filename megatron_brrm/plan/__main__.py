"""``python -m megatron_brrm.plan`` (see :mod:`megatron_brrm.plan.cli`)."""
import sys

from megatron_brrm.plan.cli import main

if __name__ == "__main__":
    sys.exit(main())
