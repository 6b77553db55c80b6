"""Triton kernels of the frozen (inference) ternary linear op: ``y [M, N] = x [M, K] @ (T * S).T`` from
``T_packed`` and a float32 group scale ``S [N, K // group_size]`` (reference: ``linear.decode_forward_torch``).

``decode_forward(path="auto")`` sends 1-16 rows of bf16/fp16 x (groups 64/128/256, ``K % 256 == 0``) to
``decode_tc.decode_tc_kernel`` (tensor cores, inline PTX; 2.4-2.9x cuBLAS bf16 at one row on the H200 where
the kernels below reach 1.8-2.2x, ``benchmarks/results/inference/h200.md``); the kernels here take the rest (fp32
x, other group sizes, the prompt).

* ``decode_gemv_kernel`` (``M == 1``, ``group_size >= 16``, ``in_features % 16 == 0``): a CUDA-core GEMV.
  ``T_packed`` is read as int32 words (16 trits a word); a trit enters the FMA as ``f = (t + 5) / 8``,
  made by one byte permute (``prmt``) -- exactly representable, and ``f * x`` is exact for 16-bit ``x`` -- and
  a group's sum is ``sum(t * x) = 8 * sum(f * x) - 5 * sum(x)``, times the group's ``S``.
* ``decode_gemv_expand_kernel`` (``path="gemv_expand"``, not chosen by ``auto``): the plain form of the GEMV --
  trits expanded to a float tile, ``x`` loaded once per K step as a vector -- kept for the decode sweep to time
  against ``decode_gemv_kernel`` (``bench_decode.py --parts sweep``).
* ``decode_mma_kernel`` (2-16 rows, or one row of a layer the GEMV does not take): tensor cores, one 16-row
  tile, ``W_eff`` built in registers in x's dtype.
* ``expand_scaled_kernel`` (more rows: the prompt): ``W_eff`` in x's dtype into a transient ``[N, K]`` buffer,
  then cuBLAS -- bit-equal to ``expand_weight(T_packed, S).to(dtype)``.

Both decode kernels own ``BLOCK_N`` output features and one K range a program; K is split when ``N / BLOCK_N``
programs would leave SMs idle (fp32 partials summed in a fixed order by the last program of each tile,
``triton_common.split_epilogue``: deterministic, and no second kernel),
and the next K step's bytes and scales are loaded before the current step is used. Launch tiles:
``_GEMV_TILE`` / ``_MMA_TILE`` (from the H200 sweeps in ``benchmarks/results/inference``).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..format import packed_out_features, tc_rows, tc_tiles_ok, tc_tiles_shapes
from .decode_tc import tc_forward, tc_ok
from .triton_common import (INTERPRETED, check_act, check_device, check_group_size_op, check_kernel_device,
                            dot_precision, expand_bytes, group_sums, load_bytes, n_sm, round_to,
                            split_buffers, split_epilogue, split_len, word_dots, gemv_split_start, plane_signs16,
                            SIGN_TABLES)

__all__ = ["decode_forward", "decode_gemv_kernel", "decode_gemv_expand_kernel", "decode_mma_kernel",
           "expand_scaled_kernel", "expand_scaled", "DECODE_MAX_M", "decode_config", "gemv_ok", "planes_ok"]

#: rows of ``x`` up to which the GEMV kernel runs; above it (prompts) W_eff is expanded once for cuBLAS
DECODE_MAX_M = 16


@triton.jit
def _load_s(s_ptr, row_g, n_mask, k0, k_end, G, GS: tl.constexpr, BLOCK_K: tl.constexpr):
    """The group scales under columns ``k0 .. k0+BLOCK_K``: ``[BLOCK_N]`` when ``GS >= BLOCK_K`` (one group),
    else ``[BLOCK_N, BLOCK_K // GS]``; 0 past ``k_end`` or the last group (a prefetch past the end reads nothing)."""
    if GS >= BLOCK_K:
        g = k0 // GS
        return tl.load(s_ptr + row_g + g, mask=n_mask & (g < G) & (k0 < k_end), other=0.0)
    else:
        g = k0 // GS + tl.arange(0, BLOCK_K // GS)
        return tl.load(s_ptr + row_g[:, None] + g[None, :], mask=n_mask[:, None] & ((g < G) & (k0 < k_end))[None, :],
                       other=0.0)


@triton.jit
def decode_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, ws_ptr, cnt_ptr, N, K, G, KW, stride_xk, SPLIT, Q_PER_SPLIT, F_HI,
                       GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INTERP: tl.constexpr):
    """``y[1, N] (+)= x[1, K] @ (T * S)[N, K].T`` on CUDA cores, fp32; ``w_ptr``: ``T_packed`` as int32 words
    ``[N, K // 16]`` (byte ``b`` of word ``q`` is packed byte ``4q + b``); ``s_ptr``: float32 ``[N, G]``; ``GS >= 16``.
    Program axis 0: ``BLOCK_N`` output features; axis 1: the K range ``[16 * s * Q_PER_SPLIT, ...)``; with
    ``SPLIT > 1`` the partials meet in ``ws_ptr [SPLIT, N]`` (``triton_common.split_epilogue``). The next K step's words *and
    scales* are loaded before the current step is decoded (a scale load waited for inside its own step costs a
    full memory latency per step). Each K step's group sums are reduced to ``[BLOCK_N]`` inside the loop: keeping
    a ``[BLOCK_N, BLOCK_K // 16]`` accumulator and summing it once after the loop measured 1.2-1.5x slower on the
    H200 (a scale load per word; ``benchmarks/results/inference/h200-gemv-ab/``)."""
    pid_n, pid_s, offs_n, n_mask, row_w, row_g, q_start, q_end, offs_q, w_next = gemv_split_start(
        w_ptr, N, G, KW, Q_PER_SPLIT, BLOCK_N, BLOCK_K)
    BW: tl.constexpr = BLOCK_K // 16
    s_next = _load_s(s_ptr, row_g, n_mask, q_start * 16, q_end * 16, G, GS, BLOCK_K)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for q0 in range(q_start, q_end, BW):
        w = w_next
        s = s_next
        q1 = q0 + BW + offs_q
        w_next = tl.load(w_ptr + row_w[:, None] + q1[None, :], mask=n_mask[:, None] & (q1 < q_end)[None, :], other=0)
        s_next = _load_s(s_ptr, row_g, n_mask, (q0 + BW) * 16, q_end * 16, G, GS, BLOCK_K)
        k0 = q0 * 16
        cols = k0 + 16 * offs_q
        x_base = x_ptr + cols * stride_xk          # column 4b + j of each word at x_base + (4b + j) * stride_xk
        x_mask = cols < K                          # K % 16 == 0: a word's columns are all in range or none
        ps, xs = word_dots(w, x_base, x_mask, stride_xk, F_HI, BLOCK_N, BW, INTERP)
        acc += group_sums(ps, xs, s, GS, BLOCK_N, BLOCK_K)
    if SPLIT == 1:
        tl.store(y_ptr + offs_n, acc.to(y_ptr.dtype.element_ty), mask=n_mask)
    else:
        split_epilogue(acc, y_ptr + offs_n, ws_ptr + offs_n, n_mask, cnt_ptr + pid_n, pid_s, SPLIT, N, 8)


