"""Triton forward and grad-x kernels of the ternary linear layer, the ``W_eff`` expand kernel, and their launchers.

* ``ternary_forward(x, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength)``
  ``x [M, K] -> y [M, N] = x @ W_eff.T`` (x's dtype);
* ``ternary_grad_x(grad_y, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength)``
  ``grad_y [M, N] -> grad_x [M, K] = grad_y @ W_eff`` (grad_y's dtype);
* ``ternary_scale(E, corr_accum, step_counter, pending, group_size, strength)`` the in-kernel ``S``
  materialised as ``[N, G]`` float32 (tests / export; the linear kernels never write it).

The plain-torch reference of the same ops is ``linear.py``; decode helpers and checks are in
``triton_common.py``. ``x`` and ``grad_y`` may have any strides; ``T_packed``, ``E``, ``corr_accum``
must be contiguous.

Dispatch (``path="auto"``): above ``FUSED_MAX_M`` rows the ``W_eff`` tile is expanded once into a
transient buffer (``expand_kernel``) and cuBLAS multiplies -- 0.99-1.07x of cuBLAS bf16 on the H200
(``benchmarks/results/speed``), where the fused kernels reached 0.40-0.45x. M <= 16 (decode / GEMV) keeps
the fused kernels: fixed tiles (one 16-row tile,
narrow output tiles) and a split of the reduction dimension so that several programs per
SM stream ``T_packed``; the fp32 partials are summed in a fixed order by the last program of each tile
(``triton_common.split_epilogue``; ``_decode_config``). At M == 1 with ``in_features % 16 == 0`` the forward runs
``ternary_gemv_m1_kernel`` instead: a CUDA-core GEMV over ``T_packed`` read as int32 words, split over N and K
so that ~8 programs per SM stream the weights (``_gemv_config``); M = 2..16 stays on the fused kernel (a GEMV
for those rows lost to it on the H200 and was removed, docs/kernels.md).
Under ``TRITON_INTERPRET=1`` (CPU) a fixed small config is used,
overridable per call with ``config=`` for tests. See ``docs/kernels.md``.

fp32 inputs use ``input_precision="tf32x3"`` (about fp32 accuracy on tensor cores;
``ARB_TRITON_FP32_PRECISION=ieee|tf32x3|tf32`` overrides); bf16/fp16 inputs use
the tensor cores natively with fp32 accumulation, ``W_eff`` being rounded to the
input dtype in registers.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from .blocks import sum_last_first
from .fp8 import check_fp8_device, scaled_mm_nt
from .fp8_linear import fp8_matmul_applies
from .fp8_triton import expand_fp8_group_triton, quantize_rows_triton
from .triton_common import (INTERPRETED, INTERP_DEFAULT, ballot_coef, check_act, check_counter_tensor, check_device,
                            check_group_size_op, check_kernel_device, check_scalars, check_state, dot_precision,
                            exact_weff_tile, float64_bits, group_scale, group_sums, grouped_pid,
                            launch_cfg, load_bytes, load_group_state, n_sm, round_to, split_buffers,
                            split_epilogue, split_len, weff_cast, word_dots,
                            gemv_split_start)

__all__ = ["ternary_forward", "ternary_grad_x", "ternary_scale", "expand_weight_triton", "ternary_fwd_kernel",
           "ternary_gradx_kernel", "ternary_scale_kernel", "expand_kernel",
           "ternary_gemv_m1_kernel", "FUSED_MAX_M", "ternary_group_forward", "ternary_group_grad_x"]

#: ``linear_forward`` / ``linear_grad_x`` run the fused kernels up to this many rows (decode) and expand
#: ``W_eff`` once into a transient buffer for cuBLAS above it (training shapes; docs/kernels.md).
FUSED_MAX_M = 16


@triton.jit
def ternary_fwd_kernel(x_ptr, t_ptr, e_ptr, corr_ptr, step_ptr, pending_ptr, y_ptr, ws_ptr, cnt_ptr,
                       M, N, K, G, KB,
                       stride_xm, stride_xk, stride_ym, stride_yn, SPLIT, K_PER_SPLIT,
                       strength, M_KEY,
                       GS: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """``y[M, N] = x[M, K] @ (T * S)[N, K].T``, fp32 accumulation, ``y`` stored in its own dtype.

    ``M_KEY`` is unused in the body (the bucketed M; kept so launch keys stay stable).
    The packed bytes and group state of K step ``i + 1`` are loaded (into registers)
    while step ``i`` is decoded and multiplied, so their latency is hidden; ``x`` is
    pipelined through shared memory by Triton.

    Split-K (decode path): program axis 1 selects the K range ``[s*K_PER_SPLIT,
    (s+1)*K_PER_SPLIT)``; with ``SPLIT > 1`` the fp32 partials meet in ``ws_ptr`` (``[SPLIT, M, N]``)
    and the last program of the tile sums them in a fixed order (``split_epilogue``).
    """
    pid_m, pid_n = grouped_pid(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    coef = ballot_coef(step_ptr, pending_ptr, strength, GS)
    x_row = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    row_off = offs_n.to(tl.int64) * KB
    row_g = offs_n.to(tl.int64) * G

    pid_s = tl.program_id(1)
    k_start = pid_s * K_PER_SPLIT
    k_end = tl.minimum(K, k_start + K_PER_SPLIT)
    b_next = load_bytes(t_ptr, row_off, n_mask, k_start, KB, BLOCK_K)
    e_next, c_next = load_group_state(e_ptr, corr_ptr, row_g, n_mask, k_start, G, GS, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        b, e, c = b_next, e_next, c_next
        b_next = load_bytes(t_ptr, row_off, n_mask, k0 + BLOCK_K, KB, BLOCK_K)
        e_next, c_next = load_group_state(e_ptr, corr_ptr, row_g, n_mask, k0 + BLOCK_K, G, GS, BLOCK_K)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_row + offs_k[None, :] * stride_xk, mask=m_mask[:, None] & (offs_k < K)[None, :], other=0.0)
        w = weff_cast(b, e, c, coef, x_ptr.dtype.element_ty, GS, BLOCK_N, BLOCK_K)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)

    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :] * stride_yn
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        split_epilogue(acc, y_ptrs, ws_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :], mask,
                       cnt_ptr + tl.program_id(0), pid_s, SPLIT, M * N, 1)


@triton.jit
def ternary_gemv_m1_kernel(x_ptr, w_ptr, e_ptr, corr_ptr, step_ptr, pending_ptr, y_ptr, ws_ptr, cnt_ptr,
                           M, N, K, G, KW,
                           stride_xm, stride_xk, stride_ym, stride_yn, SPLIT, Q_PER_SPLIT, strength, F_HI,
                           GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INTERP: tl.constexpr):
    """Decode GEMV for one row of ``x`` (``M == 1``): ``y[1, N] = x[1, K] @ (T * S)[N, K].T`` on CUDA cores,
    fp32, on 2-D ``[BLOCK_N, BLOCK_K // 16]`` tiles (``x`` a broadcast row).

    ``w_ptr``: ``T_packed`` read as int32 words ``[N, K // 16]`` (16 trits a word; byte ``b`` of word ``q``
    is packed byte ``4q + b``). For ``GS >= 16`` the trit enters the FMA as ``f = (t + 5) / 8`` (one
    ``prmt`` a weight, no float op) and each group's sum is ``8 * sum(f * x) - 5 * sum(x)``, times the group
    scale; groups of 4 / 8 decode ``t`` exactly as ``bits(0x4B000000 | (t + 1)) - (2**23 + 1)`` and scale
    per byte. A program owns ``BLOCK_N`` rows and one K range of ``16 * Q_PER_SPLIT`` columns (split-K:
    program axis 1, fp32 partials in ``ws_ptr [SPLIT, N]`` summed in a fixed order by the tile's last program,
    ``split_epilogue``); the next K step's words are loaded before the current one is decoded."""
    pid_n, pid_s, offs_n, n_mask, row_w, row_g, q_start, q_end, offs_q, w_next = gemv_split_start(
        w_ptr, N, G, KW, Q_PER_SPLIT, BLOCK_N, BLOCK_K)
    BW: tl.constexpr = BLOCK_K // 16
    coef = ballot_coef(step_ptr, pending_ptr, strength, GS)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for q0 in range(q_start, q_end, BW):
        w = w_next
        q1 = q0 + BW + offs_q
        w_next = tl.load(w_ptr + row_w[:, None] + q1[None, :], mask=n_mask[:, None] & (q1 < q_end)[None, :], other=0)
        k0 = q0 * 16
        cols = k0 + 16 * offs_q
        x_base = x_ptr + cols * stride_xk          # column 4b + j of each word at x_base + (4b + j) * stride_xk
        x_mask = cols < K                          # K % 16 == 0: a word's columns are all in range or none
        if GS < 16:   # groups of 4 or 8 columns: each byte b of a word lies in one group
            ps = tl.zeros((BLOCK_N, BW), dtype=tl.float32)
            for b in tl.static_range(4):
                pb = tl.zeros((BLOCK_N, BW), dtype=tl.float32)
                for j in tl.static_range(4):
                    u = ((((w >> (2 * j)) & 0x01010101) + 0x01010101 - ((w >> (2 * j + 1)) & 0x01010101))
                         >> (8 * b)) & 0xFF
                    t = (u | 0x4B000000).to(tl.float32, bitcast=True) - 8388609.0
                    xv = tl.load(x_base + (4 * b + j) * stride_xk, mask=x_mask, other=0.0).to(tl.float32)
                    pb += t * xv[None, :]
                g = (cols + 4 * b) // GS
                s = group_scale(e_ptr, corr_ptr, row_g[:, None] + g[None, :], n_mask[:, None] & (g < G)[None, :], coef)
                ps += pb * s
            acc += tl.sum(ps, axis=1)
        else:
            # a word in one group: sum(t * x) = 8 * sum(f * x) - 5 * sum(x) per group (``word_dots``)
            ps, xs = word_dots(w, x_base, x_mask, stride_xk, F_HI, BLOCK_N, BW, INTERP)
            if GS >= BLOCK_K:
                g = k0 // GS
                s = group_scale(e_ptr, corr_ptr, row_g + g, n_mask & (g < G), coef)
            else:
                g = k0 // GS + tl.arange(0, BLOCK_K // GS)
                s = group_scale(e_ptr, corr_ptr, row_g[:, None] + g[None, :], n_mask[:, None] & (g < G)[None, :],
                                coef)
            acc += group_sums(ps, xs, s, GS, BLOCK_N, BLOCK_K)

    if SPLIT == 1:
        tl.store(y_ptr + offs_n * stride_yn, acc.to(y_ptr.dtype.element_ty), mask=n_mask)
    else:
        split_epilogue(acc, y_ptr + offs_n * stride_yn, ws_ptr + offs_n, n_mask, cnt_ptr + pid_n, pid_s, SPLIT, N,
                       8)


@triton.jit
def ternary_gradx_kernel(gy_ptr, t_ptr, e_ptr, corr_ptr, step_ptr, pending_ptr, gx_ptr, ws_ptr, cnt_ptr,
                         M, N, K, G, KB,
                         stride_gm, stride_gn, stride_xm, stride_xk, SPLIT, N_PER_SPLIT,
                         strength, M_KEY,
                         GS: tl.constexpr, DOT_PRECISION: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """``grad_x[M, K] = grad_y[M, N] @ (T * S)[N, K]``, fp32 accumulation; reduction over N
    (weight rows), with the next N step's bytes and group state prefetched into registers.
    Split-N (decode path) works as the forward's split-K: program axis 1 picks the N range
    and the fp32 partials meet in ``ws_ptr [SPLIT, M, K]`` (``split_epilogue``)."""
    pid_m, pid_k = grouped_pid(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_K), GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k0 = pid_k * BLOCK_K
    m_mask = offs_m < M
    k_mask = offs_k < K
    coef = ballot_coef(step_ptr, pending_ptr, strength, GS)
    gy_row = gy_ptr + offs_m.to(tl.int64)[:, None] * stride_gm

    pid_s = tl.program_id(1)
    n_start = pid_s * N_PER_SPLIT
    n_end = tl.minimum(N, n_start + N_PER_SPLIT)
    offs_n = n_start + tl.arange(0, BLOCK_N)
    n_mask = offs_n < n_end
    b_next = load_bytes(t_ptr, offs_n.to(tl.int64) * KB, n_mask, k0, KB, BLOCK_K)
    e_next, c_next = load_group_state(e_ptr, corr_ptr, offs_n.to(tl.int64) * G, n_mask, k0, G, GS, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(n_start, n_end, BLOCK_N):
        b, e, c = b_next, e_next, c_next
        offs_n1 = n0 + BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask1 = offs_n1 < n_end
        b_next = load_bytes(t_ptr, offs_n1.to(tl.int64) * KB, n_mask1, k0, KB, BLOCK_K)
        e_next, c_next = load_group_state(e_ptr, corr_ptr, offs_n1.to(tl.int64) * G, n_mask1, k0, G, GS, BLOCK_K)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        gy = tl.load(gy_row + offs_n[None, :] * stride_gn, mask=m_mask[:, None] & (offs_n < n_end)[None, :], other=0.0)
        w = weff_cast(b, e, c, coef, gy_ptr.dtype.element_ty, GS, BLOCK_N, BLOCK_K)
        acc = tl.dot(gy, w, acc, input_precision=DOT_PRECISION)

    gx_ptrs = gx_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :] * stride_xk
    mask = m_mask[:, None] & k_mask[None, :]
    if SPLIT == 1:
        tl.store(gx_ptrs, acc.to(gx_ptr.dtype.element_ty), mask=mask)
    else:
        split_epilogue(acc, gx_ptrs, ws_ptr + offs_m.to(tl.int64)[:, None] * K + offs_k[None, :], mask,
                       cnt_ptr + tl.program_id(0), pid_s, SPLIT, M * K, 1)




@triton.jit
def ternary_scale_kernel(e_ptr, corr_ptr, step_ptr, pending_ptr, s_ptr, NUMEL, strength,
                         GS: tl.constexpr, BLOCK: tl.constexpr):
    """Writes the in-kernel scale ``S`` for every group (flat ``[N * G]``): for tests and export only."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < NUMEL
    coef = ballot_coef(step_ptr, pending_ptr, strength, GS)
    tl.store(s_ptr + offs, group_scale(e_ptr, corr_ptr, offs, mask, coef), mask=mask)


@triton.jit
def expand_kernel(t_ptr, e_ptr, corr_ptr, step_ptr, pending_ptr, w_ptr, N, K, G, KB, strength_bits,
                  GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INTERP: tl.constexpr):
    """``W_eff[n, k] = T[n, k] * S[n, k // GS]`` into ``w_ptr`` (``[N, K]`` contiguous, its own dtype).

    ``S`` is computed per group exactly as ``scale.bigint_scale`` (float64, ``exact_scale``) and ``T * S``
    rounded once to the output dtype, so the result equals ``TernaryScaleTensor.effective_weight(dtype)``
    bit for bit. ``BLOCK_K`` is a multiple of ``GS`` (whole groups per program)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    k0 = pid_k * BLOCK_K
    w = exact_weff_tile(t_ptr, e_ptr, corr_ptr, step_ptr, pending_ptr, offs_n, n_mask, k0, G, KB, strength_bits, GS,
                        BLOCK_N, BLOCK_K, INTERP)
    offs_k = k0 + tl.arange(0, BLOCK_K)
    ptrs = w_ptr + offs_n.to(tl.int64)[:, None] * K + offs_k[None, :]
    tl.store(ptrs, round_to(w, w_ptr.dtype.element_ty), mask=n_mask[:, None] & (offs_k < K)[None, :])


def _m_key(M: int) -> int:
    """Bucket of M (a kernel argument the body ignores): 16 for every decode M <= 16, else the next power of 2."""
    return 16 if M <= 16 else 1 << (M - 1).bit_length()


# The fused kernels above 16 rows (reached with ``path="fused"`` or a ``config``; ``path="auto"`` expands
# ``W_eff`` for cuBLAS there): one fixed tile per kind and dtype, from the H100 sweep of docs/kernels.md.
# fp32 inputs (tf32x3) need smaller tiles.
_DEFAULT_CONFIGS = {
    ("fwd", False): dict(BLOCK_M=256, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
    ("fwd", True): dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3),
    ("gx", False): dict(BLOCK_M=256, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=3),
    ("gx", True): dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3),
}


def _default_config(M: int, dtype: torch.dtype, kind: str) -> dict:
    """The fused kernels' fixed launch config above 16 rows."""
    return dict(_DEFAULT_CONFIGS[(kind, dtype == torch.float32)])


def _decode_config(red: int, out_tiles_of, kind: str, dtype: torch.dtype, device: torch.device) -> dict:
    """Decode / GEMV path (M <= 16): fixed tiles plus a split of the reduction dim.

    One 16-row tile (``BLOCK_M = 16``, tensor cores) and narrow output tiles;
    ``out_tiles_of(cfg)`` counts the output tiles. The reduction (K for the forward, N
    for grad-x) is split so that about 2 (forward) / 4 (grad-x) programs per SM stream
    ``T_packed`` concurrently, each split keeping >= 2 steps; the fp32 partials are
    summed in a fixed order by the kernel's ``split_epilogue`` (deterministic). Tiles and
    targets come from a sweep on H100 (docs/kernels.md).
    """
    if kind == "fwd":
        cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 256, "GROUP_M": 1, "num_warps": 4, "num_stages": 3}
        step, per_sm = "BLOCK_K", 2
    else:
        cfg = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 1, "num_warps": 4, "num_stages": 3}
        step, per_sm = "BLOCK_N", 4
    if dtype == torch.float32:
        cfg[step] //= 2
    if INTERPRETED:
        cfg.update(INTERP_DEFAULT)
    tiles = out_tiles_of(cfg)
    want = max(1, (per_sm * n_sm(device) + tiles - 1) // tiles)
    cfg["SPLIT"] = max(1, min(want, red // (2 * cfg[step])))
    return cfg





# ----------------------------------------------------------------------------- launchers
def _pick_config(config: Optional[dict], M: int, red: int, out_tiles_of, kind: str, dtype: torch.dtype,
                 device: torch.device) -> Optional[dict]:
    """Launch config: explicit ``config`` > decode path (M <= 16) > interpreter default > fixed default."""
    if config is not None:
        return launch_cfg(config)
    if M <= 16:
        return _decode_config(red, out_tiles_of, kind, dtype, device)
    if INTERPRETED:
        return launch_cfg(None)
    return launch_cfg(_default_config(M, dtype, kind))


def _launch_linear(act: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                   step_counter: torch.Tensor, pending: torch.Tensor, group_size: int, strength: float, N: int, G: int,
                   K: int, kind: str, config: Optional[dict]) -> torch.Tensor:
    """The shared launch of the forward (``kind="fwd"``: ``act = x [M, K]``, out ``[M, N]``, reduction
    over K) and grad-x (``kind="gx"``: ``act = grad_y [M, N]``, out ``[M, K]``, reduction over N) kernels,
    with a fixed config and an optional split of the reduction into fp32 partials summed by the kernel's
    ``split_epilogue``."""
    fwd = kind == "fwd"
    M = act.shape[0]
    out_cols, red = (N, K) if fwd else (K, N)
    out_block, red_block = ("BLOCK_N", "BLOCK_K") if fwd else ("BLOCK_K", "BLOCK_N")
    res = torch.empty(M, out_cols, dtype=act.dtype, device=act.device)
    if M == 0:
        return res
    consts = {"GS": group_size, "DOT_PRECISION": dot_precision(act.dtype)}
    head = (act, T_packed, E, corr_accum, step_counter, pending)
    dims = (M, N, K, G, K // 4, act.stride(0), act.stride(1))
    tail = (float(strength), _m_key(M))

    def out_tiles(c):
        return triton.cdiv(M, c["BLOCK_M"]) * triton.cdiv(out_cols, c[out_block])
    cfg = _pick_config(config, M, red, out_tiles, kind, act.dtype, act.device)
    red_per, split = split_len(red, cfg.pop("SPLIT", 1), cfg[red_block])
    tiles = out_tiles(cfg)
    kernel = ternary_fwd_kernel if fwd else ternary_gradx_kernel
    kernel[(tiles, split)](*head, res, *split_buffers(res, split, tiles), *dims, res.stride(0), res.stride(1), split,
                           red_per, *tail, **consts, **cfg)
    return res


def _expand_config(group_size: int) -> tuple[int, int, int]:
    """``(BLOCK_N, BLOCK_K, num_warps)`` of ``expand_kernel``: whole groups per program, ~8K weights each."""
    block_k = max(128, group_size)
    return max(1, 8192 // block_k), block_k, 4


def expand_weight_triton(T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                         step_counter: torch.Tensor, pending: torch.Tensor, in_features: int, group_size: int,
                         strength: float, dtype: torch.dtype, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``W_eff = T * S`` as a new ``[N, K]`` tensor of ``dtype`` (equal to ``effective_weight(dtype)`` bit for bit);
    ``out``: written into these contiguous ``[N, K]`` rows instead (a slice of a group's buffer)."""
    N, G = check_state(T_packed, in_features, group_size, E, corr_accum, step_counter)
    check_scalars(pending, strength)
    W = torch.empty(N, in_features, dtype=dtype, device=T_packed.device) if out is None else out
    if W.numel():
        bn, bk, warps = _expand_config(group_size)
        grid = (triton.cdiv(N, bn), triton.cdiv(in_features, bk))
        expand_kernel[grid](T_packed, E, corr_accum, step_counter, pending, W, N, in_features, G, in_features // 4,
                            float64_bits(strength), GS=group_size, BLOCK_N=bn, BLOCK_K=bk, INTERP=INTERPRETED,
                            num_warps=warps)
    return W


def _fused(M: int, config: Optional[dict], path: str) -> bool:
    if path not in ("auto", "fused", "expand", "gemv"):
        raise ValueError(f"path must be 'auto', 'fused', 'expand' or 'gemv', got {path!r}")
    return path == "fused" or (path == "auto" and (config is not None or M <= FUSED_MAX_M))


#: M = 1 GEMV tile ``(BLOCK_N, BLOCK_K, num_warps)``: 4 rows x 4 words a thread (each x value serves 4 rows;
#: ~5 SASS instructions a weight for sm_90, 96 registers, 8 KB of words a program per step).
_GEMV_TILE = (128, 256, 4)
#: programs per SM the split-K aims for (many independent word streams in flight per SM)
_GEMV_PROGRAMS_PER_SM = 8


def _gemv_ok(x: torch.Tensor, T_packed: torch.Tensor, in_features: int) -> bool:
    """The GEMV reads ``T_packed`` as int32 words: needs one row of ``x``, ``in_features % 16 == 0`` and a 4-byte
    aligned buffer."""
    return (x.shape[0] == 1 and in_features % 16 == 0 and T_packed.storage_offset() % 4 == 0
            and T_packed.shape[0] > 0)


def _gemv_config(N: int, K: int, device: torch.device, config: Optional[dict] = None) -> dict:
    """``BLOCK_N/K``, ``num_warps`` and ``SPLIT`` of the M = 1 decode GEMV (``config`` overrides any of them)."""
    bn, bk, warps = _GEMV_TILE
    if INTERPRETED:
        bn, bk = 16, 64
    cfg = {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps}
    cfg.update({k: v for k, v in (config or {}).items() if k not in ("SPLIT", "BLOCK_M")})
    if cfg["BLOCK_K"] < 16 or cfg["BLOCK_K"] & (cfg["BLOCK_K"] - 1):
        raise ValueError(f"bad GEMV config {cfg}: BLOCK_K must be a power of two >= 16")
    tiles = triton.cdiv(N, cfg["BLOCK_N"])
    want = max(1, triton.cdiv(_GEMV_PROGRAMS_PER_SM * n_sm(device), tiles))
    split = max(1, min(want, K // cfg["BLOCK_K"]))
    cfg["SPLIT"] = int((config or {}).get("SPLIT", split))
    return cfg


def _launch_gemv(x: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                 step_counter: torch.Tensor, pending: torch.Tensor, group_size: int, strength: float, N: int, G: int,
                 K: int, config: Optional[dict] = None) -> torch.Tensor:
    """``y [1, N]`` by ``ternary_gemv_m1_kernel`` (split-K partials summed in a fixed order)."""
    M = x.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    cfg = _gemv_config(N, K, x.device, config)
    k_per, split = split_len(K, cfg.pop("SPLIT"), cfg["BLOCK_K"])
    tiles = triton.cdiv(N, cfg["BLOCK_N"])
    words = T_packed.view(torch.int32)                      # [N, K // 16]
    ternary_gemv_m1_kernel[(tiles, split)](
        x, words, E, corr_accum, step_counter, pending, y, *split_buffers(y, split, tiles), M, N, K, G, K // 16,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1), split, k_per // 16, float(strength), 0x3F000000,
        GS=group_size, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], INTERP=INTERPRETED, num_warps=cfg["num_warps"])
    return y


def _expanded_matmul(act: torch.Tensor, states: Sequence[tuple], in_features: int, group_size: int,
                     strengths: Sequence[float], grad_x: bool, fp8: bool) -> torch.Tensor:
    """The expand path of the forward (``act = x [M, K]``: ``act @ W.T``) or grad-x (``act = grad_y [M, N]``:
    ``act @ W``) of one layer or of several stacked along their outputs (``states``: each ``(T_packed, E,
    corr_accum, step_counter, pending)``; ``N`` the sum of theirs): ``W_eff`` expanded into one transient buffer of
    ``act``'s dtype and one cuBLAS GEMM, or with ``fp8`` (``matmul_fp8``) both operands quantised
    (``fp8_triton.py``) and one fp8 GEMM (``fp8_linear.py``). In ``act``'s dtype."""
    if fp8:
        check_fp8_device(act.device, "matmul_fp8")
        aq, sa = quantize_rows_triton(act if act.stride(-1) == 1 else act.contiguous())
        wq, sw = expand_fp8_group_triton(states, in_features, group_size, strengths, transpose=grad_x)
        return scaled_mm_nt(aq, sa, wq, sw).to(act.dtype)
    n_total = sum(st[0].shape[0] for st in states)
    W = torch.empty(n_total, in_features, dtype=act.dtype, device=act.device)
    n0 = 0
    for st, strength in zip(states, strengths):
        n1 = n0 + st[0].shape[0]
        expand_weight_triton(*st, in_features, group_size, strength, act.dtype, out=W[n0:n1])
        n0 = n1
    return act @ W if grad_x else act @ W.t()


def ternary_forward(x: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                    step_counter: torch.Tensor, pending: torch.Tensor, in_features: int, group_size: int,
                    strength: float, *, config: Optional[dict] = None, path: str = "auto",
                    matmul_fp8: bool = False) -> torch.Tensor:
    """``y [M, N] = x [M, K] @ W_eff.T`` (y in x's dtype).

    ``path="auto"``: up to ``FUSED_MAX_M`` rows the fused kernel decodes ``T_packed`` and the scale in
    registers (memory-bound decode); above it ``W_eff`` is expanded once into a transient buffer of x's dtype
    (``expand_weight_triton``) and cuBLAS multiplies. ``config`` (``BLOCK_M/N/K``, ``GROUP_M``, ``num_warps``,
    ``num_stages``, ``SPLIT``) forces the fused kernel with that launch config. At M == 1 (and
    ``in_features % 16 == 0``) ``auto`` runs the decode GEMV ``ternary_gemv_m1_kernel`` instead;
    ``path="gemv"`` forces it (M == 1 only; ``config`` then overrides its ``BLOCK_N``/``BLOCK_K``/``num_warps``/
    ``SPLIT``). ``matmul_fp8``: above ``FUSED_MAX_M`` rows (and 16-divisible sides), both operands in fp8 and one
    fp8 GEMM (``fp8_linear.py``; not bit-equal to the bf16 product).
    """
    N, G = check_state(T_packed, in_features, group_size, E, corr_accum, step_counter)
    check_scalars(pending, strength)
    check_act(x, "x", in_features, "in_features", T_packed.device)
    M = x.shape[0]
    if path == "gemv" and M != 1:
        raise ValueError(f"triton ternary op: path='gemv' is the M == 1 decode GEMV, got M={M} rows")
    if path == "gemv" or (path == "auto" and config is None and M == 1):
        if _gemv_ok(x, T_packed, in_features):
            return _launch_gemv(x, T_packed, E, corr_accum, step_counter, pending, group_size, strength, N, G,
                                in_features, config)
        if path == "gemv":
            raise ValueError("triton ternary op: path='gemv' needs in_features % 16 == 0, out_features > 0 and "
                             "an aligned T_packed")
    if not _fused(M, config, path):
        return _expanded_matmul(x, [(T_packed, E, corr_accum, step_counter, pending)], in_features, group_size,
                                [strength], False, fp8_matmul_applies(matmul_fp8, M, N, in_features))
    return _launch_linear(x, T_packed, E, corr_accum, step_counter, pending, group_size, strength, N, G, in_features,
                          "fwd", config)


def ternary_grad_x(grad_y: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                   step_counter: torch.Tensor, pending: torch.Tensor, in_features: int, group_size: int,
                   strength: float, *, config: Optional[dict] = None, path: str = "auto",
                   matmul_fp8: bool = False) -> torch.Tensor:
    """``grad_x [M, K] = grad_y [M, N] @ W_eff`` (grad_y's dtype); paths and ``matmul_fp8`` as ``ternary_forward``."""
    N, G = check_state(T_packed, in_features, group_size, E, corr_accum, step_counter)
    check_scalars(pending, strength)
    check_act(grad_y, "grad_y", N, "out_features", T_packed.device)
    if path == "gemv":   # the GEMV is forward-only
        path = "auto"
    if not _fused(grad_y.shape[0], config, path):
        return _expanded_matmul(grad_y, [(T_packed, E, corr_accum, step_counter, pending)], in_features, group_size,
                                [strength], True, fp8_matmul_applies(matmul_fp8, grad_y.shape[0], N, in_features))
    return _launch_linear(grad_y, T_packed, E, corr_accum, step_counter, pending, group_size, strength, N, G,
                          in_features, "gx", config)


def _group_states(T_packed: Sequence[torch.Tensor], E: Sequence[torch.Tensor], corr_accum: Sequence[torch.Tensor],
                  step_counter: Sequence[torch.Tensor], pending: Sequence[torch.Tensor],
                  strength: Sequence[float], in_features: int, group_size: int) -> list[tuple]:
    """The layers' ``(T_packed, E, corr_accum, step_counter, pending)``, each state checked."""
    n = len(T_packed)
    if n == 0 or not all(len(v) == n for v in (E, corr_accum, step_counter, pending, strength)):
        raise ValueError("triton ternary group op: give every layer's T_packed, E, corr_accum, step_counter, pending "
                         "and strength (lists of one length, at least one layer)")
    states = list(zip(T_packed, E, corr_accum, step_counter, pending))
    for st in states:
        check_state(st[0], in_features, group_size, *st[1:4])
    return states


def ternary_group_forward(x: torch.Tensor, T_packed: Sequence[torch.Tensor], E: Sequence[torch.Tensor],
                          corr_accum: Sequence[torch.Tensor], step_counter: Sequence[torch.Tensor],
                          pending: Sequence[torch.Tensor], in_features: int, group_size: int,
                          strength: Sequence[float], matmul_fp8: bool = False) -> torch.Tensor:
    """``y [M, sum N] = cat_i(x [M, K] @ W_i.T)`` of layers reading one input (each argument a list, one entry a
    layer): above ``FUSED_MAX_M`` rows their weights are expanded into one buffer and multiplied by one GEMM
    (``matmul_fp8``: in fp8 where the stacked shape allows, ``fp8_linear.py``, with one exponent for all); up to
    it each layer runs ``ternary_forward`` (fp8 never applies there)."""
    states = _group_states(T_packed, E, corr_accum, step_counter, pending, strength, in_features, group_size)
    check_act(x, "x", in_features, "in_features", states[0][0].device)
    M = x.shape[0]
    if M <= FUSED_MAX_M:
        return torch.cat([ternary_forward(x, *st, in_features, group_size, s) for st, s in zip(states, strength)],
                         dim=1)
    n_total = sum(st[0].shape[0] for st in states)
    return _expanded_matmul(x, states, in_features, group_size, strength, False,
                            fp8_matmul_applies(matmul_fp8, M, n_total, in_features))


def ternary_group_grad_x(grad_y: torch.Tensor, T_packed: Sequence[torch.Tensor], E: Sequence[torch.Tensor],
                         corr_accum: Sequence[torch.Tensor], step_counter: Sequence[torch.Tensor],
                         pending: Sequence[torch.Tensor], in_features: int, group_size: int,
                         strength: Sequence[float], matmul_fp8: bool = False) -> torch.Tensor:
    """``grad_x [M, K] = sum_i grad_y[:, N_i] @ W_i`` for ``grad_y [M, sum N]`` (``ternary_group_forward``'s
    layers): one GEMM above ``FUSED_MAX_M`` rows, else each layer's ``ternary_grad_x`` summed from the last layer to
    the first (``linear.linear_group_grad_x_torch``)."""
    states = _group_states(T_packed, E, corr_accum, step_counter, pending, strength, in_features, group_size)
    n_total = sum(st[0].shape[0] for st in states)
    check_act(grad_y, "grad_y", n_total, "the layers' summed out_features", states[0][0].device)
    M = grad_y.shape[0]
    if M <= FUSED_MAX_M:
        return sum_last_first(grad_y, [st[0].shape[0] for st in states], lambda i, gy: ternary_grad_x(
            gy, *states[i], in_features, group_size, strength[i]))
    return _expanded_matmul(grad_y, states, in_features, group_size, strength, True,
                            fp8_matmul_applies(matmul_fp8, M, n_total, in_features))


def ternary_scale(E: torch.Tensor, corr_accum: torch.Tensor, step_counter: torch.Tensor, pending: torch.Tensor,
                  group_size: int, strength: float) -> torch.Tensor:
    """The kernels' ``S`` ``[N, G]`` float32 (same device function the linear kernels use)."""
    if not isinstance(E, torch.Tensor) or E.dim() != 2:
        raise ValueError("triton ternary op: E must be a 2-D int8 tensor")
    N, G = E.shape
    check_group_size_op(G * group_size, group_size)
    check_kernel_device(E.device)
    for name, t, dtype in (("E", E, torch.int8), ("corr_accum", corr_accum, torch.int64)):
        if t.dtype != dtype or tuple(t.shape) != (N, G) or not t.is_contiguous():
            raise ValueError(f"triton ternary op: {name} must be contiguous {dtype} of shape {(N, G)}")
        check_device(t, name, E.device)
    check_counter_tensor(step_counter, "step_counter", E.device)
    check_scalars(pending, strength)
    S = torch.empty(N, G, dtype=torch.float32, device=E.device)
    if S.numel():
        block = 1024
        ternary_scale_kernel[(triton.cdiv(S.numel(), block),)](E, corr_accum, step_counter, pending, S, S.numel(),
                                                               float(strength), GS=group_size, BLOCK=block)
    return S


