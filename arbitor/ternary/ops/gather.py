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
every backend; on CUDA the ``bigint`` gather reuses the op table's fast vote op and the ``counter`` gather runs
``counter_triton.counter_gather_kernel`` on cuBLAS ``grad_W`` chunks (``impl="triton"``), tested equal to
``counter_gather_block_torch_`` integer for integer under the interpreter.
"""
from __future__ import annotations

import torch

from ..format import pack_counters, pack_ternary, unpack_counters, unpack_ternary
from .blocks import row_blocks
from .counter import counter_step_scale, gradw_blocks
from .gradw import fp32_operands, use_fp8
from .hashing import hash_base, uniform_from_base
from .votes import ballot_ok, count_ballot_, group_votes

__all__ = ["move_cap", "counter_gather_", "counter_gather_block_torch_", "apply_moves_"]

INT8_MAX = 127


def move_cap(bits: int, max_ballots: int) -> int:
    """Largest ladder move one ballot may gather: ``min(3 * 2**bits - 1, 127 // max_ballots)`` (module doc)."""
    if not (isinstance(max_ballots, int) and 1 <= max_ballots <= INT8_MAX):
        raise ValueError(f"step-boundary counter ballots: max_ballots must be in [1, {INT8_MAX}] so a step's moves "
                         f"fit int8, got {max_ballots!r}")
    return min(3 * (1 << bits) - 1, INT8_MAX // max_ballots)


def counter_gather_block_torch_(gw: torch.Tensor, scale: torch.Tensor, T_packed: torch.Tensor,
                                vote_sum: torch.Tensor, move_sum: torch.Tensor, hash_key: torch.Tensor,
                                ballot: torch.Tensor, bad: torch.Tensor, row0: int, in_features: int, group_size: int,
                                cap: int) -> None:
    """One row block of a ``counter`` gather, plain torch (the reference of ``counter_gather_block_triton_``).

    ``gw [rows, K]`` float block of ``grad_W``; ``scale [rows]`` float32 ``rate / rms``; ``T_packed``, ``vote_sum``
    (int64), ``move_sum`` (int8) the block's rows; ``ballot`` the ballot's global index (int64 0-d, its hash);
    ``bad`` 0-d, nonzero: gather nothing; ``row0`` the block's first row in the layer (the hash index is global).
    """
    ok = bad == 0
    gw = gw.to(torch.float32)
    t = unpack_ternary(T_packed, in_features)
    vote_sum += group_votes(gw, t, group_size) * ok
    u = uniform_from_base(hash_base(hash_key, ballot), row0, row0 + gw.shape[0], in_features, gw.device)
    steps = torch.floor(gw.abs() * scale[:, None] + u).clamp_(max=cap)
    move = (-torch.sign(gw) * steps).to(torch.int8)
    move_sum += torch.where(ok, move, torch.zeros_like(move))


def counter_gather_(grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor, vote_sum: torch.Tensor,
                    move_sum: torch.Tensor, ballot: torch.Tensor, pending: torch.Tensor, nonfinite: torch.Tensor,
                    hash_key: torch.Tensor, in_features: int, group_size: int, rate: float | torch.Tensor, cap: int,
                    impl: str = "torch", gradw_fp8: bool = False) -> None:
    """Gather one ``counter`` ballot (module doc).

    Args:
        grad_y: ``[tokens, out_features]``; x: ``[tokens, in_features]``.
        T_packed: the step-start trits ``[out_features, ceil(in_features/4)]`` (read only).
        vote_sum: int64 ``[out_features, in_features/group_size]``, the votes are added.
        move_sum: int8 ``[out_features, in_features]``, the capped moves are added.
        ballot: int64 0-d, the ballot's global index (its hash); pending, nonfinite: int64 0-d counters.
        hash_key: the layer's int64 0-d key; rate: rungs per unit of row-RMS gradient; cap: ``move_cap``.
        impl: ``"torch"`` (float32 ``grad_W`` row blocks, this module) or ``"triton"`` (``grad_W`` chunks by
            cuBLAS in the activations' dtype, ``counter_triton.counter_gather_kernel``), as ``counter_ballot_``.
        gradw_fp8: ``grad_W`` from fp8 operands where the layer's shape allows (``gradw.py``).
    """
    n_out = T_packed.shape[0]
    if impl == "triton":
        from .counter_triton import count_ballot_triton_, counter_gather_block_triton_
        bad, blocks = gradw_blocks(grad_y, x, n_out, in_features, rate, impl, gradw_fp8)
        for n0, gw, scale in blocks:
            n1 = n0 + gw.shape[0]
            counter_gather_block_triton_(gw, scale, T_packed[n0:n1], vote_sum[n0:n1], move_sum[n0:n1], hash_key,
                                         ballot, bad, n0, in_features, group_size, cap)
        count_ballot_triton_(bad, pending, nonfinite)
        return
    if impl != "torch":
        raise ValueError(f"counter_gather_: impl must be 'torch' or 'triton', got {impl!r}")
    ok = ballot_ok(grad_y, x)
    bad = (~ok).to(torch.int32)
    gy, xf = fp32_operands(grad_y, x, use_fp8(gradw_fp8, n_out, in_features, x.device))
    for n0, n1 in row_blocks(n_out, in_features):
        gw = gy[:, n0:n1].t() @ xf
        gw = torch.where(ok, gw, torch.zeros((), dtype=gw.dtype, device=gw.device))   # no NaN reaches a sum
        counter_gather_block_torch_(gw, counter_step_scale(gw, rate), T_packed[n0:n1], vote_sum[n0:n1],
                                    move_sum[n0:n1], hash_key, ballot, bad, n0, in_features, group_size, cap)
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
