"""Triton kernels for the ternary linear layer with BigInt correlation scaling.

Three kernels, all reading the integer training state directly:

* ``ternary_fwd_kernel``   ``y[M, N]      = x[M, K] @ W_eff[N, K].T``
* ``ternary_gradx_kernel`` ``grad_x[M, K] = grad_y[M, N] @ W_eff[N, K]``
* ``ternary_corr_kernel``  ``corr_accum[n, g] += -sum_{k in g} sign((grad_y.T @ x)[n, k]) * T[n, k]``

``W_eff = T * S`` is never written to global memory: each program loads the
2-bit codes of its weight tile from ``T_packed`` (layout: ``packing.py``),
decodes them in registers with ``value = (code & 1) - (code >> 1)``, expands the
per-group BigInt scale ``S`` from ``E``, ``corr_accum`` and the ballot count
``step_counter + pending`` (``bigint_scale.py``) and multiplies. The float
``grad_W`` tile of the correlation kernel lives only in registers.

In-kernel scale (``_group_scale``)::

    coef = strength / (float64(ballots) * group_size)     (0 when ballots == 0)
    q    = float32(float64(corr_accum) * coef)            (float64 product, rounded once)
    S    = exp2_f32(q) * 2**E                             (2**E built exactly from the exponent bits)

``E`` is an integer in [-100, 100], so ``2**E`` is an exact normal float32; only
the fractional part ``exp2(q)`` with ``|q| <= strength <= 20`` is approximated.
Error against the float64 reference ``float32(exp2(E + strength*corr/(ballots*gs)))``
(relative): float32 rounding of ``strength`` (a kernel scalar argument) and of
``q`` each contribute ``<= ln2 * |q| * 2**-24``, the float32 ``exp2``
(``ex2.approx.f32`` on NVIDIA, <= 2 ulp) ``<= 2**-22``, and the reference's own
rounding ``2**-24``: in total ``<= 2**-22 + 2**-24 + 2*ln2*20*2**-24 < 1.2e-6``
for any ``strength <= 20`` (``< 4.5e-7`` at the default strength 4). Tests check
``1.5e-6``.

Tiling (see ``docs/kernels.md``): ``group_size`` (``GS``) and ``BLOCK_K`` are powers
of two; when ``GS >= BLOCK_K`` a K tile lies inside one group per output row and
the scale is a ``[BLOCK_N]`` vector, otherwise the tile holds ``BLOCK_K // GS``
whole groups per row and the scale is a ``[BLOCK_N, BLOCK_K // GS]`` tile broadcast
over the group. Both cases keep every group on whole bytes (``GS >= 4``).

The correlation kernel reduces each ``grad_W`` element over *all* of M inside one
program, in a fixed order (``BLOCK_M`` chunks, ascending), with fp32
accumulation; the launcher picks its tile sizes from a fixed table (never by
timing), so the float value whose sign is taken does not change from run to run.
Votes are integers added with int64 atomics, which commute exactly.
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["ternary_fwd_kernel", "ternary_gradx_kernel", "ternary_corr_kernel", "ternary_scale_kernel"]


@triton.jit
def _ballot_coef(step_ptr, pending, strength, GS: tl.constexpr):
    """``strength / (ballots * GS)`` as a float64 scalar, 0.0 while ``ballots == 0``."""
    ballots = tl.load(step_ptr).to(tl.int64) + pending
    denom = ballots.to(tl.float64) * GS
    coef = strength.to(tl.float64) / tl.maximum(denom, 1.0)
    return tl.where(denom > 0.0, coef, 0.0)


@triton.jit
def _group_scale(e_ptr, corr_ptr, offs, mask, coef):
    """Per-group BigInt scale ``S`` (float32) at flat ``[N, G]`` offsets ``offs``."""
    e = tl.load(e_ptr + offs, mask=mask, other=0).to(tl.int32)
    c = tl.load(corr_ptr + offs, mask=mask, other=0).to(tl.int64)
    q = (c.to(tl.float64) * coef).to(tl.float32)
    pow2_e = ((e + 127) << 23).to(tl.float32, bitcast=True)  # exact 2**E for E in [-126, 127]
    return tl.exp2(q) * pow2_e


@triton.jit
def _decode_tile(t_ptr, offs_n, n_mask, k0, K, KB, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Ternary values of rows ``offs_n``, columns ``k0 .. k0+BLOCK_K`` as int32 ``[BLOCK_N, BLOCK_K]``.

    Loads the ``BLOCK_K // 4`` packed bytes of each row once and splits each byte into
    its four 2-bit codes (weight ``4*b + j`` at bits ``2j, 2j+1`` of byte ``b``).
    Columns ``>= K`` and masked rows decode to 0.
    """
    offs_b = k0 // 4 + tl.arange(0, BLOCK_K // 4)
    row = offs_n.to(tl.int64) * KB
    b = tl.load(t_ptr + row[:, None] + offs_b[None, :], mask=n_mask[:, None] & (offs_b < KB)[None, :], other=0)
    b = b.to(tl.int32)
    shifts = tl.arange(0, 4) * 2
    codes = (b[:, :, None] >> shifts[None, None, :]) & 3
    codes = tl.reshape(codes, (BLOCK_N, BLOCK_K))
    return (codes & 1) - (codes >> 1)


