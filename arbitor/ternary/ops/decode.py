"""The frozen (inference) ternary linear op, plain-torch reference: ``y = x @ (T * S).T`` from ``T_packed`` and
a float32 scale ``S [out_features, in_features // group_size]`` computed once (``inference.py``).

A trained layer computes ``S`` from its integer state (``E``, ``corr_accum``, the ballot count) at every call;
a frozen layer has no ballots to count, so it keeps ``S`` itself -- 4 bytes a group instead of the 9 of
``E`` + ``corr_accum`` -- and reads 0.3125 bytes a weight at group 64 (``T_packed`` 0.25 + ``S`` 0.0625).
``S`` is the reference's own ``bigint_scale``, so ``W_eff`` here is ``effective_weight()`` bit for bit.

The Triton twin is ``decode_triton.py`` (same signature); the reference expands one row block at a time.
"""
from __future__ import annotations

import torch

from .blocks import row_blocks
from .linear import expand_weight

__all__ = ["decode_forward_torch"]


def decode_forward_torch(x: torch.Tensor, T_packed: torch.Tensor, S: torch.Tensor, in_features: int,
                         group_size: int) -> torch.Tensor:
    """``x [M, K] -> y [M, N]`` (x's dtype), float32 arithmetic."""
    n_out = T_packed.shape[0]
    xf = x.to(torch.float32)
    y = torch.empty(x.shape[0], n_out, dtype=torch.float32, device=x.device)
    for n0, n1 in row_blocks(n_out, in_features):
        y[:, n0:n1] = xf @ expand_weight(T_packed[n0:n1], S[n0:n1], in_features, group_size).t()
    return y.to(x.dtype)
