"""Triton quantisers of the fp8 operands (formats and references: ``fp8.py``, ``fp8_linear.py``), and launchers.

``quantize_t_triton(t [M, C], bad) -> (q [C, Mp] float8_e4m3fn, scale [C] float32)`` is two launches over ``t``:

1. ``amax_kernel``: column maxima of ``|t|`` as the int32 bits of float32 (non-negative floats order like their
   bits), one row of partials for each of at most ``AMAX_PARTIALS`` slices of rows (a program walks its slice in
   ``[BLOCK_M, BLOCK_C]`` tiles) -- no buffer to zero, no atomics, and at most ``AMAX_PARTIALS`` partials for each
   cast program to read at any token count; a NaN or infinity raises the ballot's int32 ``bad`` flag;
2. ``cast_t_kernel``: each column's maximum from its partials (the largest bits: deterministic), its exponent
   ``e`` (``fp8.fp8_exponents``), the tile
   times ``2**-e``, rounded to e4m3 (``_to_e4m3``: the hardware conversion on the GPU; under the CPU interpreter,
   whose own fp8 conversion differs, integer arithmetic -- both bit-equal to torch's cast), transposed and stored as
   bytes; columns ``m >= M`` of ``q`` get 0, and the first row of programs writes ``scale = 2**e``.

So ``t`` is read twice and ``q`` written once: ``5`` bytes an entry for a 16-bit ``t``.

The forward and grad-x operands of ``matmul_fp8`` (``fp8_linear.py``):

* ``quantize_rows_triton(t [M, C]) -> (q [M, C], scale [M])``: ``rows_kernel``, one program a row, which holds
  a row of up to ``ROWS_ONE_READ`` entries in registers (read once: 3 bytes an entry for a 16-bit ``t``) and
  reads a longer one twice, in blocks (``_rows_launch``);
* ``expand_fp8_group_triton(states, ...) -> (wq, scale)`` (``expand_fp8_triton`` for one layer): for a stack of
  layers, up to ``GROUP_LAUNCH`` a launch, ``scale_max_kernel`` (the group scales ``S`` into a transient float32
  buffer, and each program's largest ``log2 S``) and ``expand_fp8_kernel`` (the stack's maximum from those
  partials, then ``T * S * 2**-ew`` rounded to e4m3 from the packed trits and ``S``; ``[sum N, K]``, or ``[K,
  sum N]`` for grad-x).
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from .fp8 import FP8_DTYPE, padded_tokens
from .triton_common import (INTERPRETED, check_scalars, check_state, exact_pow2, float64_bits, scale_log2,
                            weff_tile)

__all__ = ["amax_kernel", "cast_t_kernel", "quantize_t_triton", "AMAX_TILE", "CAST_TILE", "AMAX_PARTIALS",
           "rows_kernel",
           "scale_max_kernel", "expand_fp8_kernel", "quantize_rows_triton", "expand_fp8_triton",
           "expand_fp8_group_triton"]

# ``[BLOCK_M, BLOCK_C]`` tiles, 4 warps: the fastest of seven pairs at four layer shapes on the H200
# (benchmarks/results/speed/h200-gradw-fp8/quant_sweep.json): 80 us for a bf16 [4096, 12288] grad_y, where a copy
# of it (read 2 B + write 2 B an entry) takes 50 us and this pass moves 5 B an entry; 64 x 64 for both: 88 us.
# One launch a column strip (the maximum, then the cast re-reading the strip) was 1.6-3x slower at every shape.
# (Measured with the integer e4m3 rounding; the hardware conversion used on the GPU since then took the `3b` step's
# cast_t_kernel from 3.0 to 2.3 ms, h200-matmul-fp8/profile_3b_*.json.)
AMAX_TILE = (256, 64)
CAST_TILE = (64, 128)
AMAX_PARTIALS = 16   # rows of partial maxima at most: 4096 tokens give 16 one-tile slices (as measured), more tokens
                     # longer slices -- a cast program reads AMAX_PARTIALS x BLOCK_C partials whatever the tokens


@triton.jit
def amax_kernel(t_ptr, part_ptr, bad_ptr, M, C, stride_m, ROWS, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """``part[i, c]``: the largest ``|t[m, c]|`` of the rows ``m`` in ``[i * ROWS, (i + 1) * ROWS)`` (int32 bits of
    float32; ``ROWS`` a multiple of ``BLOCK_M``); ``bad`` set to 1 on a non-finite entry."""
    pid = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    top = tl.zeros([BLOCK_C], dtype=tl.int32)
    nonfinite = 0
    for m0 in range(pid * ROWS, tl.minimum(M, (pid + 1) * ROWS), BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        mask = (m < M)[:, None] & c_mask[None, :]
        v = tl.abs(tl.load(t_ptr + m.to(tl.int64)[:, None] * stride_m + c[None, :], mask=mask,
                           other=0.0).to(tl.float32))
        nonfinite += tl.sum(tl.sum(((v != v) | (v == float("inf"))).to(tl.int32), axis=1), axis=0)
        top = tl.maximum(top, tl.max(v, axis=0).to(tl.int32, bitcast=True))
    if nonfinite > 0:
        tl.atomic_max(bad_ptr, 1)
    tl.store(part_ptr + pid.to(tl.int64) * C + c, top, mask=c_mask)


@triton.jit
def _exponent(bits):
    """``fp8.fp8_exponents`` of float32 bits (int32): ``E - 8 + (f > 1.75)``, at least -126."""
    e = ((bits >> 23) & 0xFF) - 135 + ((bits & 0x7FFFFF) > 0x600000).to(tl.int32)
    return tl.maximum(e, -126)


@triton.jit
def _pow2(e):
    """float32 ``2**e`` for int32 ``e`` in ``[-126, 127]`` (exponent bits)."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _e4m3(v):
    """The e4m3fn byte of float32 ``v`` (finite, ``|v| <= 448``): round to nearest even, subnormals in steps of
    ``2**-9``."""
    bits = v.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    a = bits & 0x7FFFFFFF
    normal = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - (120 << 3)      # exponent and 3 mantissa bits, rebiased
    sub = ((tl.abs(v) * 512.0 + 8388608.0) - 8388608.0).to(tl.int32)   # |v| / 2**-9, rounded to nearest even
    return (sign | tl.where(a >= (121 << 23), normal, sub)).to(tl.uint8)


