"""Float baselines for quality studies: BitNet b1.58-style quantisation-aware training.

``BitLinear`` is what a user would otherwise pick to get a ternary model: it keeps a
**latent float weight** (trained by AdamW, so ~16 bytes of persistent state per weight
with fp32 master weights and two fp32 moments) and quantises on the fly:

* weights: absmean ternary quantisation, ``gamma = mean(|W|)``,
  ``W_q = clamp(round(W / gamma), -1, 1) * gamma`` (per tensor, as in BitNet b1.58);
* activations: 8-bit absmax per token, ``x_q = clamp(round(x * 127 / max|x|), -128, 127) * max|x| / 127``;
* gradients pass both roundings unchanged (straight-through estimator).

It exists to be compared against, not to be used by arbitor's pure-ternary models.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BitLinear", "absmean_ternary", "absmax_int8"]


def absmean_ternary(w: torch.Tensor) -> torch.Tensor:
    """``[out, in]`` float -> ternary values times the per-tensor absmean scale (same shape)."""
    gamma = w.abs().mean().clamp_min(1e-8)
    return (w / gamma).round().clamp_(-1, 1) * gamma


def absmax_int8(x: torch.Tensor) -> torch.Tensor:
    """Per-token (last dim) 8-bit absmax fake quantisation, ``[..., D] -> [..., D]``."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-5)
    return (x * scale).round().clamp_(-128, 127) / scale


class BitLinear(nn.Module):
    """BitNet b1.58-style QAT linear layer: ``x [..., in] -> [..., out]`` (no bias).

    Args:
        in_features, out_features: sizes.
        seed: seed of the N(0, 1/in_features) latent weight init.
        quantize_activations: 8-bit absmax activation quantisation (BitNet b1.58 does it).
    """

    def __init__(self, in_features: int, out_features: int, seed: int = 0, quantize_activations: bool = True) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(out_features, in_features, generator=gen) / math.sqrt(in_features))
        self.in_features, self.out_features = in_features, out_features
        self.quantize_activations = quantize_activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w_q = w + (absmean_ternary(w) - w).detach()          # STE
        if self.quantize_activations:
            x = x + (absmax_int8(x) - x).detach()             # STE
        return x @ w_q.to(x.dtype).t()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"quantize_activations={self.quantize_activations}"
