"""The ``bigint`` ballot on the GPU: cuBLAS ``grad_W``, a Triton vote kernel, a Triton apply kernel.

``bigint_ballot_triton_(grad_y, x, T_packed, corr_accum, pending, nonfinite, in_features, group_size)``:

1. ``grad_W = grad_y.T @ x`` by cuBLAS in the activations' dtype (bf16 on the fast path, fp32
   accumulation inside the GEMM) -- or, with ``gradw_fp8``, by an fp8 GEMM (``fp8.py``) -- in row chunks
   (``gradw.gradw_chunks``), each freed before the next;
2. ``ballot_vote_kernel`` reads a chunk once with the trits, and writes the group votes
   ``-sum_{k in g} sign(grad_W[n, k]) * T[n, k]`` (``votes.py``, the plain-torch reference) as int32 into a
   ``[N, G]`` scratch, and raises a device flag if any ``grad_W`` entry is not finite (a NaN or inf in
   ``grad_y`` or ``x`` reaches every entry of its row or column);
3. ``apply_ballot_kernel`` adds the votes into ``corr_accum`` and counts the ballot in ``pending`` -- or,
   when the flag is up, skips the ballot and counts it in ``nonfinite``. No value reaches the host.

The sign of a bf16 ``grad_W`` entry is the sign of cuBLAS's fp32 accumulator (bf16 keeps fp32's exponent
range), so the votes are those of the fp32 ``grad_W`` up to the reduction order: entries within rounding of
0 can flip (``docs/kernels.md``). cuBLAS picks its algorithm from the shape, so the votes are deterministic
run to run on one device and software stack.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .blocks import gradw_chunk_rows
from .gradw import gradw_chunks, use_fp8
from .triton_common import check_act, check_counter_tensor, check_state, expand_bytes, load_bytes

__all__ = ["bigint_ballot_triton_", "ballot_vote_kernel", "apply_ballot_kernel"]


@triton.jit
def ballot_vote_kernel(gw_ptr, t_ptr, votes_ptr, bad_ptr, rows, K, KB, G, stride_g,
                       GS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Group votes of one ``[rows, K]`` ``grad_W`` chunk (row stride ``stride_g``) into int32 ``votes``; ``bad``
    (int32) set to 1 if any entry is not finite. ``BLOCK_K`` is a multiple of ``GS``: each group belongs to one
    program (plain stores, no atomics for the votes)."""
    pid_r = tl.program_id(0)
    pid_k = tl.program_id(1)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    r_mask = r < rows
    mask = r_mask[:, None] & (k < K)[None, :]
    r64 = r.to(tl.int64)
    g = tl.load(gw_ptr + r64[:, None] * stride_g + k[None, :], mask=mask, other=0.0).to(tl.float32)
    bad = tl.sum(tl.sum(((g != g) | (tl.abs(g) == float("inf"))).to(tl.int32), axis=1), axis=0)
    if bad > 0:
        tl.atomic_max(bad_ptr, 1)
    sgn = (g > 0).to(tl.int32) - (g < 0).to(tl.int32)
    t = expand_bytes(load_bytes(t_ptr, r64 * KB, r_mask, pid_k * BLOCK_K, KB, BLOCK_K), BLOCK_R, BLOCK_K)
    NG: tl.constexpr = BLOCK_K // GS
    vote = -tl.sum(tl.reshape(sgn * t, (BLOCK_R, NG, GS)), axis=2)
    gi = pid_k * NG + tl.arange(0, NG)
    tl.store(votes_ptr + r64[:, None] * G + gi[None, :], vote, mask=r_mask[:, None] & (gi < G)[None, :])


@triton.jit
def apply_ballot_kernel(votes_ptr, corr_ptr, bad_ptr, pending_ptr, nonfinite_ptr, NUMEL, BLOCK: tl.constexpr):
    """``corr_accum += votes`` and ``pending += 1`` -- or, if ``bad``, nothing but ``nonfinite += 1``."""
    pid = tl.program_id(0)
    ok = tl.load(bad_ptr) == 0
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = (offs < NUMEL) & ok
    c = tl.load(corr_ptr + offs, mask=mask, other=0)
    v = tl.load(votes_ptr + offs, mask=mask, other=0)
    tl.store(corr_ptr + offs, c + v.to(tl.int64), mask=mask)
    if pid == 0:
        okv = ok.to(tl.int64)
        tl.store(pending_ptr, tl.load(pending_ptr) + okv)
        tl.store(nonfinite_ptr, tl.load(nonfinite_ptr) + (1 - okv))


def _vote_config(group_size: int) -> tuple[int, int]:
    block_k = max(128, group_size)
    return max(1, 4096 // block_k), block_k


def bigint_ballot_triton_(grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor, corr_accum: torch.Tensor,
                          pending: torch.Tensor, nonfinite: torch.Tensor, in_features: int, group_size: int,
                          gradw_fp8: bool = False) -> None:
    """One ``bigint`` ballot in place (module doc): ``grad_y [M, N]``, ``x [M, K]`` of one float dtype;
    ``gradw_fp8``: ``grad_W`` by the fp8 GEMM where the layer's shape allows (``gradw.use_fp8``)."""
    N, G = check_state(T_packed, in_features, group_size, None, corr_accum, None)
    device = T_packed.device
    check_act(grad_y, "grad_y", N, "out_features", device)
    check_act(x, "x", in_features, "in_features", device)
    check_counter_tensor(pending, "pending", device)
    check_counter_tensor(nonfinite, "nonfinite", device)
    if grad_y.shape[0] != x.shape[0]:
        raise ValueError(f"triton ternary op: grad_y has {grad_y.shape[0]} rows but x has {x.shape[0]}")
    if grad_y.dtype != x.dtype:
        raise TypeError(f"triton ternary op: grad_y ({grad_y.dtype}) and x ({x.dtype}) must share a dtype")
    votes = torch.empty(N, G, dtype=torch.int32, device=device)
    bad = torch.zeros((), dtype=torch.int32, device=device)
    block_r, block_k = _vote_config(group_size)
    fp8 = use_fp8(gradw_fp8, N, in_features, device)
    for n0, gw in gradw_chunks(grad_y, x, gradw_chunk_rows(N, in_features), fp8, bad):   # [rows, K]
        n1 = n0 + gw.shape[0]
        grid = (triton.cdiv(n1 - n0, block_r), triton.cdiv(in_features, block_k))
        ballot_vote_kernel[grid](gw, T_packed[n0:n1], votes[n0:n1], bad, n1 - n0, in_features, in_features // 4, G,
                                 gw.stride(0), GS=group_size, BLOCK_R=block_r, BLOCK_K=block_k)
        del gw
    block = 1024
    apply_ballot_kernel[(max(1, triton.cdiv(N * G, block)),)](votes, corr_accum, bad, pending, nonfinite, N * G,
                                                             BLOCK=block)
