"""arbitor: pure ternary neural networks whose whole training state is integer.

Layout (imports flow one way, ``ternary.ops`` <- ``ternary`` <- ``model`` <- ``train`` <- ``cli``;
``docs/architecture.md``):

* ``arbitor.ternary`` -- the layers, their update rules and ops (torch references beside Triton kernels)
* ``arbitor.model``   -- configs, attention, blocks, decoders, the ARB text and multimodal models
* ``arbitor.train``   -- one ``Trainer`` with a text and a multimodal task; runs, checkpoints, metrics
* ``arbitor.data``    -- one module per modality
* ``arbitor.convert`` -- ``ternarize`` a model you already have, ``export`` it (``docs/convert.md``)
* ``arbitor.cli``     -- the ``arbitor`` command (parsing only)
"""
from .ternary import (SparseTernaryEmbedding, TernaryConfig, TernaryInferenceLinear, TernaryScaleTensor, UpdateRule,
                      for_inference, format_audit, pack_ternary, set_rate_factor, ternary_audit, ternary_step,
                      unpack_ternary)

from .convert import export, load_packed, ternarize  # noqa: E402  (after .ternary: convert builds on it)

__version__ = "0.2.0"
__all__ = ["TernaryScaleTensor", "SparseTernaryEmbedding", "TernaryConfig", "UpdateRule", "ternary_step",
           "set_rate_factor", "ternary_audit", "format_audit", "pack_ternary", "unpack_ternary", "ternarize", "export",
           "load_packed", "for_inference", "TernaryInferenceLinear"]
