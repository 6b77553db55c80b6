"""The ternary linear op, plain-torch reference: ``y = x @ W_eff.T`` and ``grad_x = grad_y @ W_eff``.

``W_eff = T * S`` is expanded from the integer state (``T_packed``: ``format.py``; ``S`` from ``E``,
``corr_accum`` and the ballot count ``step_counter + pending``: ``scale.py``) one row block at a
time (``blocks.py``), so the largest float temporary is one ``[block_rows, in_features]`` tile --
never the whole matrix. All arithmetic is float32 (other input dtypes are upcast, results cast back),
which makes this the numerical reference for the Triton kernels of ``linear_triton.py``.

Both functions take 2-D operands (callers flatten leading dims) and share one signature with their
Triton twins (``backend.TernaryOps``).
"""
from __future__ import annotations

import torch

from ..format import unpack_ternary
from ..scale import bigint_scale
from .blocks import row_blocks

__all__ = ["expand_weight", "linear_forward_torch", "linear_grad_x_torch", "decode_forward_torch"]


def expand_weight(T_packed: torch.Tensor, S: torch.Tensor, in_features: int, group_size: int,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``W_eff = T * S`` for the given rows: ``T_packed [rows, ceil(K/4)]``, ``S [rows, K/group_size]`` ->
    ``[rows, K]`` of ``dtype``."""
    t = unpack_ternary(T_packed, in_features, torch.float32)
    w = t.view(t.shape[0], -1, group_size) * S.unsqueeze(-1)
    return w.view(t.shape[0], in_features).to(dtype)


def decode_forward_torch(x: torch.Tensor, T_packed: torch.Tensor, S: torch.Tensor, in_features: int,
                         group_size: int) -> torch.Tensor:
    """``x [M, K] -> y [M, N] = x @ (T * S).T`` (x's dtype) for a given float32 scale ``S [N, G]``: the forward
    of a frozen layer (``inference.py``, which keeps ``S`` instead of the state it comes from), and of a trained
    one once its ``S`` is computed (``linear_forward_torch``)."""
    n_out = T_packed.shape[0]
    xf = x.to(torch.float32)
    y = torch.empty(x.shape[0], n_out, dtype=torch.float32, device=x.device)
    for n0, n1 in row_blocks(n_out, in_features):
        y[:, n0:n1] = xf @ expand_weight(T_packed[n0:n1], S[n0:n1], in_features, group_size).t()
    return y.to(x.dtype)


def linear_forward_torch(x: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                         step_counter: torch.Tensor, pending: int, in_features: int, group_size: int,
                         strength: float) -> torch.Tensor:
    """``x [M, K] -> y [M, N]`` (x's dtype)."""
    S = bigint_scale(E, corr_accum, step_counter + pending, group_size, strength)
    return decode_forward_torch(x, T_packed, S, in_features, group_size)


def linear_grad_x_torch(grad_y: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                        step_counter: torch.Tensor, pending: int, in_features: int, group_size: int,
                        strength: float) -> torch.Tensor:
    """``grad_y [M, N] -> grad_x [M, K]`` (grad_y's dtype)."""
    S = bigint_scale(E, corr_accum, step_counter + pending, group_size, strength)
    gy = grad_y.to(torch.float32)
    grad_x = torch.zeros(grad_y.shape[0], in_features, dtype=torch.float32, device=grad_y.device)
    for n0, n1 in row_blocks(T_packed.shape[0], in_features):
        grad_x.addmm_(gy[:, n0:n1], expand_weight(T_packed[n0:n1], S[n0:n1], in_features, group_size))
    return grad_x.to(grad_y.dtype)
