"""The ARB models: configs and presets, attention, blocks, decoders, the text and multimodal models.

* ``config.py``     -- ``ModelConfig`` (nests the layers' ``TernaryConfig``) and the named presets
* ``layers.py``     -- the projection factory (ternary / dense / bitnet), RMSNorm, MLP, LTI injection
* ``attention.py``  -- causal attention with ternary projections and a KV cache
* ``decode_attention.py`` -- the token step's one-query attention: a fused Triton kernel (imported on first use)
* ``decoders.py``   -- output heads: text, patches
* ``text.py``       -- ``ArbitorLM``, the text model, top to bottom
* ``vq.py``, ``multimodal.py`` -- ternary VQ codebooks and ``MultimodalARB``
* ``bitnet.py``     -- ``BitLinear``, the BitNet b1.58 QAT baseline (float, for comparison)
"""
from .config import PRESETS, ConfigError, ModelConfig, preset, preset_names
from .multimodal import ModalitySpec, MultimodalARB
from .text import ArbitorLM

__all__ = ["ModelConfig", "ConfigError", "PRESETS", "preset", "preset_names", "ArbitorLM", "MultimodalARB",
           "ModalitySpec"]
