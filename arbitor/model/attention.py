"""``ContextAttention``: causal multi-head attention with ternary projections and a ternary gate.

    q, k, v = x W_q, x W_k, x W_v                 (split into heads)
    a       = SDPA(q, k, v, causal)              (torch.nn.functional.scaled_dot_product_attention)
    out     = sigmoid(x W_g) * (a W_o)

All five projections (``W_q, W_k, W_v, W_o, W_g``) come from the config's linear factory --
``TernaryScaleTensor`` by default -- so the block has no float parameters.

KV cache: ``forward(x, cache)`` appends this call's keys/values to ``cache`` (a ``KVCache``) and
attends over everything cached so far; a query at absolute position ``p`` sees keys ``<= p``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .layers import make_linear

__all__ = ["ContextAttention", "KVCache"]


@dataclass
class KVCache:
    """Per-layer cached keys/values ``[B, H, T_cached, head_dim]`` (and the LTI states, see text.py)."""

    k: list = field(default_factory=list)
    v: list = field(default_factory=list)
    lti: list = field(default_factory=list)

    @property
    def length(self) -> int:
        return 0 if not self.k or self.k[0] is None else int(self.k[0].shape[2])


class ContextAttention(nn.Module):
    """Causal MHA. ``x [B, T, D]`` -> ``[B, T, D]``; with ``cache`` and ``layer`` index: cached decoding."""

    def __init__(self, cfg, seed: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.head_dim = d // cfg.n_heads
        self.q = make_linear(cfg, d, d, seed)
        self.k = make_linear(cfg, d, d, seed + 1)
        self.v = make_linear(cfg, d, d, seed + 2)
        self.o = make_linear(cfg, d, d, seed + 3)
        self.gate = make_linear(cfg, d, d, seed + 4)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, _ = t.shape
        return t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)   # [B, H, T, hd]

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None, layer: int = 0) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        past = 0
        if cache is not None:
            while len(cache.k) <= layer:
                cache.k.append(None)
                cache.v.append(None)
            if cache.k[layer] is not None:
                past = cache.k[layer].shape[2]
                k = torch.cat([cache.k[layer], k], dim=2)
                v = torch.cat([cache.v[layer], v], dim=2)
            cache.k[layer], cache.v[layer] = k.detach(), v.detach()
        if past == 0:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # query i (absolute position past+i) may see keys j <= past+i
            qpos = torch.arange(past, past + T, device=x.device).view(-1, 1)
            kpos = torch.arange(past + T, device=x.device).view(1, -1)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=kpos <= qpos)
        a = a.transpose(1, 2).reshape(B, T, D)
        return torch.sigmoid(self.gate(x)) * self.o(a)