@triton.jit
def _weff_tile(t_ptr, e_ptr, corr_ptr, offs_n, n_mask, k0, K, KB, G, coef,
               GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``W_eff`` tile ``[BLOCK_N, BLOCK_K]`` float32 for rows ``offs_n`` and columns from ``k0``."""
    t = _decode_tile(t_ptr, offs_n, n_mask, k0, K, KB, BLOCK_N, BLOCK_K).to(tl.float32)
    row_g = offs_n.to(tl.int64) * G
    if GS >= BLOCK_K:
        # the whole K tile lies in group k0 // GS of every row
        s = _group_scale(e_ptr, corr_ptr, row_g + k0 // GS, n_mask, coef)
        w = t * s[:, None]
    else:
        NG: tl.constexpr = BLOCK_K // GS
        offs_g = k0 // GS + tl.arange(0, NG)
        s = _group_scale(e_ptr, corr_ptr, row_g[:, None] + offs_g[None, :], n_mask[:, None] & (offs_g < G)[None, :],
                         coef)
        w = tl.reshape(tl.reshape(t, (BLOCK_N, NG, GS)) * s[:, :, None], (BLOCK_N, BLOCK_K))
    return w


@triton.jit
def ternary_fwd_kernel(x_ptr, t_ptr, e_ptr, corr_ptr, step_ptr, y_ptr,
                       M, N, K, G, KB,
                       stride_xm, stride_xk, stride_ym, stride_yn,
                       pending, strength, M_KEY,
                       GS: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """``y[M, N] = x[M, K] @ (T * S)[N, K].T``, fp32 accumulation, ``y`` stored in its own dtype.

    ``M_KEY`` is unused in the body: it is the bucketed M the autotuner keys on.
    """
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    coef = _ballot_coef(step_ptr, pending, strength, GS)
    x_row = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_row + offs_k[None, :] * stride_xk, mask=m_mask[:, None] & (offs_k < K)[None, :], other=0.0)
        w = _weff_tile(t_ptr, e_ptr, corr_ptr, offs_n, n_mask, k0, K, KB, G, coef, GS, BLOCK_N, BLOCK_K)
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc, input_precision=DOT_PRECISION)

    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def ternary_gradx_kernel(gy_ptr, t_ptr, e_ptr, corr_ptr, step_ptr, gx_ptr,
                         M, N, K, G, KB,
                         stride_gm, stride_gn, stride_xm, stride_xk,
                         pending, strength, M_KEY,
                         GS: tl.constexpr, DOT_PRECISION: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """``grad_x[M, K] = grad_y[M, N] @ (T * S)[N, K]``, fp32 accumulation; reduction over N."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_k = tl.cdiv(K, BLOCK_K)
    num_pid_in_group = GROUP_M * num_pid_k
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_k = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k0 = pid_k * BLOCK_K
    m_mask = offs_m < M
    k_mask = offs_k < K
    coef = _ballot_coef(step_ptr, pending, strength, GS)
    gy_row = gy_ptr + offs_m.to(tl.int64)[:, None] * stride_gm

    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        gy = tl.load(gy_row + offs_n[None, :] * stride_gn, mask=m_mask[:, None] & n_mask[None, :], other=0.0)
        w = _weff_tile(t_ptr, e_ptr, corr_ptr, offs_n, n_mask, k0, K, KB, G, coef, GS, BLOCK_N, BLOCK_K)
        acc = tl.dot(gy, w.to(gy.dtype), acc, input_precision=DOT_PRECISION)

    gx_ptrs = gx_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :] * stride_xk
    tl.store(gx_ptrs, acc.to(gx_ptr.dtype.element_ty), mask=m_mask[:, None] & k_mask[None, :])


