"""Resolve a model reference to a local HF folder: a folder is used as is, a hub id is downloaded.

Users name base models the way they do everywhere else (``Qwen/Qwen3-8B``); everything
downstream (Megatron build, converters, engines) reads a local folder. Tests and the demo
only pass local folders, so nothing is downloaded there. Imports nothing of the project.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


def is_hub_id(ref: str) -> bool:
    """Whether ``ref`` has the shape of a hub model id (``org/name``)."""
    return bool(_HUB_ID.match(ref)) and not ref.startswith((".", "/"))


def resolve_hf_path(ref: str | os.PathLike) -> str:
    """A local folder for ``ref`` (an existing folder, or a hub id such as ``Qwen/Qwen3-8B``).

    Hub ids are fetched with ``huggingface_hub.snapshot_download`` (config, safetensors,
    tokenizer and chat template only), honouring ``HF_HOME`` / ``HF_HUB_OFFLINE``.

    Raises:
        FileNotFoundError: ``ref`` is neither an existing folder nor a hub id, or the download failed.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path)
    ref = str(ref)
    if not is_hub_id(ref):
        raise FileNotFoundError(f"model {ref!r}: no such folder (and not a hub id like 'Qwen/Qwen3-8B')")
    try:
        from huggingface_hub import snapshot_download  # lazy: heavy, only needed on this path

        return snapshot_download(repo_id=ref, allow_patterns=_PATTERNS)
    except Exception as exc:  # network, auth, offline mode: say what to do
        raise FileNotFoundError(f"model {ref!r}: not a local folder and the hub download failed ({exc}); "
                                "download it first (huggingface-cli download) and pass the folder") from None
