"""Plain-torch reference ops for the ternary linear layer (``ARB_TERNARY_BACKEND=torch``).

Every op works on 2-D operands (callers flatten leading dims) and walks the
output features in row blocks, so that the largest float temporary is one
``[block_rows, in_features]`` tile of ``W_eff`` or ``grad_W`` -- never the whole
matrix. ``block_rows = max(1, ARB_TORCH_BLOCK_ELEMS // in_features)`` with a
default budget of 2**22 elements (16 MiB of float32).

All arithmetic is float32 (inputs of other float dtypes are upcast; results
are cast back), which makes this the numerical reference for the GPU kernels.

Correlation vote, per scale group g of output row n (the sign convention that
makes accumulating it lower the loss)::

    grad_W   = grad_y.T @ x                      # dL/dW_eff, [N, K]
    vote[n,g] = - sum_{k in g} sign(grad_W[n,k]) * T[n,k]

``dL/dS_g = sum_k grad_W[n,k] * T[n,k]``; each weight votes +1 when growing
``S_g`` would lower its contribution to the loss, -1 when shrinking would, and 0
when ``T == 0`` or ``grad_W`` is exactly 0. So ``|vote| <= nnz(T in g) <= group_size``.
"""
from __future__ import annotations

import os

import torch

from typing import Callable, Optional

from .packing import unpack_ternary

# block_hook(n0, n1, grad_W_block [n1-n0, K] float32, T_block [n1-n0, K] float32): called once per row
# block after that block's grad_x and votes are done (used by the legacy and flip update rules).
BlockHook = Callable[[int, int, torch.Tensor, torch.Tensor], None]

__all__ = ["block_rows_for", "expand_weight", "ternary_linear_forward", "ternary_linear_backward", "ternary_correlation"]

_DEFAULT_BLOCK_ELEMS = 1 << 22


def block_rows_for(in_features: int, out_features: int) -> int:
    """Rows of ``W_eff`` handled per block (see module doc)."""
    raw = os.environ.get("ARB_TORCH_BLOCK_ELEMS", "")
    budget = int(raw) if raw.strip() else _DEFAULT_BLOCK_ELEMS
    if budget < 1:
        raise ValueError(f"ARB_TORCH_BLOCK_ELEMS must be a positive integer, got {raw!r}")
    return max(1, min(out_features, budget // max(1, in_features)))


def expand_weight(T_packed: torch.Tensor, S: torch.Tensor, in_features: int, group_size: int,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``W_eff = T * S`` for the given rows: ``[rows, in_features]`` of ``dtype``.

    ``T_packed``: ``[rows, ceil(in/4)]`` uint8; ``S``: ``[rows, in/group_size]`` float32.
    """
    t = unpack_ternary(T_packed, in_features, torch.float32)
    w = t.view(t.shape[0], -1, group_size) * S.unsqueeze(-1)
    return w.view(t.shape[0], in_features).to(dtype)


def ternary_linear_forward(x: torch.Tensor, T_packed: torch.Tensor, S: torch.Tensor,
                           in_features: int, group_size: int) -> torch.Tensor:
    """``y = x @ W_eff.T``: x ``[M, K]`` -> y ``[M, N]`` (x's dtype)."""
    n_out = T_packed.shape[0]
    xf = x.to(torch.float32)
    y = torch.empty(x.shape[0], n_out, dtype=torch.float32, device=x.device)
    step = block_rows_for(in_features, n_out)
    for n0 in range(0, n_out, step):
        n1 = min(n_out, n0 + step)
        w = expand_weight(T_packed[n0:n1], S[n0:n1], in_features, group_size)
        y[:, n0:n1] = xf @ w.t()
        del w
    return y.to(x.dtype)


def ternary_correlation(grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor,
                        in_features: int, group_size: int) -> torch.Tensor:
    """Integer correlation votes ``[N, in/group_size]`` int64 (see module doc)."""
    return ternary_linear_backward(grad_y, x, T_packed, None, in_features, group_size, need_grad_x=False)[1]


def ternary_linear_backward(grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor, S: torch.Tensor | None,
                            in_features: int, group_size: int, need_grad_x: bool = True,
                            need_votes: bool = True, block_hook: Optional[BlockHook] = None,
                            ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Fused backward: ``grad_x = grad_y @ W_eff`` and the correlation votes.

    Args:
        grad_y: ``[M, N]`` upstream gradient.
        x: ``[M, K]`` saved input.
        T_packed: ``[N, ceil(K/4)]`` uint8.
        S: ``[N, K/group_size]`` float32 (only needed for ``grad_x``).
        block_hook: optional per-block callback given the ``grad_W`` block (see ``BlockHook``).
    Returns:
        ``(grad_x [M, K] in x's dtype or None, votes [N, K/group_size] int64 or None)``.
    """
    n_out = T_packed.shape[0]
    gy = grad_y.to(torch.float32)
    xf = x.to(torch.float32)
    grad_x = torch.zeros(x.shape[0], in_features, dtype=torch.float32, device=x.device) if need_grad_x else None
    votes = torch.empty(n_out, in_features // group_size, dtype=torch.int64, device=x.device) if need_votes else None
    step = block_rows_for(in_features, n_out)
    for n0 in range(0, n_out, step):
        n1 = min(n_out, n0 + step)
        t = unpack_ternary(T_packed[n0:n1], in_features, torch.float32)  # [nb, K]
        gy_blk = gy[:, n0:n1]
        if need_grad_x:
            w = (t.view(n1 - n0, -1, group_size) * S[n0:n1].unsqueeze(-1)).view(n1 - n0, in_features)
            grad_x.addmm_(gy_blk, w)
            del w
        if need_votes or block_hook is not None:
            gw = gy_blk.t() @ xf  # [nb, K] -- one block of grad_W, freed below
            if need_votes:
                v = torch.sign(gw).mul_(t).view(n1 - n0, -1, group_size).sum(-1)
                votes[n0:n1] = (-v).to(torch.int64)
                del v
            if block_hook is not None:
                block_hook(n0, n1, gw, t)
            del gw
        del t
    return (grad_x.to(x.dtype) if need_grad_x else None), votes
