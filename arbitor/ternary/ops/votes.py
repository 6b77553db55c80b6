"""The BigInt correlation vote -- the one place its formula is written -- and the ``bigint`` rule's
vote op, plain-torch reference.

Per scale group ``g`` of output row ``n`` (``grad_W = grad_y.T @ x = dL/dW_eff``, ``[N, K]``)::

    vote[n, g] = - sum_{k in g} sign(grad_W[n, k]) * T[n, k]

``dL/dS_g = sum_k grad_W[n, k] * T[n, k]``: each weight votes +1 when growing ``S_g`` would lower its
contribution to the loss, -1 when shrinking would, and 0 when ``T == 0`` or ``grad_W`` is exactly 0.
So ``|vote| <= nnz(T in g) <= group_size`` -- the bound behind ``scale.py``'s overflow checks.

``group_votes`` is used by every caster of votes (this op, the ``counter`` rule's ballot, the sparse
embedding). ``bigint_votes_torch_`` walks the output rows in blocks (``blocks.py``), so one
``[block_rows, K]`` float32 tile of ``grad_W`` exists at a time; ``votes_triton.py`` is its Triton twin,
which never writes ``grad_W`` at all.
"""
from __future__ import annotations

import torch

from ..format import unpack_ternary
from .blocks import row_blocks

__all__ = ["group_votes", "bigint_votes_torch_"]


def group_votes(grad_w: torch.Tensor, t: torch.Tensor, group_size: int) -> torch.Tensor:
    """Votes of one block: ``grad_w [rows, K]`` float, ``t [rows, K]`` trits -> int64 ``[rows, K // group_size]``."""
    prod = torch.sign(grad_w).to(torch.int8) * t.to(torch.int8)
    return prod.view(t.shape[0], -1, group_size).sum(-1, dtype=torch.int64).neg_()


def bigint_votes_torch_(grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor, corr_accum: torch.Tensor,
                        in_features: int, group_size: int) -> None:
    """Add the votes of ``grad_y [M, N]`` and ``x [M, K]`` into ``corr_accum [N, K // group_size]`` int64, in place."""
    gy = grad_y.to(torch.float32)
    xf = x.to(torch.float32)
    for n0, n1 in row_blocks(T_packed.shape[0], in_features):
        t = unpack_ternary(T_packed[n0:n1], in_features)
        corr_accum[n0:n1] += group_votes(gy[:, n0:n1].t() @ xf, t, group_size)
