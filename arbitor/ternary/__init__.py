"""Pure-ternary building blocks with integer-only training state.

* ``format.py``  -- the packed layouts (``T_packed``, ``C_packed``), bit by bit; the group-size rule
* ``scale.py``   -- the BigInt scale ``S = 2**(E + strength * mean_corr)`` and its integer bounds
* ``init.py``    -- seeded initial trits and exponents
* ``config.py``  -- ``TernaryConfig``: every setting of a ternary layer
* ``rules/``     -- ``UpdateRule`` and its two implementations, ``bigint`` (the spec) and ``counter``
* ``ops/``       -- each op as a torch reference beside its Triton kernel; the backend choice
* ``layer.py``   -- ``TernaryScaleTensor``, the dense layer
* ``embedding.py`` -- ``SparseTernaryEmbedding``, the sparse table (bigint or the spec's legacy flips)
* ``step.py``    -- ``ternary_step(model)``, ``set_rate_factor(model, f)``: the per-step calls
* ``audit.py``   -- ``ternary_audit``: what the training state really is, in bytes
* ``inference.py`` -- ``for_inference(model)``: frozen layers (``T_packed`` + float32 scales) for generation
"""
from .audit import format_audit, ternary_audit
from .config import TernaryConfig
from .embedding import SparseTernaryEmbedding
from .format import pack_ternary, unpack_ternary
from .inference import TernaryInferenceLinear, for_inference
from .layer import TernaryScaleTensor
from .rules import BigIntRule, CounterRule, UpdateRule, make_rule
from .scale import DEFAULT_STRENGTH
from .step import TernaryModule, set_rate_factor, ternary_layers, ternary_step

__all__ = ["TernaryScaleTensor", "SparseTernaryEmbedding", "TernaryConfig", "UpdateRule", "BigIntRule", "CounterRule",
           "make_rule", "TernaryModule", "ternary_step", "set_rate_factor", "ternary_layers", "ternary_audit",
           "format_audit", "pack_ternary", "unpack_ternary", "DEFAULT_STRENGTH", "TernaryInferenceLinear",
           "for_inference"]
