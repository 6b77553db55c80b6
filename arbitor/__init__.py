"""arbitor: pure ternary neural networks whose whole training state is integer."""
from .kernel import (TernaryScaleTensor, format_audit, pack_ternary, ternary_audit, ternary_step, unpack_ternary)

__version__ = "0.1.0"
__all__ = ["TernaryScaleTensor", "ternary_step", "ternary_audit", "format_audit", "pack_ternary", "unpack_ternary"]
