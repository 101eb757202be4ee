"""Protocol lookup by name (``judge.protocol`` in the run config)."""
from __future__ import annotations

from typing import Dict, Optional, Type

from .brrm import BRRMProtocol
from .protocol import JudgeProtocol
from .rmr1 import RMR1Protocol

PROTOCOLS: Dict[str, Type[JudgeProtocol]] = {"brrm": BRRMProtocol, "rmr1": RMR1Protocol}


def get_protocol(name: str = "brrm", template_dir: Optional[str] = None) -> JudgeProtocol:
    """Build the protocol ``name`` with its templates from ``template_dir`` (default: shipped).

    Raises:
        ValueError: unknown ``name`` (the message lists the valid names).
        TemplateError (a ValueError): a template file is missing or lacks a placeholder/marker.
    """
    if name not in PROTOCOLS:
        raise ValueError(f"unknown judge protocol {name!r}; valid names: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name](template_dir=template_dir)