@triton.jit
def _byte_split_start(N, K, G, KB, K_PER_SPLIT, BLOCK_N: tl.constexpr):
    """The prologue of the decode kernels that read ``T_packed`` as bytes: program axis 0 owns ``BLOCK_N`` rows,
    axis 1 the columns ``[k_start, k_end)``. Returns ``(pid_n, pid_s, offs_n, n_mask, row_off, row_g, k_start,
    k_end)``: ``row_off`` / ``row_g`` the rows' offsets in bytes (``KB`` a row) / groups (``G`` a row)."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start = pid_s * K_PER_SPLIT
    return (pid_n, pid_s, offs_n, offs_n < N, offs_n.to(tl.int64) * KB, offs_n.to(tl.int64) * G, k_start,
            tl.minimum(K, k_start + K_PER_SPLIT))


@triton.jit
def decode_gemv_expand_kernel(x_ptr, t_ptr, s_ptr, y_ptr, ws_ptr, cnt_ptr, N, K, G, KB, stride_xk, SPLIT,
                              K_PER_SPLIT, GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The plain form of ``decode_gemv_kernel`` (``path="gemv_expand"``; an alternative the decode sweep times
    against it): each K step's packed bytes become a float trit tile ``[BLOCK_N, BLOCK_K]`` (``expand_bytes``),
    multiplied by ``x``'s ``BLOCK_K`` columns loaded once as one contiguous vector, summed per group, times the
    group's ``S``. More decode work a weight than ``word_dots``' byte permute; no per-trit reload of ``x``. Split-K
    and the next step's prefetch as ``decode_gemv_kernel``."""
    pid_n, pid_s, offs_n, n_mask, row_off, row_g, k_start, k_end = _byte_split_start(N, K, G, KB, K_PER_SPLIT,
                                                                                      BLOCK_N)
    b_next = load_bytes(t_ptr, row_off, n_mask, k_start, KB, BLOCK_K)
    s_next = _load_s(s_ptr, row_g, n_mask, k_start, k_end, G, GS, BLOCK_K)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        b, s = b_next, s_next
        b_next = load_bytes(t_ptr, row_off, n_mask, k0 + BLOCK_K, KB, BLOCK_K)
        s_next = _load_s(s_ptr, row_g, n_mask, k0 + BLOCK_K, k_end, G, GS, BLOCK_K)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_k * stride_xk, mask=offs_k < k_end, other=0.0).to(tl.float32)
        p = expand_bytes(b, BLOCK_N, BLOCK_K).to(tl.float32) * x[None, :]
        if GS >= BLOCK_K:
            acc += tl.sum(p, axis=1) * s
        else:
            NG: tl.constexpr = BLOCK_K // GS
            acc += tl.sum(tl.sum(tl.reshape(p, (BLOCK_N, NG, GS)), axis=2) * s, axis=1)
    if SPLIT == 1:
        tl.store(y_ptr + offs_n, acc.to(y_ptr.dtype.element_ty), mask=n_mask)
    else:
        split_epilogue(acc, y_ptr + offs_n, ws_ptr + offs_n, n_mask, cnt_ptr + pid_n, pid_s, SPLIT, N, 8)