@triton.jit
def _to_e4m3(v, INTERP: tl.constexpr):
    """``_e4m3(v)``: on the GPU by the hardware conversion (``cvt.rn.satfinite.e4m3x2.f32``: round to nearest even,
    with subnormals; no value here exceeds 448, so saturation never applies), under the CPU interpreter -- whose own
    fp8 conversion rounds otherwise -- by the integer arithmetic of ``_e4m3``. Both give torch's bytes (tests)."""
    if INTERP:
        return _e4m3(v)
    else:
        return v.to(tl.float8e4nv).to(tl.uint8, bitcast=True)


@triton.jit
def cast_t_kernel(t_ptr, part_ptr, q_ptr, scale_ptr, M, MP, C, P, stride_m,
                  BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, INTERP: tl.constexpr):
    """``q[c, m] = e4m3(t[m, c] * 2**-e[c])`` for ``m < MP`` (0 past ``M``) and ``scale[c] = 2**e[c]``, ``e[c]``
    from the largest of the ``P`` partials ``part[:, c]`` of ``amax_kernel``."""
    pid_m = tl.program_id(0)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    p = tl.arange(0, BLOCK_P)
    amax = tl.max(tl.load(part_ptr + p.to(tl.int64)[:, None] * C + c[None, :],
                          mask=(p < P)[:, None] & c_mask[None, :], other=0), axis=0)
    e = _exponent(amax)
    v = tl.load(t_ptr + m.to(tl.int64)[:, None] * stride_m + c[None, :], mask=(m < M)[:, None] & c_mask[None, :],
                other=0.0).to(tl.float32)
    q = tl.trans(_to_e4m3(v * _pow2(-e)[None, :], INTERP))
    tl.store(q_ptr + c.to(tl.int64)[:, None] * MP + m[None, :], q, mask=c_mask[:, None] & (m < MP)[None, :])
    if pid_m == 0:
        tl.store(scale_ptr + c, _pow2(e), mask=c_mask)


