"""The BigInt correlation vote -- the one place its formula is written -- and the ``bigint`` rule's
vote op, plain-torch reference.

Per scale group ``g`` of output row ``n`` (``grad_W = grad_y.T @ x = dL/dW_eff``, ``[N, K]``)::

    vote[n, g] = - sum_{k in g} sign(grad_W[n, k]) * T[n, k]

``dL/dS_g = sum_k grad_W[n, k] * T[n, k]``: each weight votes +1 when growing ``S_g`` would lower its
contribution to the loss, -1 when shrinking would, and 0 when ``T == 0`` or ``grad_W`` is exactly 0.
So ``|vote| <= nnz(T in g) <= group_size`` -- the bound behind ``scale.py``'s overflow checks.

``group_votes`` is used by every caster of votes (this op, the ``counter`` rule's ballot, the sparse
embedding). ``bigint_ballot_torch_`` walks the output rows in blocks (``blocks.py``), so one
``[block_rows, K]`` float32 tile of ``grad_W`` exists at a time; ``votes_triton.py`` is its Triton twin
(cuBLAS ``grad_W`` + a vote kernel).

A ballot whose ``grad_y`` or ``x`` holds a NaN or an infinity casts no vote at all: it is counted in the
layer's ``nonfinite`` counter instead of ``pending`` (``ballot_ok``, ``count_ballot_``). The decision stays
on the device -- no host sync per layer.
"""
from __future__ import annotations

import torch

from ..format import unpack_ternary
from .blocks import row_blocks
from .gradw import fp32_operands, use_fp8

__all__ = ["group_votes", "ballot_ok", "count_ballot_", "bigint_ballot_torch_"]


def group_votes(grad_w: torch.Tensor, t: torch.Tensor, group_size: int) -> torch.Tensor:
    """Votes of one block: ``grad_w [rows, K]`` float, ``t [rows, K]`` trits -> int64 ``[rows, K // group_size]``."""
    prod = torch.sign(grad_w).to(torch.int8) * t.to(torch.int8)
    return prod.view(t.shape[0], -1, group_size).sum(-1, dtype=torch.int64).neg_()


def ballot_ok(grad_y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor: every entry of ``grad_y`` and ``x`` is finite (the ballot may vote)."""
    return torch.isfinite(grad_y).all() & torch.isfinite(x).all()


def count_ballot_(ok: torch.Tensor, pending: torch.Tensor, nonfinite: torch.Tensor) -> None:
    """Count one ballot: ``pending += ok``, ``nonfinite += not ok`` (int64 0-d counters, in place)."""
    pending.add_(ok.to(torch.int64))
    nonfinite.add_((~ok).to(torch.int64))


def bigint_ballot_torch_(grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor, corr_accum: torch.Tensor,
                         pending: torch.Tensor, nonfinite: torch.Tensor, in_features: int, group_size: int,
                         gradw_fp8: bool = False) -> None:
    """One ``bigint`` ballot in place: the votes of ``grad_y [M, N]`` and ``x [M, K]`` into ``corr_accum
    [N, K // group_size]`` (int64), counted in ``pending`` -- or, with a non-finite input, only in ``nonfinite``.
    ``gradw_fp8``: ``grad_W`` from fp8-rounded operands (``fp8.py``) where the layer's shape allows."""
    ok = ballot_ok(grad_y, x)
    gy, xf = fp32_operands(grad_y, x, use_fp8(gradw_fp8, T_packed.shape[0], in_features, x.device))
    votes = torch.empty_like(corr_accum)
    for n0, n1 in row_blocks(T_packed.shape[0], in_features):
        t = unpack_ternary(T_packed[n0:n1], in_features)
        votes[n0:n1] = group_votes(gy[:, n0:n1].t() @ xf, t, group_size)
    corr_accum += votes * ok
    count_ballot_(ok, pending, nonfinite)
