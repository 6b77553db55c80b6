"""The short device tag used in result file names (``kernels-h100.md``, ``quality-h100.json``, ...)."""
from __future__ import annotations

import re

__all__ = ["device_tag"]


def device_tag(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"h100"``; ``"cpu"`` -> ``"cpu"``; other names -> a slug of the name."""
    low = name.lower()
    for tag in ("h100", "h200", "a100", "l40s", "l4", "a10", "4090", "3090"):
        if tag in low:
            return tag
    return re.sub(r"[^a-z0-9]+", "-", low).strip("-") or "cuda"
