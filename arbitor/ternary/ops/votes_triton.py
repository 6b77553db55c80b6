"""Triton correlation-vote kernel of the ``bigint`` rule, and its launcher.

``ternary_correlation_(grad_y, x, T_packed, corr_accum, in_features, group_size)`` adds
``vote[n, g] = -sum_{k in g} sign((grad_y.T @ x)[n, k]) * T[n, k]`` (``votes.py``, the plain-torch
reference) into ``corr_accum`` in place, without ever writing ``grad_W`` to global memory.

The kernel reduces each ``grad_W`` element over *all* of M inside one program, in a fixed
order (``BLOCK_M`` chunks, ascending), with fp32 accumulation; the launcher picks its tile
sizes from a fixed table (``_corr_config``, never by timing), so the float value whose sign is
taken does not change from run to run. Votes are integers added with int64 atomics, which
commute exactly.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from .triton_common import (INTERPRETED, INTERP_DEFAULT, check_act, check_state, dot_precision, expand_bytes,
                            launch_cfg, load_bytes)

__all__ = ["ternary_correlation_", "ternary_corr_kernel"]


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
    t = expand_bytes(load_bytes(t_ptr, offs_n.to(tl.int64) * KB, n_mask, k0, KB, BLOCK_K), BLOCK_N, BLOCK_K)
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




def _corr_config(M: int, N: int, K: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Fixed (never timed) tile table for the correlation kernel: deterministic per shape/dtype/GPU."""
    if INTERPRETED or device.type != "cuda":
        return dict(INTERP_DEFAULT, num_warps=4, num_stages=1)
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    if dtype == torch.float32:
        bm, bn, bk, warps, stages = 32, 128, 128, 8, 3
        if triton.cdiv(N, bn) * triton.cdiv(K, bk) < n_sm:
            bn, bk, warps = 64, 64, 4
    else:
        bm, bn, bk, warps, stages = 64, 128, 128, 8, 3
        if triton.cdiv(N, bn) * triton.cdiv(K, bk) < n_sm:
            bn, bk, warps = 64, 128, 4
            if triton.cdiv(N, bn) * triton.cdiv(K, bk) < n_sm:
                bk = 64
    env = os.environ.get("ARB_TRITON_CORR_CONFIG", "").strip()
    if env:  # "BLOCK_M,BLOCK_N,BLOCK_K,num_warps,num_stages" -- for benchmarking the table itself
        try:
            bm, bn, bk, warps, stages = (int(v) for v in env.split(","))
        except ValueError:
            raise ValueError(f"ARB_TRITON_CORR_CONFIG must be 5 comma-separated ints, got {env!r}") from None
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages}




def ternary_correlation_(grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor, corr_accum: torch.Tensor,
                         in_features: int, group_size: int, *, config: Optional[dict] = None) -> torch.Tensor:
    """Add ``vote[n, g] = -sum_{k in g} sign((grad_y.T @ x)[n, k]) * T[n, k]`` into ``corr_accum`` (in place).

    Args:
        grad_y: ``[M, N]`` float; x: ``[M, K]`` same dtype; T_packed ``[N, K/4]`` uint8;
        corr_accum: ``[N, K // group_size]`` int64, updated in place and returned.
    """
    N, G = check_state(T_packed, in_features, group_size, None, corr_accum, None)
    check_act(grad_y, "grad_y", N, "out_features", T_packed.device)
    check_act(x, "x", in_features, "in_features", T_packed.device)
    if grad_y.shape[0] != x.shape[0]:
        raise ValueError(f"triton ternary op: grad_y has {grad_y.shape[0]} rows but x has {x.shape[0]}")
    if grad_y.dtype != x.dtype:
        raise TypeError(f"triton ternary op: grad_y ({grad_y.dtype}) and x ({x.dtype}) must share a dtype")
    M = x.shape[0]
    if M == 0:
        return corr_accum  # every grad_W entry is 0: sign 0, no votes
    if config is not None:
        cfg = launch_cfg(config)
        cfg.pop("GROUP_M")
        if cfg.pop("SPLIT", 1) != 1:
            raise ValueError("the correlation kernel takes no SPLIT (each program reduces all of M)")
    else:
        cfg = _corr_config(M, N, in_features, x.dtype, x.device)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), triton.cdiv(in_features, cfg["BLOCK_K"]))
    ternary_corr_kernel[grid](grad_y, x, T_packed, corr_accum, M, N, in_features, G, in_features // 4,
                              grad_y.stride(0), grad_y.stride(1), x.stride(0), x.stride(1),
                              GS=group_size, DOT_PRECISION=dot_precision(x.dtype), **cfg)
    return corr_accum


