"""Triton kernels for the ternary linear layer with BigInt correlation scaling.

Three kernels read the integer training state directly:

* ``ternary_fwd_kernel``   ``y[M, N]      = x[M, K] @ W_eff[N, K].T``
* ``ternary_gradx_kernel`` ``grad_x[M, K] = grad_y[M, N] @ W_eff[N, K]``
* ``ternary_corr_kernel``  ``corr_accum[n, g] += -sum_{k in g} sign((grad_y.T @ x)[n, k]) * T[n, k]``

plus ``split_reduce_kernel`` (fixed-order sum of the fp32 split partials of the
M <= 16 decode path, which splits the reduction dimension over programs) and
``ternary_scale_kernel`` (writes the in-kernel ``S``; tests / export only).

``W_eff = T * S`` is never written to global memory: each program loads the
2-bit codes of its weight tile from ``T_packed`` (layout: ``packing.py``),
decodes them in registers with ``value = (code & 1) - (code >> 1)``, expands the
per-group BigInt scale ``S`` from ``E``, ``corr_accum`` and the ballot count
``step_counter + pending`` (``bigint_scale.py``) and multiplies. The float
``grad_W`` tile of the correlation kernel lives only in registers.

In-kernel scale (``_scale_from_state``)::

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

__all__ = ["ternary_fwd_kernel", "ternary_gradx_kernel", "ternary_corr_kernel", "ternary_scale_kernel",
           "split_reduce_kernel"]


@triton.jit
def _ballot_coef(step_ptr, pending, strength, GS: tl.constexpr):
    """``strength / (ballots * GS)`` as a float64 scalar, 0.0 while ``ballots == 0``."""
    ballots = tl.load(step_ptr).to(tl.int64) + pending
    denom = ballots.to(tl.float64) * GS
    coef = strength / tl.maximum(denom, 1.0)  # fp32 scalar / fp64 -> fp64
    return tl.where(denom > 0.0, coef, 0.0)


@triton.jit
def _load_bytes(t_ptr, row_off, n_mask, k0, KB, BLOCK_K: tl.constexpr):
    """The ``BLOCK_K // 4`` packed bytes of columns ``k0 .. k0+BLOCK_K`` of rows ``row_off / KB``:
    int32 ``[BLOCK_N, BLOCK_K // 4]`` (contiguous per row; bytes past the row end read as 0)."""
    offs_b = k0 // 4 + tl.arange(0, BLOCK_K // 4)
    b = tl.load(t_ptr + row_off[:, None] + offs_b[None, :], mask=n_mask[:, None] & (offs_b < KB)[None, :], other=0)
    return b.to(tl.int32)


@triton.jit
def _expand_bytes(b, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Decode ``[BLOCK_N, BLOCK_K // 4]`` packed bytes into int32 ternary values ``[BLOCK_N, BLOCK_K]``.

    Weight ``4*i + j`` is the 2-bit code at bits ``2j, 2j+1`` of byte ``i``;
    ``value = (code & 1) - (code >> 1)`` = ``bit 2j`` minus ``bit 2j+1``. The four
    code planes are put back in column order with ``tl.interleave`` (an in-register
    join + reshape): ``interleave(interleave(v0, v2), interleave(v1, v3))``.
    """
    v0 = (b & 1) - ((b >> 1) & 1)
    v1 = ((b >> 2) & 1) - ((b >> 3) & 1)
    v2 = ((b >> 4) & 1) - ((b >> 5) & 1)
    v3 = ((b >> 6) & 1) - ((b >> 7) & 1)
    return tl.interleave(tl.interleave(v0, v2), tl.interleave(v1, v3))


@triton.jit
def _load_group_state(e_ptr, corr_ptr, row_g, n_mask, k0, G, GS: tl.constexpr, BLOCK_K: tl.constexpr):
    """``(E, corr_accum)`` of the groups under columns ``k0 .. k0+BLOCK_K``: ``[BLOCK_N]`` when
    ``GS >= BLOCK_K`` (one group), else ``[BLOCK_N, BLOCK_K // GS]``. Groups ``>= G`` read 0."""
    if GS >= BLOCK_K:
        g = k0 // GS
        mask = n_mask & (g < G)
        offs = row_g + g
    else:
        offs_g = k0 // GS + tl.arange(0, BLOCK_K // GS)
        mask = n_mask[:, None] & (offs_g < G)[None, :]
        offs = row_g[:, None] + offs_g[None, :]
    e = tl.load(e_ptr + offs, mask=mask, other=0)
    c = tl.load(corr_ptr + offs, mask=mask, other=0)
    return e, c


@triton.jit
def _scale_from_state(e, c, coef):
    """BigInt scale ``S = exp2(float32(corr * coef)) * 2**E`` (float32; see module doc)."""
    q = (c.to(tl.int64).to(tl.float64) * coef).to(tl.float32)
    pow2_e = ((e.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)  # exact 2**E for E in [-126, 127]
    return tl.exp2(q) * pow2_e


@triton.jit
def _group_scale(e_ptr, corr_ptr, offs, mask, coef):
    """Per-group BigInt scale ``S`` (float32) at flat ``[N, G]`` offsets ``offs``."""
    e = tl.load(e_ptr + offs, mask=mask, other=0)
    c = tl.load(corr_ptr + offs, mask=mask, other=0)
    return _scale_from_state(e, c, coef)


@triton.jit
def _weff_from(b, e, c, coef, GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``W_eff`` tile ``[BLOCK_N, BLOCK_K]`` float32 from packed bytes and the groups' ``(E, corr)``."""
    t = _expand_bytes(b, BLOCK_N, BLOCK_K).to(tl.float32)
    s = _scale_from_state(e, c, coef)
    if GS >= BLOCK_K:
        w = t * s[:, None]
    else:
        NG: tl.constexpr = BLOCK_K // GS
        w = tl.reshape(tl.reshape(t, (BLOCK_N, NG, GS)) * s[:, :, None], (BLOCK_N, BLOCK_K))
    return w


@triton.jit
def _expand_bits16(b, sbits, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """16-bit float ``W_eff`` bit patterns ``[BLOCK_N, BLOCK_K]`` (int16) straight from packed bytes.

    ``sbits``: the bit pattern of the (positive) scale in the input's 16-bit float type,
    broadcastable to ``[BLOCK_N, BLOCK_K // 4]``. For code ``c`` of plane ``j``: the
    magnitude is ``sbits`` when ``c != 0`` (bit ``2j`` or ``2j+1`` set) and the sign
    bit is the code's high bit moved to bit 15 -- ``T * S`` rounded to the input dtype,
    bit for bit, without any float arithmetic per weight.
    """
    m0 = ((b | (b >> 1)) & 1) * sbits | ((b << 14) & 0x8000)
    m1 = (((b >> 2) | (b >> 3)) & 1) * sbits | ((b << 12) & 0x8000)
    m2 = (((b >> 4) | (b >> 5)) & 1) * sbits | ((b << 10) & 0x8000)
    m3 = (((b >> 6) | (b >> 7)) & 1) * sbits | ((b << 8) & 0x8000)
    w = tl.interleave(tl.interleave(m0, m2), tl.interleave(m1, m3))
    return w.to(tl.int16)


@triton.jit
def _weff_cast(b, e, c, coef, dtype: tl.constexpr, GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``W_eff`` tile ``[BLOCK_N, BLOCK_K]`` in ``dtype`` (the dot's input type).

    16-bit types with ``GS >= BLOCK_K`` (one scale per row in the tile) use the bit
    construction of ``_expand_bits16``; otherwise the float path of ``_weff_from``.
    Both give ``float32(T * S)`` rounded once to ``dtype``.
    """
    if dtype != tl.float32 and GS >= BLOCK_K:
        s = _scale_from_state(e, c, coef)
        sbits = s.to(dtype).to(tl.int16, bitcast=True).to(tl.int32)
        w = _expand_bits16(b, sbits[:, None], BLOCK_N, BLOCK_K).to(dtype, bitcast=True)
    else:
        w = _weff_from(b, e, c, coef, GS, BLOCK_N, BLOCK_K).to(dtype)
    return w


@triton.jit
def _grouped_pid(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Program id -> ``(pid_m, pid_n)`` with ``GROUP_M`` row tiles walked together (L2 reuse of the
    weight tiles), the standard Triton matmul ordering."""
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def ternary_fwd_kernel(x_ptr, t_ptr, e_ptr, corr_ptr, step_ptr, y_ptr,
                       M, N, K, G, KB,
                       stride_xm, stride_xk, stride_ym, stride_yn, stride_ys, K_PER_SPLIT,
                       pending, strength, M_KEY,
                       GS: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """``y[M, N] = x[M, K] @ (T * S)[N, K].T``, fp32 accumulation, ``y`` stored in its own dtype.

    ``M_KEY`` is unused in the body: it is the bucketed M the autotuner keys on.
    The packed bytes and group state of K step ``i + 1`` are loaded (into registers)
    while step ``i`` is decoded and multiplied, so their latency is hidden; ``x`` is
    pipelined through shared memory by Triton.

    Split-K (decode path): program axis 1 selects the K range ``[s*K_PER_SPLIT,
    (s+1)*K_PER_SPLIT)``; the fp32 partial is stored at ``y_ptr + s*stride_ys`` (a
    ``[SPLIT, M, N]`` float32 workspace) and ``split_reduce_kernel`` sums the splits in
    a fixed order. Without split, ``K_PER_SPLIT >= K`` and ``stride_ys = 0``.
    """
    pid_m, pid_n = _grouped_pid(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    coef = _ballot_coef(step_ptr, pending, strength, GS)
    x_row = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    row_off = offs_n.to(tl.int64) * KB
    row_g = offs_n.to(tl.int64) * G

    pid_s = tl.program_id(1)
    k_start = pid_s * K_PER_SPLIT
    k_end = tl.minimum(K, k_start + K_PER_SPLIT)
    b_next = _load_bytes(t_ptr, row_off, n_mask, k_start, KB, BLOCK_K)
    e_next, c_next = _load_group_state(e_ptr, corr_ptr, row_g, n_mask, k_start, G, GS, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        b, e, c = b_next, e_next, c_next
        b_next = _load_bytes(t_ptr, row_off, n_mask, k0 + BLOCK_K, KB, BLOCK_K)
        e_next, c_next = _load_group_state(e_ptr, corr_ptr, row_g, n_mask, k0 + BLOCK_K, G, GS, BLOCK_K)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_row + offs_k[None, :] * stride_xk, mask=m_mask[:, None] & (offs_k < K)[None, :], other=0.0)
        w = _weff_cast(b, e, c, coef, x_ptr.dtype.element_ty, GS, BLOCK_N, BLOCK_K)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)

    y_ptrs = y_ptr + pid_s.to(tl.int64) * stride_ys + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def ternary_gradx_kernel(gy_ptr, t_ptr, e_ptr, corr_ptr, step_ptr, gx_ptr,
                         M, N, K, G, KB,
                         stride_gm, stride_gn, stride_xm, stride_xk, stride_xs, N_PER_SPLIT,
                         pending, strength, M_KEY,
                         GS: tl.constexpr, DOT_PRECISION: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """``grad_x[M, K] = grad_y[M, N] @ (T * S)[N, K]``, fp32 accumulation; reduction over N
    (weight rows), with the next N step's bytes and group state prefetched into registers.
    Split-N (decode path) works as the forward's split-K: program axis 1 picks the N range
    and the fp32 partial goes to ``gx_ptr + s*stride_xs``."""
    pid_m, pid_k = _grouped_pid(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_K), GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k0 = pid_k * BLOCK_K
    m_mask = offs_m < M
    k_mask = offs_k < K
    coef = _ballot_coef(step_ptr, pending, strength, GS)
    gy_row = gy_ptr + offs_m.to(tl.int64)[:, None] * stride_gm

    pid_s = tl.program_id(1)
    n_start = pid_s * N_PER_SPLIT
    n_end = tl.minimum(N, n_start + N_PER_SPLIT)
    offs_n = n_start + tl.arange(0, BLOCK_N)
    n_mask = offs_n < n_end
    b_next = _load_bytes(t_ptr, offs_n.to(tl.int64) * KB, n_mask, k0, KB, BLOCK_K)
    e_next, c_next = _load_group_state(e_ptr, corr_ptr, offs_n.to(tl.int64) * G, n_mask, k0, G, GS, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(n_start, n_end, BLOCK_N):
        b, e, c = b_next, e_next, c_next
        offs_n1 = n0 + BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask1 = offs_n1 < n_end
        b_next = _load_bytes(t_ptr, offs_n1.to(tl.int64) * KB, n_mask1, k0, KB, BLOCK_K)
        e_next, c_next = _load_group_state(e_ptr, corr_ptr, offs_n1.to(tl.int64) * G, n_mask1, k0, G, GS, BLOCK_K)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        gy = tl.load(gy_row + offs_n[None, :] * stride_gn, mask=m_mask[:, None] & (offs_n < n_end)[None, :], other=0.0)
        w = _weff_cast(b, e, c, coef, gy_ptr.dtype.element_ty, GS, BLOCK_N, BLOCK_K)
        acc = tl.dot(gy, w, acc, input_precision=DOT_PRECISION)

    gx_ptrs = gx_ptr + pid_s.to(tl.int64) * stride_xs + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :] * stride_xk
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
    t = _expand_bytes(_load_bytes(t_ptr, offs_n.to(tl.int64) * KB, n_mask, k0, KB, BLOCK_K), BLOCK_N, BLOCK_K)
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


@triton.jit
def split_reduce_kernel(ws_ptr, out_ptr, MN, C, SPLIT, stride_om, stride_oc, BLOCK: tl.constexpr):
    """``out[m, c] = sum_s ws[s, m, c]`` over the fp32 ``[SPLIT, M, C]`` workspace, in ascending ``s``
    (a fixed order: the split-K/N decode path stays deterministic run to run)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    ptrs = ws_ptr + offs
    for _ in range(0, SPLIT):
        acc += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += MN
    m = offs // C
    c = offs % C
    tl.store(out_ptr + m.to(tl.int64) * stride_om + c * stride_oc, acc.to(out_ptr.dtype.element_ty), mask=mask)
