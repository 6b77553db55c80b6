"""Model building blocks: the linear-layer factory, a parameter-free norm, the MLP and LTI injection.

Linear factory
--------------
Every projection in the model is made by ``make_linear(cfg, in_features, out_features, seed)``,
which looks ``cfg.linear`` up in ``LINEAR_FACTORIES``:

* ``"ternary"`` -- ``TernaryScaleTensor.from_config(in, out, cfg.ternary)`` (pure ternary, integer
  state, no float parameters);
* ``"dense"``   -- a bias-free float ``nn.Linear`` (N(0, 1/in_features) init) trained by the
  trainer's AdamW: the dense baseline for quality studies;
* ``"bitnet"``  -- ``bitnet.BitLinear`` (BitNet b1.58-style QAT: latent float weights,
  AdamW, absmean ternary + int8 activations with straight-through gradients).

A new layer type is one ``register_linear(name, fn)`` call; ``text.py`` never names a layer class.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..ternary.layer import TernaryScaleTensor

__all__ = ["LINEAR_FACTORIES", "register_linear", "make_linear", "RMSNorm", "MLP", "LTIInjection", "ema_kernel",
           "residual_dropout"]

LinearFactory = Callable[..., nn.Module]


def _ternary_linear(cfg, in_features: int, out_features: int, seed: int) -> nn.Module:
    return TernaryScaleTensor.from_config(in_features, out_features, cfg.ternary, seed=seed)


def _dense_linear(cfg, in_features: int, out_features: int, seed: int) -> nn.Module:
    layer = nn.Linear(in_features, out_features, bias=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_features, in_features, generator=gen) / math.sqrt(in_features))
    return layer


def _bitnet_linear(cfg, in_features: int, out_features: int, seed: int) -> nn.Module:
    from .bitnet import BitLinear
    return BitLinear(in_features, out_features, seed=seed)


LINEAR_FACTORIES: dict[str, LinearFactory] = {"ternary": _ternary_linear, "dense": _dense_linear,
                                              "bitnet": _bitnet_linear}


def register_linear(name: str, factory: LinearFactory) -> None:
    """Add a projection type: ``factory(cfg, in_features, out_features, seed) -> nn.Module``."""
    LINEAR_FACTORIES[name] = factory


def make_linear(cfg, in_features: int, out_features: int, seed: int) -> nn.Module:
    """``x [..., in_features] -> [..., out_features]`` of the type ``cfg.linear`` names."""
    return LINEAR_FACTORIES[cfg.linear](cfg, in_features, out_features, seed)


class RMSNorm(nn.Module):
    """``x / rms(x)`` over the last dimension; no affine parameters. ``[..., D] -> [..., D]``."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the mean square is taken in float32 so bf16/fp16 activations normalise as accurately as fp32
        ms = x.float().pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(ms + self.eps).to(x.dtype)


def residual_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """nanoGPT's dropout on a residual branch (or the embedding output): ``F.dropout`` in training mode when
    ``p > 0``; otherwise ``x`` itself -- no op is recorded and no random number drawn, so a model with
    ``cfg.dropout == 0`` computes exactly what it did before dropout existed."""
    return F.dropout(x, p, training=True) if p > 0 and training else x


class MLP(nn.Module):
    """``down(relu(up(x))**2)``, hidden width ``cfg.mlp_hidden``, no biases. ``[..., D] -> [..., D]``.

    Squared ReLU (as in BitNet b1.58 / Primer) gives ternary layers a sparse, sign-stable hidden code.
    (nanoGPT's dropout after the down projection is the block's: ``text.Block``.)
    """

    #: projections whose output goes through ``relu(.) ** 2``: a frozen ``up`` may apply it in its decode kernel
    #: (``for_inference(model, fuse_projections=True)``; the layer then says so with ``relu_square = True``)
    FUSABLE_RELU_SQUARE = ("up",)

    def __init__(self, cfg, seed: int) -> None:
        super().__init__()
        self.up = make_linear(cfg, cfg.d_model, cfg.mlp_hidden, seed)
        self.down = make_linear(cfg, cfg.mlp_hidden, cfg.d_model, seed + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if not getattr(self.up, "relu_square", False):
            h = F.relu(h).square()
        return self.down(h)


def ema_kernel(log_decays: torch.Tensor, t_len: int) -> torch.Tensor:
    """The causal EMA matrices ``K[n, t, s] = (1 - a_n) * a_n**(t - s)`` for ``s <= t``, else 0.

    ``log_decays``: float32 ``[n]`` (``log a_n``); returns float32 ``[n, t_len, t_len]``.
    """
    t = torch.arange(t_len, device=log_decays.device)
    lag = (t.view(-1, 1) - t.view(1, -1)).to(log_decays.dtype)             # [T, T]
    causal = lag >= 0
    k = torch.exp(log_decays.view(-1, 1, 1) * lag.clamp_min(0))             # a**lag
    k = k * (1.0 - torch.exp(log_decays)).view(-1, 1, 1)
    return k * causal


class LTIInjection(nn.Module):
    """A causal linear time-invariant recurrence added to the residual stream.

    A bank of ``n`` exponential moving averages of the (normalised) hidden state with fixed
    decays ``a_n``::

        m_n[t] = a_n * m_n[t-1] + (1 - a_n) * h[t],      m_n[-1] = 0 (or the cached state)

    computed in parallel over the sequence as one matrix product with ``ema_kernel`` (no Python
    loop over time), then read out by one projection ``[n*D] -> [D]`` (a ternary layer by default).
    The decays are a frozen float buffer (``log_decays``), not parameters.

    Shapes: ``h [B, T, D]`` -> ``(out [B, T, D], state [B, n, D])``; ``state`` is ``m[:, T-1]`` for
    continuing the recurrence during cached sampling.
    """

    def __init__(self, cfg, seed: int) -> None:
        super().__init__()
        decays = torch.tensor(cfg.lti_decays, dtype=torch.float32)
        self.register_buffer("log_decays", torch.log(decays))
        self.n = len(cfg.lti_decays)
        self.readout = make_linear(cfg, self.n * cfg.d_model, cfg.d_model, seed)

    def forward(self, h: torch.Tensor, state: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, D = h.shape
        K = ema_kernel(self.log_decays, T).to(h.dtype)                    # [n, T, T]
        m = torch.einsum("nts,bsd->btnd", K, h)                           # [B, T, n, D]
        if state is not None:
            # the carried state decays by a**(t+1) at position t
            carry = torch.exp(self.log_decays.view(1, -1) * torch.arange(1, T + 1, device=h.device).view(-1, 1))
            m = m + carry.to(h.dtype).view(1, T, self.n, 1) * state.unsqueeze(1)
        new_state = m[:, -1].detach()
        return self.readout(m.reshape(B, T, self.n * D)), new_state
