"""Ternary kernels and layers: packing, the BigInt scale rule, reference ops, backends, audit."""
from .bigint_scale import DEFAULT_STRENGTH
from .packing import pack_ternary, unpack_ternary
from .ternary_audit import format_audit, ternary_audit
from .ternary_scale import TernaryScaleTensor, ternary_layers, ternary_step

__all__ = ["DEFAULT_STRENGTH", "pack_ternary", "unpack_ternary", "TernaryScaleTensor",
           "ternary_step", "ternary_layers", "ternary_audit", "format_audit"]
