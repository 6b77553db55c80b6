"""Measured floors of the GEMV rows (``bench_decode.py --parts gemv``): what any kernel that reads a frozen layer's
bytes costs in the rows' own harness (a CUDA graph of one call per weight copy, copies rotated past L2).

* ``read_floor_kernel`` reads ``T_packed`` and ``S`` (both as int32 words) and nothing else: each program one
  masked vector load of its slice of each (every load in flight at once, no loop) and one xor-reduced word out.
  A GEMV must read those bytes too, and also compute, so its time in the harness is above this one. The rows
  record the fastest of ``PROGRAMS_PER_SM`` (2, 4, 8 programs a multiprocessor, 8 warps each).
* ``launch_floor_kernel`` writes one word a program: the cost of a launch in the graph, and its tail.

``cuBLAS ms / read floor ms`` is the ratio a GEMV at the read floor would reach: the ceiling of the rows' ratio
with these bytes, in this harness. The xor of the outputs is the xor of every word read
(``tests/benchmarks/test_read_floor.py`` checks it under the Triton interpreter), so the floor kernel cannot skip
bytes without the test failing.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["read_floor_kernel", "launch_floor_kernel", "read_floor", "launch_floor", "PROGRAMS_PER_SM"]

#: grids the rows try (programs a multiprocessor, 8 warps a program)
PROGRAMS_PER_SM = (2, 4, 8)


@triton.jit
def read_floor_kernel(a_ptr, b_ptr, y_ptr, NA, NB, PER_A, PER_B, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """Program ``p``: words ``[p * PER_A, (p + 1) * PER_A)`` of ``a`` and ``[p * PER_B, ...)`` of ``b`` (int32, clipped
    to ``NA`` / ``NB``; ``BLOCK_* >= PER_*``), xor-reduced into ``y[p]``."""
    p = tl.program_id(0)
    oa = tl.arange(0, BLOCK_A)
    ob = tl.arange(0, BLOCK_B)
    ia = p.to(tl.int64) * PER_A + oa
    ib = p.to(tl.int64) * PER_B + ob
    a = tl.load(a_ptr + ia, mask=(oa < PER_A) & (ia < NA), other=0)
    b = tl.load(b_ptr + ib, mask=(ob < PER_B) & (ib < NB), other=0)
    tl.store(y_ptr + p, tl.xor_sum(a, 0) ^ tl.xor_sum(b, 0))


@triton.jit
def launch_floor_kernel(y_ptr):
    p = tl.program_id(0)
    tl.store(y_ptr + p, p)


def _words(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bytes as int32 words (contiguous, a multiple of 4 bytes)."""
    return t.contiguous().view(torch.uint8).view(-1).view(torch.int32)


def read_floor(T_packed: torch.Tensor, S: torch.Tensor, programs: int, out: torch.Tensor) -> torch.Tensor:
    """Launch ``read_floor_kernel`` over ``T_packed`` and ``S`` with ``programs`` programs; ``out``: int32
    ``[>= programs]``. Returns ``out[:programs]`` (their xor is the xor of every word of both)."""
    a, b = _words(T_packed), _words(S)
    per_a, per_b = triton.cdiv(a.numel(), programs), triton.cdiv(b.numel(), programs)
    read_floor_kernel[(programs,)](a, b, out, a.numel(), b.numel(), per_a, per_b,
                                   BLOCK_A=triton.next_power_of_2(per_a), BLOCK_B=triton.next_power_of_2(per_b),
                                   num_warps=8)
    return out[:programs]


def launch_floor(programs: int, out: torch.Tensor) -> None:
    """Launch ``launch_floor_kernel`` with ``programs`` programs of 4 warps (``out``: int32 ``[>= programs]``)."""
    launch_floor_kernel[(programs,)](out, num_warps=4)