def quantize_t_triton(t: torch.Tensor, bad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t [M, C]`` (fp32/fp16/bf16, unit stride along ``C``) -> ``(q [C, Mp] float8_e4m3fn, scale [C] float32)``,
    equal to ``fp8.quantize_t_torch(t)`` for finite ``t``; ``bad`` (int32 0-d) is set to 1 if ``t`` is not."""
    if t.dim() != 2 or t.stride(1) != 1:
        raise ValueError(f"quantize_t_triton: t must be 2-D with unit stride along its columns, got shape "
                         f"{tuple(t.shape)} strides {t.stride()}")
    M, C = t.shape
    MP = padded_tokens(M)
    q = torch.empty(C, MP, dtype=FP8_DTYPE, device=t.device)
    scale = torch.empty(C, dtype=torch.float32, device=t.device)
    if C == 0:
        return q, scale
    (am, ac), (cm, cc) = AMAX_TILE, CAST_TILE
    rows = am * triton.cdiv(triton.cdiv(M, am), AMAX_PARTIALS)     # a partial's rows: whole tiles
    P = triton.cdiv(M, rows) if M else 0    # rows of partial maxima (none for M = 0: every maximum is 0)
    part = torch.empty(P, C, dtype=torch.int32, device=t.device)
    if M:
        amax_kernel[(P, triton.cdiv(C, ac))](t, part, bad, M, C, t.stride(0), rows, BLOCK_M=am, BLOCK_C=ac)
    cast_t_kernel[(triton.cdiv(MP, cm), triton.cdiv(C, cc))](t, part, q.view(torch.uint8), scale, M, MP, C, P,
                                                            t.stride(0), BLOCK_M=cm, BLOCK_C=cc,
                                                            BLOCK_P=triton.next_power_of_2(max(P, 1)),
                                                            INTERP=INTERPRETED)
    return q, scale


# rows_kernel: a row of up to ROWS_ONE_READ entries is read once (held in registers), a longer one twice, in
# blocks of ROWS_BLOCK entries on 2 warps, or of 2 * ROWS_BLOCK on 4 warps above ROWS_BLOCK_LONG_FROM entries.
# On the H200 (benchmarks/results/speed/h200-step-launches/kprobe2.json, 19 block / warp variants at each of 8 row
# lengths) that is within 1 % of the fastest from 3072 to 12288 entries, the rows fp8 runs on (4096 x 3072 bf16 in
# 13.8 us, 4096 x 12288 in 51.7; a bf16 copy 12.5 and 48.8; a whole row of up to 16384 entries held in registers
# took 16.7 and 68.2), 5 % slower at 4096 and 16384 entries and 22-31 % at 768-1536;
# expand_fp8_kernel: [BLOCK_N, BLOCK_K] weights a program (whole groups; BLOCK_K >= group size), the transposed
# form with the long side along N (its stores' contiguous dimension); scale_max_kernel: groups a program
ROWS_ONE_READ = 1024
ROWS_BLOCK = 1024
ROWS_BLOCK_LONG_FROM = 4096
EXPAND_TILE = (32, 256)
EXPAND_TILE_T = (128, 64)
SCALE_BLOCK = 1024
GROUP_LAUNCH = 4    # layers of a stack one scale_max / expand launch covers (the kernels' four state slots)


@triton.jit
def _finite_abs(v):
    """``(|v|`` with non-finite entries as 0, int32 1 where ``v`` is NaN or infinite``)``."""
    a = tl.abs(v)
    nonfinite = (a != a) | (a == float("inf"))
    return tl.where(nonfinite, 0.0, a), nonfinite.to(tl.int32)


@triton.jit
def _row_bytes(v, inv, row_bad, INTERP: tl.constexpr):
    """e4m3 bytes of ``v * inv``; zeros for a row holding a non-finite entry."""
    return tl.where(row_bad, 0, _to_e4m3(tl.where(row_bad, 0.0, v * inv), INTERP)).to(tl.uint8)


@triton.jit
def rows_kernel(t_ptr, q_ptr, scale_ptr, C, stride_m, BLOCK: tl.constexpr, ONE_READ: tl.constexpr,
                INTERP: tl.constexpr):
    """Row ``m`` of ``t``: ``q[m] = e4m3(t[m] * 2**-e[m])`` and ``scale[m] = 2**e[m]``; a row holding a NaN or an
    infinity gets zero bytes and the scale NaN (``fp8_linear.quantize_rows_torch``). ``ONE_READ``: the row fits one
    ``BLOCK``."""
    m = tl.program_id(0).to(tl.int64)
    src = t_ptr + m * stride_m
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    bad = tl.zeros([BLOCK], dtype=tl.int32)
    c = tl.arange(0, BLOCK)
    if ONE_READ:
        v = tl.load(src + c, mask=c < C, other=0.0).to(tl.float32)
        amax, bad = _finite_abs(v)
    else:
        for c0 in range(0, C, BLOCK):
            a, nonfinite = _finite_abs(tl.load(src + c0 + c, mask=c0 + c < C, other=0.0).to(tl.float32))
            bad += nonfinite
            amax = tl.maximum(amax, a)
    row_bad = tl.sum(bad, axis=0) > 0
    e = _exponent(tl.max(amax, axis=0).to(tl.int32, bitcast=True))
    inv = _pow2(-e)
    if ONE_READ:
        tl.store(q_ptr + m * C + c, _row_bytes(v, inv, row_bad, INTERP), mask=c < C)
    else:
        for c0 in range(0, C, BLOCK):
            v = tl.load(src + c0 + c, mask=c0 + c < C, other=0.0).to(tl.float32)
            tl.store(q_ptr + m * C + c0 + c, _row_bytes(v, inv, row_bad, INTERP), mask=c0 + c < C)
    tl.store(scale_ptr + m, tl.where(row_bad, float("nan"), _pow2(e)))


@triton.jit
def _pick(i, a0, a1, a2, a3):
    """``a_i`` of four scalars (pointers or numbers), ``i`` in ``[0, 4)``: the launch's layer."""
    r = a0
    if i == 1:
        r = a1
    if i == 2:
        r = a2
    if i == 3:
        r = a3
    return r


@triton.jit
def scale_max_kernel(e0, e1, e2, e3, c0, c1, c2, c3, st0, st1, st2, st3, pd0, pd1, pd2, pd3, sb0, sb1, sb2, sb3,
                     nm0, nm1, nm2, nm3, og0, og1, og2, og3, s_ptr, part_ptr, P_STRIDE, GS: tl.constexpr,
                     BLOCK: tl.constexpr, INTERP: tl.constexpr):
    """Layer ``l = program_id(1)`` of the launch (up to four layers: ``e_l, c_l, st_l, pd_l`` its ``E``,
    ``corr_accum``, ``step_counter``, ``pending``, ``sb_l`` its strength's float64 bits, ``nm_l`` its ``N * G``,
    ``og_l`` its first group in the stack): its group scales ``S`` (``exact_scale``) into ``s[og_l + ...]``, and
    ``part[l * P_STRIDE + p]``, the largest ``log2 S`` among the groups ``p * BLOCK ...`` (-1e300 past the layer's
    groups). ``expand_fp8_kernel`` takes the maximum of these partials (no buffer to zero, no atomics) and raises 2
    to it once -- ``S`` grows with its logarithm, so that is the largest ``S``."""
    pid = tl.program_id(0)
    lay = tl.program_id(1)
    numel = _pick(lay, nm0, nm1, nm2, nm3)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    ballots = (tl.load(_pick(lay, st0, st1, st2, st3)).to(tl.int64)
               + tl.load(_pick(lay, pd0, pd1, pd2, pd3)).to(tl.int64))
    e = tl.load(_pick(lay, e0, e1, e2, e3) + offs, mask=mask, other=0)
    c = tl.load(_pick(lay, c0, c1, c2, c3) + offs, mask=mask, other=0)
    q = tl.where(mask, scale_log2(e, c, ballots, _pick(lay, sb0, sb1, sb2, sb3), GS), -1.0e300)
    tl.store(s_ptr + _pick(lay, og0, og1, og2, og3) + offs, exact_pow2(q, INTERP), mask=mask)
    tl.store(part_ptr + lay * P_STRIDE + pid, tl.max(q, axis=0))


@triton.jit
def expand_fp8_kernel(t0, t1, t2, t3, n_0, n_1, n_2, n_3, o_0, o_1, o_2, o_3, s_ptr, part_ptr, w_ptr, scale_ptr, K,
                      G, KB, P, W_LD, GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      BLOCK_P: tl.constexpr, TRANSPOSE: tl.constexpr, INTERP: tl.constexpr):
    """``wq = e4m3(T * S * 2**-ew)`` as bytes of layer ``l = program_id(2)`` of the launch (``t_l`` its
    ``T_packed``, ``n_l`` its rows, ``o_l`` the first of them in the stack; ``S`` the stack's group scales ``[sum
    N, G]`` from ``scale_max_kernel``), ``[sum N, K]`` (``[K, sum N]`` with ``TRANSPOSE``; rows ``W_LD`` bytes
    apart), and ``scale = 2**ew`` (``[sum N]``, ``[K]``); ``ew`` from the largest ``S``: the maximum of the ``P``
    partials of ``scale_max_kernel`` (every layer of the stack). ``BLOCK_K`` is a multiple of ``GS``."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    lay = tl.program_id(2)
    N = _pick(lay, n_0, n_1, n_2, n_3)
    n_off = _pick(lay, o_0, o_1, o_2, o_3)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    k0 = pid_k * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    p = tl.arange(0, BLOCK_P)
    s_max = exact_pow2(tl.max(tl.load(part_ptr + p, mask=p < P, other=-1.0e300), axis=0), INTERP)
    ew = _exponent(s_max.to(tl.int32, bitcast=True))
    rows = n_off + offs_n
    NG: tl.constexpr = BLOCK_K // GS
    offs_g = k0 // GS + tl.arange(0, NG)
    sc = tl.load(s_ptr + rows.to(tl.int64)[:, None] * G + offs_g[None, :],
                 mask=n_mask[:, None] & (offs_g < G)[None, :], other=0.0)
    w = weff_tile(_pick(lay, t0, t1, t2, t3), sc * _pow2(-ew), offs_n, n_mask, k0, KB, GS, BLOCK_N, BLOCK_K)
    q = _to_e4m3(w, INTERP)
    mask = n_mask[:, None] & k_mask[None, :]
    if TRANSPOSE:
        tl.store(w_ptr + offs_k.to(tl.int64)[None, :] * W_LD + rows[:, None], q, mask=mask)
        if (pid_n == 0) & (lay == 0):
            tl.store(scale_ptr + offs_k, tl.zeros([BLOCK_K], dtype=tl.float32) + _pow2(ew), mask=k_mask)
    else:
        tl.store(w_ptr + rows.to(tl.int64)[:, None] * W_LD + offs_k[None, :], q, mask=mask)
        if pid_k == 0:
            tl.store(scale_ptr + rows, tl.zeros([BLOCK_N], dtype=tl.float32) + _pow2(ew), mask=n_mask)


def _rows_launch(C: int) -> tuple[int, bool, int]:
    """``(BLOCK, ONE_READ, num_warps)`` of ``rows_kernel`` for rows of ``C`` entries (``ROWS_*`` above)."""
    if C <= ROWS_ONE_READ:
        block = triton.next_power_of_2(max(C, 16))
        return block, True, max(1, min(4, block // 256))
    block = ROWS_BLOCK if C <= ROWS_BLOCK_LONG_FROM else 2 * ROWS_BLOCK
    return block, False, max(1, block // 512)


def quantize_rows_triton(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t [M, C]`` (fp32/fp16/bf16, unit stride along ``C``) -> ``(q [M, C] float8_e4m3fn, scale [M] float32)``,
    equal to ``fp8_linear.quantize_rows_torch(t)``."""
    if t.dim() != 2 or (t.shape[1] > 1 and t.stride(1) != 1):
        raise ValueError(f"quantize_rows_triton: t must be 2-D with unit stride along its columns, got shape "
                         f"{tuple(t.shape)} strides {t.stride()}")
    M, C = t.shape
    q = torch.empty(M, C, dtype=FP8_DTYPE, device=t.device)
    scale = torch.empty(M, dtype=torch.float32, device=t.device)
    if M:
        block, one, warps = _rows_launch(C)
        rows_kernel[(M,)](t, q.view(torch.uint8), scale, C, t.stride(0), BLOCK=block, ONE_READ=one,
                          INTERP=INTERPRETED, num_warps=warps)
    return q, scale


def expand_fp8_group_triton(states: Sequence[tuple], in_features: int, group_size: int, strengths: Sequence[float],
                            transpose: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(wq, scale)`` of layers reading one input, stacked along the outputs as one layer: ``states`` are their
    ``(T_packed, E, corr_accum, step_counter, pending)``, ``strengths`` their strengths. ``wq [sum N, K]`` (``[K,
    sum N]`` with ``transpose``) float8_e4m3fn with one exponent ``ew`` for all of them, ``scale`` ``[sum N]``
    (``[K]``) float32: equal to ``fp8_linear.expand_fp8_torch`` of the stacked ``T_packed`` and group scales."""
    shapes = []
    for st, strength in zip(states, strengths):
        shapes.append(check_state(st[0], in_features, group_size, *st[1:4]))
        check_scalars(st[4], strength)
    device = states[0][0].device
    n_total = sum(N for N, _ in shapes)
    shape = (in_features, n_total) if transpose else (n_total, in_features)
    wq = torch.empty(shape, dtype=FP8_DTYPE, device=device)
    scale = torch.empty(shape[0], dtype=torch.float32, device=device)
    # partials: layer i's at [i * p_stride, (i + 1) * p_stride) -- every slot written (-1e300 past its groups);
    # S: the stack's group scales, [sum N, G] float32, computed once for all programs of the expansion
    G = shapes[0][1]
    p_stride = triton.cdiv(max(N * G for N, _ in shapes), SCALE_BLOCK)
    part = torch.empty(len(states) * p_stride, dtype=torch.float64, device=device)
    S = torch.empty(n_total * G, dtype=torch.float32, device=device)
    offsets = [sum(N for N, _ in shapes[:i]) for i in range(len(states))]
    # a launch takes four layers' state; its last layer repeats in unused slots (never read: a grid row a layer)
    launches = [([min(first + j, len(states) - 1) for j in range(GROUP_LAUNCH)], min(GROUP_LAUNCH, len(states) - first))
                for first in range(0, len(states), GROUP_LAUNCH)]
    for pick, n_lay in launches:
        scale_max_kernel[(p_stride, n_lay)](
            *[states[i][f] for f in range(1, 5) for i in pick], *[float64_bits(strengths[i]) for i in pick],
            *[shapes[i][0] * G for i in pick], *[offsets[i] * G for i in pick], S, part[pick[0] * p_stride:],
            p_stride, GS=group_size, BLOCK=SCALE_BLOCK, INTERP=INTERPRETED)
    bn, bk = EXPAND_TILE_T if transpose else EXPAND_TILE
    bk = max(bk, group_size)
    w8 = wq.view(torch.uint8)
    for pick, n_lay in launches:     # after every launch's partials: the exponent is the whole stack's
        grid = (triton.cdiv(max(shapes[i][0] for i in pick), bn), triton.cdiv(in_features, bk), n_lay)
        expand_fp8_kernel[grid](*[states[i][0] for i in pick], *[shapes[i][0] for i in pick],
                                *[offsets[i] for i in pick], S, part, w8, scale, in_features, G, in_features // 4,
                                part.numel(), w8.stride(0), GS=group_size, BLOCK_N=bn, BLOCK_K=bk,
                                BLOCK_P=triton.next_power_of_2(part.numel()), TRANSPOSE=transpose,
                                INTERP=INTERPRETED, num_warps=4)
    return wq, scale


def expand_fp8_triton(T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor, step_counter: torch.Tensor,
                      pending: torch.Tensor, in_features: int, group_size: int, strength: float,
                      transpose: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(wq, scale)`` of one layer's state (``expand_fp8_group_triton`` of one), equal to
    ``fp8_linear.expand_fp8_torch(T_packed, S, ...)`` with ``S`` its group scales: ``wq [N, K]`` (``[K, N]`` with
    ``transpose``) float8_e4m3fn, ``scale`` ``[N]`` (``[K]``) float32."""
    return expand_fp8_group_triton([(T_packed, E, corr_accum, step_counter, pending)], in_features, group_size,
                                   [strength], transpose)