@triton.jit
def _plane_dot(x_row, q4, j: tl.constexpr, k_end, stride_xk, m_mask, m, acc, DOT_PRECISION: tl.constexpr,
               INTERP: tl.constexpr):
    """``acc [BLOCK_M, BLOCK_N] += x[:, 4q + j] @ T[:, 4q + j].T`` for code plane ``j``: ``m`` its trits as
    16-bit float bit patterns ``[BLOCK_N, BLOCK_K // 4]`` (``plane_signs16``), ``x`` read at columns ``q4 + j``."""
    cols = q4 + j
    xj = tl.load(x_row + cols[None, :] * stride_xk, mask=m_mask[:, None] & (cols < k_end)[None, :], other=0.0)
    t = m.to(xj.dtype, bitcast=True)
    if INTERP:
        return tl.dot(xj.to(tl.float32), tl.trans(t.to(tl.float32)), acc, input_precision="ieee")
    return tl.dot(xj, tl.trans(t), acc, input_precision=DOT_PRECISION)


@triton.jit
def decode_mma_kernel(x_ptr, t_ptr, s_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, G, KB, stride_xm, stride_xk, SPLIT,
                      K_PER_SPLIT, GS: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INTERP: tl.constexpr, PLANES: tl.constexpr,
                      T_HI: tl.constexpr, T_LO: tl.constexpr):
    """``y[M, N] (+)= x[M, K] @ (T * S)[N, K].T`` on tensor cores for ``M <= BLOCK_M`` (one row tile): the
    ``W_eff`` tile is built in registers in x's dtype, ``round(T * S)``, and multiplied with fp32 accumulation.
    ``PLANES`` (``planes_ok``: 16-bit x, one group a K step): the trits themselves (+-1, 0 in x's type: ``T_HI`` /
    ``T_LO``, ``SIGN_TABLES``), one code plane at a time (``plane_signs16``, 1.75 instructions a weight), each
    plane multiplied with the x columns it holds, so the weights are never reordered; each K step's fp32 sum
    ``x @ T.T`` is then scaled by its group's ``S`` -- as the GEMV does, one rounding less than ``round(T * S)``.
    The bytes are loaded where they are used (a copy carried to the next iteration would be split into single
    bytes and packed again for the asm). Otherwise: ``W_eff = round(T * S)`` in x's dtype, the next K step's
    bytes and scales loaded before the current one is used. Split-K as ``decode_gemv_kernel``.
    Under the CPU interpreter (``INTERP``, whose bf16 dot is not usable) the same rounded operands are multiplied
    in fp32."""
    pid_n, pid_s, offs_n, n_mask, row_off, row_g, k_start, k_end = _byte_split_start(N, K, G, KB, K_PER_SPLIT,
                                                                                      BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    x_row = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    dtype = x_ptr.dtype.element_ty
    if PLANES:
        for k0 in range(k_start, k_end, BLOCK_K):
            b = load_bytes(t_ptr, row_off, n_mask, k0, KB, BLOCK_K, True)
            s = tl.load(s_ptr + row_g + k0 // GS, mask=n_mask, other=0.0)
            m0, m1, m2, m3 = plane_signs16(b, T_HI, T_LO, INTERP)
            q4 = k0 + 4 * tl.arange(0, BLOCK_K // 4)     # plane j holds columns 4q + j: x is read there
            part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            part = _plane_dot(x_row, q4, 0, k_end, stride_xk, m_mask, m0, part, DOT_PRECISION, INTERP)
            part = _plane_dot(x_row, q4, 1, k_end, stride_xk, m_mask, m1, part, DOT_PRECISION, INTERP)
            part = _plane_dot(x_row, q4, 2, k_end, stride_xk, m_mask, m2, part, DOT_PRECISION, INTERP)
            part = _plane_dot(x_row, q4, 3, k_end, stride_xk, m_mask, m3, part, DOT_PRECISION, INTERP)
            acc += part * s[None, :]                    # sum(t * x) over the group, times its scale
    else:
        b_next = load_bytes(t_ptr, row_off, n_mask, k_start, KB, BLOCK_K)
        s_next = _load_s(s_ptr, row_g, n_mask, k_start, k_end, G, GS, BLOCK_K)
        for k0 in range(k_start, k_end, BLOCK_K):
            b, s = b_next, s_next
            b_next = load_bytes(t_ptr, row_off, n_mask, k0 + BLOCK_K, KB, BLOCK_K)
            s_next = _load_s(s_ptr, row_g, n_mask, k0 + BLOCK_K, k_end, G, GS, BLOCK_K)
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_row + offs_k[None, :] * stride_xk, mask=m_mask[:, None] & (offs_k < k_end)[None, :],
                        other=0.0)
            t = expand_bytes(b, BLOCK_N, BLOCK_K).to(tl.float32)
            if GS >= BLOCK_K:
                w = round_to(t * s[:, None], dtype)
            else:
                NG: tl.constexpr = BLOCK_K // GS
                w = round_to(tl.reshape(tl.reshape(t, (BLOCK_N, NG, GS)) * s[:, :, None], (BLOCK_N, BLOCK_K)),
                             dtype)
            if INTERP:
                acc = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
            else:
                acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
    offs = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]           # y and each split of ws: [M, N]
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT == 1:
        tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        split_epilogue(acc, y_ptr + offs, ws_ptr + offs, mask, cnt_ptr + pid_n, pid_s, SPLIT, M * N, 4)


@triton.jit
def expand_scaled_kernel(t_ptr, s_ptr, w_ptr, N, K, G, KB, GS: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    """``W[N, K] = round(T * S)`` in ``w_ptr``'s dtype from ``T_packed`` and float32 ``S [N, G]`` (``BLOCK_K``
    a multiple of ``GS``)."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    k0 = tl.program_id(1) * BLOCK_K
    NG: tl.constexpr = BLOCK_K // GS
    offs_g = k0 // GS + tl.arange(0, NG)
    s = tl.load(s_ptr + offs_n.to(tl.int64)[:, None] * G + offs_g[None, :],
                mask=n_mask[:, None] & (offs_g < G)[None, :], other=0.0)
    t = expand_bytes(load_bytes(t_ptr, offs_n.to(tl.int64) * KB, n_mask, k0, KB, BLOCK_K), BLOCK_N, BLOCK_K)
    w = tl.reshape(tl.reshape(t.to(tl.float32), (BLOCK_N, NG, GS)) * s[:, :, None], (BLOCK_N, BLOCK_K))
    offs_k = k0 + tl.arange(0, BLOCK_K)
    ptrs = w_ptr + offs_n.to(tl.int64)[:, None] * K + offs_k[None, :]
    tl.store(ptrs, round_to(w, w_ptr.dtype.element_ty), mask=n_mask[:, None] & (offs_k < K)[None, :])


# ----------------------------------------------------------------------------- launch
#: M = 1 GEMV ``(BLOCK_N, BLOCK_K, num_warps, programs per SM)`` and the tensor-core kernel's for 2-16 rows
#: (``BLOCK_M`` 16): from the H200 sweeps of ``bench_decode.py --parts sweep`` (benchmarks/results/inference:
#: ``h200-sweep-gemv.md`` -- 16 x 2048 within 5 % of the best at all four shapes, 128 x 128 1.3-1.9x slower -- and
#: ``h200-sweep.json``).
_GEMV_TILE = (16, 2048, 4, 2)
_MMA_TILE = (32, 256, 4, 4)
#: the tensor-core kernel's plane-by-plane form (``plane_signs16``: 16-bit x, one group a K step): 256 rows x
#: one 64-column group, 4 warps -- 4.5 sm_90 instructions a weight in its K loop against 14.7 for the
#: ``_MMA_TILE`` form at group 64 (``python benchmarks/gemv_sass.py --kernel mma --tile 256,64,4 --tile 32,256,4``)
_PLANES_TILE = (256, 64, 4, 2)
_INTERP_TILE = (16, 64, 4, 1)


def decode_config(M: int, N: int, K: int, device: torch.device, config: Optional[dict] = None,
                  dtype: torch.dtype = torch.bfloat16, group_size: int = 0) -> dict:
    """``BLOCK_N/K``, ``num_warps`` and ``SPLIT`` of the kernel for an ``[M, K] x [N, K]`` call (M == 1: the GEMV,
    else the tensor-core kernel; its plane-by-plane form, ``_PLANES_TILE``, for 16-bit ``x`` and groups of 64 or
    more). ``config`` overrides any key (and may give ``PROGRAMS_PER_SM`` instead of ``SPLIT``)."""
    config = dict(config or {})
    if INTERPRETED:
        bn, bk, warps, per_sm = _INTERP_TILE
    elif M == 1:
        bn, bk, warps, per_sm = _GEMV_TILE
    elif planes_ok(dtype, group_size, _PLANES_TILE[1]):
        bn, bk, warps, per_sm = _PLANES_TILE
    else:
        bn, bk, warps, per_sm = _MMA_TILE
    if M > 1 and dtype == torch.float32 and not INTERPRETED:
        bk //= 2                                                  # tf32x3 operands: half the K tile
    if M == 1:
        bk = min(bk, max(16, triton.next_power_of_2(K)))           # a K of 384 needs no 2048-wide tile
    cfg = {"BLOCK_N": config.pop("BLOCK_N", bn), "BLOCK_K": config.pop("BLOCK_K", bk),
           "num_warps": config.pop("num_warps", warps)}
    per_sm = config.pop("PROGRAMS_PER_SM", per_sm)
    if cfg["BLOCK_K"] < 16 or cfg["BLOCK_K"] & (cfg["BLOCK_K"] - 1) or cfg["BLOCK_N"] & (cfg["BLOCK_N"] - 1):
        raise ValueError(f"bad decode config {cfg}: BLOCK_N and BLOCK_K must be powers of two, BLOCK_K >= 16")
    tiles = triton.cdiv(N, cfg["BLOCK_N"])
    want = max(1, triton.cdiv(per_sm * n_sm(device), tiles))
    cfg["SPLIT"] = int(config.pop("SPLIT", max(1, min(want, K // cfg["BLOCK_K"]))))
    if config:
        raise ValueError(f"unknown decode config keys {sorted(config)}")
    return cfg


def _check(x: torch.Tensor, T_packed: torch.Tensor, S: torch.Tensor, in_features: int, group_size: int) -> tuple:
    check_group_size_op(in_features, group_size)
    check_kernel_device(T_packed.device)
    N, G = packed_out_features(T_packed), in_features // group_size
    if T_packed.dim() == 5:      # the tc layout (format.tc_tiles)
        layout, ok = "a tc-layout ", tc_tiles_ok(N, in_features, group_size)
        want_t, want_s = tc_tiles_shapes(N, in_features, group_size)
        shape = f"{want_t} (in_features % 256 == 0, group_size 64/128/256: got {group_size})"
    else:
        layout, ok, want_t, want_s = "", True, (N, (in_features + 3) // 4), (N, G)
        shape = f"[N, {want_t[1]}]"
    if not ok or T_packed.dtype != torch.uint8 or tuple(T_packed.shape) != want_t or not T_packed.is_contiguous():
        raise ValueError(f"triton decode op: {layout}T_packed must be contiguous uint8 {shape}, got {T_packed.dtype} "
                         f"{tuple(T_packed.shape)}")
    if S.dtype != torch.float32 or tuple(S.shape) != want_s or not S.is_contiguous():
        raise ValueError(f"triton decode op: {layout}S must be contiguous float32 {want_s}, got {S.dtype} "
                         f"{tuple(S.shape)}")
    check_device(S, "S", T_packed.device)
    check_act(x, "x", in_features, "in_features", T_packed.device)
    return N, G


def planes_ok(dtype: torch.dtype, group_size: int, block_k: int) -> bool:
    """Whether ``decode_mma_kernel`` builds ``W_eff`` one code plane at a time (``plane_signs16``): 16-bit ``x``,
    one scale group per K step, and a plane of at least 16 columns (the tensor cores' K)."""
    return dtype in (torch.bfloat16, torch.float16) and group_size >= block_k >= 64


def gemv_ok(M: int, T_packed: torch.Tensor, in_features: int, group_size: int) -> bool:
    """Whether the M = 1 GEMV takes a call (else the tensor-core kernel)."""
    return (M == 1 and group_size >= 16 and in_features % 16 == 0 and T_packed.shape[0] > 0
            and T_packed.storage_offset() % 4 == 0)


def expand_scaled(T_packed: torch.Tensor, S: torch.Tensor, in_features: int, group_size: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """``W_eff [N, K]`` of ``dtype`` (``expand_weight(T_packed, S).to(dtype)`` bit for bit)."""
    N, G = T_packed.shape[0], in_features // group_size
    W = torch.empty(N, in_features, dtype=dtype, device=T_packed.device)
    if W.numel():
        bk = max(128, group_size)
        bn = max(1, 8192 // bk)
        expand_scaled_kernel[(triton.cdiv(N, bn), triton.cdiv(in_features, bk))](
            T_packed, S, W, N, in_features, G, T_packed.shape[1], GS=group_size, BLOCK_N=bn, BLOCK_K=bk,
            num_warps=4)
    return W


def decode_forward(x: torch.Tensor, T_packed: torch.Tensor, S: torch.Tensor, in_features: int, group_size: int,
                   relu_square: bool = False, *, config: Optional[dict] = None, path: str = "auto") -> torch.Tensor:
    """``y [M, N] = x [M, K] @ (T * S).T`` in x's dtype. ``path``: ``auto`` (``decode_tc`` for 1-16 rows of 16-bit
    x where ``tc_ok``; else the GEMV at one row when the layer allows it, the tensor-core kernel up to
    ``DECODE_MAX_M`` rows, expand + cuBLAS above), ``tc``, ``gemv``, ``gemv_expand``, ``mma`` or ``expand``;
    ``config``: see ``decode_config`` (``decode_tc.tc_forward`` for ``tc``). ``relu_square``: ``relu(y) ** 2``
    (``linear.decode_forward_torch``), in the store of ``decode_tc`` (no kernel of its own between a decode step's
    up and down projections), after the other paths' kernels. ``T_packed`` / ``S`` may be in the row layout or the
    ``tc`` layout (5-D, ``format.tc_tiles``: ``decode_tc`` reads it directly; the other paths get the rows back by
    ``format.tc_rows`` first)."""
    N, _ = _check(x, T_packed, S, in_features, group_size)
    M = x.shape[0]
    if path not in ("auto", "gemv", "gemv_expand", "mma", "expand", "tc"):
        raise ValueError(f"path must be 'auto', 'gemv', 'gemv_expand', 'mma', 'expand' or 'tc', got {path!r}")
    use_tc = tc_ok(x, T_packed, in_features, group_size)
    if path == "tc" and not use_tc:
        raise ValueError("triton decode op: path='tc' needs 1-16 rows of 16-bit x (unit column stride, 16-byte "
                         f"aligned rows), group_size 64/128/256 and in_features % 256 == 0; got x {x.dtype} "
                         f"{tuple(x.shape)}, group_size {group_size}")
    if path == "gemv" and not gemv_ok(M, T_packed, in_features, group_size):
        raise ValueError(f"triton decode op: path='gemv' needs M == 1 (got {M}), group_size >= 16, "
                         "in_features % 16 == 0 and an aligned T_packed")
    if path == "gemv_expand" and not (M == 1 and N > 0):
        raise ValueError(f"triton decode op: path='gemv_expand' needs M == 1 (got {M})")
    if path == "mma" and not 0 < M <= DECODE_MAX_M:
        raise ValueError(f"triton decode op: path='mma' needs 1 <= M <= {DECODE_MAX_M}, got {M}")
    if T_packed.dim() == 5 and not (use_tc and path in ("auto", "tc")):
        # the tc layout off decode_tc (fp32 x, more than 16 rows, a path forced): the other kernels read rows
        T_packed, S = tc_rows(T_packed, S, in_features, group_size)
    if path == "auto":
        path = ("tc" if use_tc        # 1-16 rows of 16-bit x
                else "gemv" if gemv_ok(M, T_packed, in_features, group_size)
                else "mma" if 0 < M <= DECODE_MAX_M and N > 0 else "expand")
    if path == "tc":         # squares in its own store
        return tc_forward(x, T_packed, S, in_features, group_size, config, relu_square=relu_square)
    if path == "expand":
        y = x @ expand_scaled(T_packed, S, in_features, group_size, x.dtype).t()
    else:
        y = _kernel_forward(x, T_packed, S, in_features, group_size, config, path)
    return y.relu_().square_() if relu_square else y


def _kernel_forward(x: torch.Tensor, T_packed: torch.Tensor, S: torch.Tensor, in_features: int, group_size: int,
                    config: Optional[dict], path: str) -> torch.Tensor:
    """``decode_forward`` on the ``gemv``, ``gemv_expand`` or ``mma`` kernel (inputs checked there)."""
    M, N, G = x.shape[0], T_packed.shape[0], in_features // group_size
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    cfg = decode_config(M, N, in_features, x.device, config, x.dtype, group_size)
    red_per, split = split_len(in_features, cfg.pop("SPLIT"), cfg["BLOCK_K"])
    tiles = triton.cdiv(N, cfg["BLOCK_N"])
    ws, cnt = split_buffers(y, split, tiles)
    if path == "gemv":
        decode_gemv_kernel[(tiles, split)](x, T_packed.view(torch.int32), S, y, ws, cnt, N, in_features, G,
                                           in_features // 16, x.stride(1), split, red_per // 16, 0x3F000000,
                                           GS=group_size, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
                                           INTERP=INTERPRETED, num_warps=cfg["num_warps"])
    elif path == "gemv_expand":
        decode_gemv_expand_kernel[(tiles, split)](x, T_packed, S, y, ws, cnt, N, in_features, G, T_packed.shape[1],
                                                  x.stride(1), split, red_per, GS=group_size, BLOCK_N=cfg["BLOCK_N"],
                                                  BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"])
    else:
        tables = SIGN_TABLES["fp16" if x.dtype == torch.float16 else "bf16"]
        decode_mma_kernel[(tiles, split)](x, T_packed, S, y, ws, cnt, M, N, in_features, G, T_packed.shape[1],
                                          x.stride(0), x.stride(1), split, red_per, GS=group_size,
                                          DOT_PRECISION=dot_precision(x.dtype), BLOCK_M=16, BLOCK_N=cfg["BLOCK_N"],
                                          BLOCK_K=cfg["BLOCK_K"], INTERP=INTERPRETED,
                                          PLANES=planes_ok(x.dtype, group_size, cfg["BLOCK_K"]),
                                          T_HI=tables[0], T_LO=tables[1],
                                          num_warps=cfg["num_warps"], num_stages=3)
    return y
