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

from typing import Sequence

import torch

from ..format import tc_rows
from ..scale import bigint_scale
from .blocks import expand_weight, row_blocks, sum_last_first
from .fp8_linear import fp8_forward_torch, fp8_grad_x_torch, fp8_matmul_applies

__all__ = ["expand_weight", "linear_forward_torch", "linear_grad_x_torch", "decode_forward_torch",
           "linear_group_forward_torch", "linear_group_grad_x_torch"]


def decode_forward_torch(x: torch.Tensor, T_packed: torch.Tensor, S: torch.Tensor, in_features: int,
                         group_size: int, relu_square: bool = False) -> torch.Tensor:
    """``x [M, K] -> y [M, N] = x @ (T * S).T`` (x's dtype) for a given float32 scale ``S [N, G]``: the forward
    of a frozen layer (``inference.py``, which keeps ``S`` instead of the state it comes from), and of a trained
    one once its ``S`` is computed (``linear_forward_torch``). ``relu_square``: ``relu(y) ** 2`` instead, taken
    on ``y`` in x's dtype and rounded to it again, i.e. exactly ``F.relu(y).square()`` after the layer (the MLP's
    activation, which a frozen up projection may apply itself: ``inference.for_inference``). A 5-D ``T_packed`` (with
    its ``S``) is the ``tc`` layout (``format.tc_tiles``), read back as rows first."""
    if T_packed.dim() == 5:
        T_packed, S = tc_rows(T_packed, S, in_features, group_size)
    n_out = T_packed.shape[0]
    xf = x.to(torch.float32)
    y = torch.empty(x.shape[0], n_out, dtype=torch.float32, device=x.device)
    for n0, n1 in row_blocks(n_out, in_features):
        y[:, n0:n1] = xf @ expand_weight(T_packed[n0:n1], S[n0:n1], in_features, group_size).t()
    y = y.to(x.dtype)
    return y.relu_().square_() if relu_square else y


def linear_forward_torch(x: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                         step_counter: torch.Tensor, pending: int, in_features: int, group_size: int,
                         strength: float, matmul_fp8: bool = False) -> torch.Tensor:
    """``x [M, K] -> y [M, N]`` (x's dtype); ``matmul_fp8``: from fp8 operands above 16 rows (``fp8_linear.py``)."""
    S = bigint_scale(E, corr_accum, step_counter + pending, group_size, strength)
    if fp8_matmul_applies(matmul_fp8, x.shape[0], T_packed.shape[0], in_features):
        return fp8_forward_torch(x, T_packed, S, in_features, group_size)
    return decode_forward_torch(x, T_packed, S, in_features, group_size)


def linear_grad_x_torch(grad_y: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                        step_counter: torch.Tensor, pending: int, in_features: int, group_size: int,
                        strength: float, matmul_fp8: bool = False) -> torch.Tensor:
    """``grad_y [M, N] -> grad_x [M, K]`` (grad_y's dtype); ``matmul_fp8`` as ``linear_forward_torch``."""
    S = bigint_scale(E, corr_accum, step_counter + pending, group_size, strength)
    if fp8_matmul_applies(matmul_fp8, grad_y.shape[0], T_packed.shape[0], in_features):
        return fp8_grad_x_torch(grad_y, T_packed, S, in_features, group_size)
    gy = grad_y.to(torch.float32)
    grad_x = torch.zeros(grad_y.shape[0], in_features, dtype=torch.float32, device=grad_y.device)
    for n0, n1 in row_blocks(T_packed.shape[0], in_features):
        grad_x.addmm_(gy[:, n0:n1], expand_weight(T_packed[n0:n1], S[n0:n1], in_features, group_size))
    return grad_x.to(grad_y.dtype)


def linear_group_forward_torch(x: torch.Tensor, T_packed: Sequence[torch.Tensor], E: Sequence[torch.Tensor],
                               corr_accum: Sequence[torch.Tensor], step_counter: Sequence[torch.Tensor],
                               pending: Sequence[int], in_features: int, group_size: int, strength: Sequence[float],
                               matmul_fp8: bool = False) -> torch.Tensor:
    """``y [M, sum N] = cat_i(x [M, K] @ W_i.T)`` of layers reading one input (every argument a list, an entry a
    layer): each layer's ``linear_forward_torch``; with ``matmul_fp8`` where the stacked shape allows, the fp8
    product of the stacked layer (one weight exponent for all: ``fp8_linear.py``), as the Triton op -- and where it
    does not, no layer in fp8 (a layer's own shape may allow what the stack's does not)."""
    parts = list(zip(T_packed, E, corr_accum, step_counter, pending, strength))
    if fp8_matmul_applies(matmul_fp8, x.shape[0], sum(p[0].shape[0] for p in parts), in_features):
        return fp8_forward_torch(x, *_stacked(parts, group_size), in_features, group_size)
    return torch.cat([linear_forward_torch(x, *p[:5], in_features, group_size, p[5]) for p in parts], 1)


def linear_group_grad_x_torch(grad_y: torch.Tensor, T_packed: Sequence[torch.Tensor], E: Sequence[torch.Tensor],
                              corr_accum: Sequence[torch.Tensor], step_counter: Sequence[torch.Tensor],
                              pending: Sequence[int], in_features: int, group_size: int, strength: Sequence[float],
                              matmul_fp8: bool = False) -> torch.Tensor:
    """``grad_x [M, K] = sum_i grad_y[:, N_i] @ W_i`` for ``grad_y [M, sum N]`` (``linear_group_forward_torch``'s
    layers): each layer's ``linear_grad_x_torch``, summed from the last layer to the first in grad_y's dtype -- the
    order in which autograd sums the layers' gradients when they run one by one, so the result is the same bits."""
    parts = list(zip(T_packed, E, corr_accum, step_counter, pending, strength))
    n_total = sum(p[0].shape[0] for p in parts)
    if fp8_matmul_applies(matmul_fp8, grad_y.shape[0], n_total, in_features):
        return fp8_grad_x_torch(grad_y, *_stacked(parts, group_size), in_features, group_size)
    return sum_last_first(grad_y, [p[0].shape[0] for p in parts], lambda i, gy: linear_grad_x_torch(
        gy, *parts[i][:5], in_features, group_size, parts[i][5]))


def _stacked(parts: list, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T_packed, S)`` of layers stacked along their outputs (``parts``: ``(T_packed, E, corr_accum, step_counter,
    pending, strength)`` each)."""
    return (torch.cat([p[0] for p in parts]),
            torch.cat([bigint_scale(p[1], p[2], p[3] + p[4], group_size, p[5]) for p in parts]))
