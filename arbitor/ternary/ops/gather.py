"""Step-boundary ballots: gather a step's updates, apply them together (plain torch, any device).

In the step-boundary mode (``rules/base.py``) every micro-batch of a step computes against the state the
step started with; a ballot does not change the layer, it *adds its update* into gather buffers, and
``ternary_step`` applies the sum. Integer sums do not depend on their order, so the result is the same
whether the ballots come from one process one after another or from several processes whose buffers an
all-reduce adds (``ternary/parallel.py``) -- bit for bit.

What a ballot gathers, per rule (the *wire* dtype is what the all-reduce sends; its bound is checked when
the mode is set, from the most ballots a step may hold, ``max_ballots``):

* ``bigint``: ``vote_sum [N, G]`` -- the group votes (``votes.group_votes``), ``|sum| <= max_ballots *
  group_size``; kept int64 (the vote ops add into int64), sent as int32.
* ``counter``: ``vote_sum`` as above, plus ``move_sum [N, K]`` int8: each ballot's ladder move
  ``-sign(g) * min(floor(rate * |g| / rms + u), cap)`` with ``cap = min(3L - 1, 127 // max_ballots)``, so the
  sum of a step's moves fits int8 on every rank and after the all-reduce. The draw ``u`` is keyed by the
  ballot's *global* index ``step_counter + slot`` (``slot``: the ballot's place in the step, the same in one
  process and across ranks), not by a rank's count. At ``ternary_step``: ``p <- clamp(p + move_sum, 0,
  3L - 1)`` once -- where the online rule clamps after every ballot.

The ballot counts (``pending``, ``nonfinite``) are summed the same way. The torch functions here serve
every backend (on CUDA the ``bigint`` gather reuses the op table's fast vote op; the ``counter`` gather runs
these torch ops: no fused kernel yet).
"""
from __future__ import annotations

import torch

from ..format import pack_counters, pack_ternary, unpack_counters, unpack_ternary
from .blocks import row_blocks
from .counter import counter_step_scale
from .hashing import hash_base, uniform_from_base
from .votes import ballot_ok, count_ballot_, group_votes

__all__ = ["move_cap", "counter_gather_", "apply_moves_"]

INT8_MAX = 127


def move_cap(bits: int, max_ballots: int) -> int:
    """Largest ladder move one ballot may gather: ``min(3 * 2**bits - 1, 127 // max_ballots)`` (module doc)."""
    if not (isinstance(max_ballots, int) and 1 <= max_ballots <= INT8_MAX):
        raise ValueError(f"step-boundary counter ballots: max_ballots must be in [1, {INT8_MAX}] so a step's moves "
                         f"fit int8, got {max_ballots!r}")
    return min(3 * (1 << bits) - 1, INT8_MAX // max_ballots)


def counter_gather_(grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor, vote_sum: torch.Tensor,
                    move_sum: torch.Tensor, ballot: torch.Tensor, pending: torch.Tensor, nonfinite: torch.Tensor,
                    hash_key: torch.Tensor, in_features: int, group_size: int, rate: float, cap: int) -> None:
    """Gather one ``counter`` ballot (module doc).

    Args:
        grad_y: ``[tokens, out_features]``; x: ``[tokens, in_features]``.
        T_packed: the step-start trits ``[out_features, ceil(in_features/4)]`` (read only).
        vote_sum: int64 ``[out_features, in_features/group_size]``, the votes are added.
        move_sum: int8 ``[out_features, in_features]``, the capped moves are added.
        ballot: int64 0-d, the ballot's global index (its hash); pending, nonfinite: int64 0-d counters.
        hash_key: the layer's int64 0-d key; rate: rungs per unit of row-RMS gradient; cap: ``move_cap``.
    """
    ok = ballot_ok(grad_y, x)
    okl = ok.to(torch.int64)
    gy = grad_y.to(torch.float32)
    xf = x.to(torch.float32)
    base = hash_base(hash_key, ballot)
    for n0, n1 in row_blocks(T_packed.shape[0], in_features):
        gw = gy[:, n0:n1].t() @ xf
        gw = torch.where(ok, gw, torch.zeros((), dtype=gw.dtype, device=gw.device))  # a NaN ballot moves nothing
        t = unpack_ternary(T_packed[n0:n1], in_features)
        vote_sum[n0:n1] += group_votes(gw, t, group_size) * okl
        u = uniform_from_base(base, n0, n1, in_features, gw.device)
        steps = torch.floor(gw.abs() * counter_step_scale(gw, rate)[:, None] + u).clamp_(max=cap)
        move = (-torch.sign(gw) * steps).to(torch.int8) * okl.to(torch.int8)
        move_sum[n0:n1] += move
    count_ballot_(ok, pending, nonfinite)


def apply_moves_(T_packed: torch.Tensor, C_packed: torch.Tensor, move_sum: torch.Tensor, in_features: int,
                 bits: int) -> None:
    """``p <- clamp(p + move_sum, 0, 3L - 1)`` for every weight, in place on ``T_packed`` / ``C_packed``, row block
    by row block (``move_sum`` int8 ``[out_features, in_features]``)."""
    levels = 1 << bits
    top = 3 * levels - 1
    for n0, n1 in row_blocks(T_packed.shape[0], in_features):
        t = unpack_ternary(T_packed[n0:n1], in_features).to(torch.int32)
        c = unpack_counters(C_packed[n0:n1], in_features, bits).to(torch.int32)
        p = ((t + 1) * levels + c + move_sum[n0:n1].to(torch.int32)).clamp_(0, top)
        t_new = torch.div(p, levels, rounding_mode="floor")
        T_packed[n0:n1] = pack_ternary((t_new - 1).to(torch.int8), check=False)
        C_packed[n0:n1] = pack_counters((p - t_new * levels).to(torch.uint8), bits, check=False)