@triton.jit
def ternary_corr_kernel(gy_ptr, x_ptr, t_ptr, corr_ptr,
                        M, N, K, G, KB,
                        stride_gm, stride_gn, stride_xm, stride_xk,
                        GS: tl.constexpr, DOT_PRECISION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``corr_accum[n, g] += -sum_{k in g} sign(sum_m grad_y[m, n] * x[m, k]) * T[n, k]``.

    One program owns the ``[BLOCK_N, BLOCK_K]`` tile of ``grad_W = grad_y.T @ x`` and
    reduces it over all of M (ascending ``BLOCK_M`` chunks, fp32 accumulation in
    registers). ``sign`` of an exactly-zero (or NaN) sum is 0, so such a weight
    casts no vote. Votes are summed per group in registers and added with int64
    atomics (exact and order-independent): several programs share a group when
    ``GS > BLOCK_K``.
    """
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k0 = pid_k * BLOCK_K
    n_mask = offs_n < N
    k_mask = offs_k < K

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_mask = offs_m < M
        m64 = offs_m.to(tl.int64)[:, None]
        gy = tl.load(gy_ptr + m64 * stride_gm + offs_n[None, :] * stride_gn,
                     mask=m_mask[:, None] & n_mask[None, :], other=0.0)
        x = tl.load(x_ptr + m64 * stride_xm + offs_k[None, :] * stride_xk,
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        acc = tl.dot(tl.trans(gy), x, acc, input_precision=DOT_PRECISION)

    sgn = (acc > 0.0).to(tl.int32) - (acc < 0.0).to(tl.int32)
    t = _decode_tile(t_ptr, offs_n, n_mask, k0, K, KB, BLOCK_N, BLOCK_K)
    prod = sgn * t
    row_g = offs_n.to(tl.int64) * G
    if GS >= BLOCK_K:
        vote = -tl.sum(prod, axis=1)
        tl.atomic_add(corr_ptr + row_g + k0 // GS, vote.to(tl.int64), mask=n_mask, sem="relaxed")
    else:
        NG: tl.constexpr = BLOCK_K // GS
        vote = -tl.sum(tl.reshape(prod, (BLOCK_N, NG, GS)), axis=2)
        offs_g = k0 // GS + tl.arange(0, NG)
        tl.atomic_add(corr_ptr + row_g[:, None] + offs_g[None, :], vote.to(tl.int64),
                      mask=n_mask[:, None] & (offs_g < G)[None, :], sem="relaxed")


@triton.jit
def ternary_scale_kernel(e_ptr, corr_ptr, step_ptr, s_ptr, NUMEL, pending, strength,
                         GS: tl.constexpr, BLOCK: tl.constexpr):
    """Writes the in-kernel scale ``S`` for every group (flat ``[N * G]``): for tests and export only."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < NUMEL
    coef = _ballot_coef(step_ptr, pending, strength, GS)
    tl.store(s_ptr + offs, _group_scale(e_ptr, corr_ptr, offs, mask, coef), mask=mask)
