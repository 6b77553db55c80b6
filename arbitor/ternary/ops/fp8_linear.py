"""The forward and grad-x matmuls from fp8 operands (``TernaryConfig.matmul_fp8``): format, torch reference, GEMM.

``gradw_fp8`` (``fp8.py``) makes only the weight-gradient GEMM cheaper. A checkpointed training step also runs the
forward twice and grad-x once, each a GEMM of the same size that reads ``W_eff``; ``matmul_fp8`` runs those on the
fp8 tensor cores too (twice bf16's rate on Hopper):

* ``xq [M, K] = e4m3(x * 2**-ex[m])``          -- one scale per token ``m`` (a row of ``x``);
* ``wq [N, K] = e4m3(W_eff * 2**-ew)``         -- one scale for the whole layer;
* ``y[m, n] = 2**ex[m] * 2**ew * sum_k xq[m, k] * wq[n, k]``, fp32 accumulation, written in bf16;
* grad-x the same with ``grad_y [M, N]`` per token and ``wq`` stored transposed (``[K, N]``, the GEMM's layout).

Bit by bit:

* A row's exponent is ``fp8.fp8_exponents`` of its largest ``|value|`` (the smallest ``e`` with ``amax * 2**-e
  <= 448``, at least -126), so ``2**e`` scales exactly; the layer's ``ew`` is the same rule applied to its largest
  group scale ``S`` (``scale.bigint_scale``, float32, exact as the kernels compute it).
* ``W_eff = T * S`` is exact in float32; ``W_eff * 2**-ew`` too. Both operands are rounded to e4m3 to nearest
  even, with subnormals (steps of ``2**-9`` after scaling), as torch's ``.to(torch.float8_e4m3fn)``.
* Stored as ``torch.float8_e4m3fn``; the scales as float32 vectors (``[M]`` per token; ``[N]`` or ``[K]`` all equal
  to ``2**ew``: the GEMM's row-wise form wants one per output column).
* A row of ``x`` (or ``grad_y``) with a NaN or an infinity gets the scale NaN and zero bytes: its output row is
  NaN, as the bf16 product's would be.

So the forward and grad-x see operands with 4 significant bits (relative error ``<= 2**-4``, half on average):
unlike ``gradw_fp8``, which only rounds what a vote's signs are taken from, this changes the numbers the loss
is computed from, as fp8 training does for float models (Transformer Engine, DeepSeek-V3). ``T`` itself is exact
in e4m3; what rounds is each group's scale ``S`` (to 4 significant bits) and the activations. Group scales more
than ``2**14`` below the layer's largest lose precision (subnormals) and below ``2**17`` become 0. Whether
learning suffers is measured, not assumed (``benchmarks/quality.py`` rows ending in ``-fp8all``;
``docs/kernels.md``, "fp8 matmuls").

Where it is used: in layers whose sides are both at least ``fp8.FP8_MIN_FEATURES`` (``fp8.fp8_matmul_pays``:
3072 x 3072 too, where a ballot's ``grad_W`` stays bf16 -- the matmul adds one read of the activations, the ballot
two), for more than ``linear_triton.FUSED_MAX_M`` rows (decode shapes keep their fused kernels). The plain-torch
reference (``fp8_forward_torch``, ``fp8_grad_x_torch``) multiplies the fp8 operands' exact float32 values; the Triton
quantisers (``fp8_triton.py``) give the same bytes and scales, and the GEMM is ``fp8.scaled_mm_nt``.
"""
from __future__ import annotations

import torch

from .blocks import expand_weight, row_blocks
from .fp8 import FP8_DTYPE, dequantize, fp8_exponents, fp8_shape_ok, pow2

__all__ = ["FP8_MIN_ROWS", "fp8_matmul_applies", "quantize_rows_torch", "weight_exponent_torch", "expand_fp8_torch",
           "fp8_forward_torch", "fp8_grad_x_torch"]

FP8_MIN_ROWS = 17   # linear_triton.FUSED_MAX_M + 1: up to 16 rows (decode) the fused kernels stay


def fp8_matmul_applies(matmul_fp8: bool, rows: int, out_features: int, in_features: int) -> bool:
    """Whether a forward / grad-x of ``rows`` rows takes the fp8 GEMM: asked, ``rows >= FP8_MIN_ROWS`` and sides
    that are multiples of 16 (``fp8.fp8_shape_ok``). Both backends' ops decide by this."""
    return matmul_fp8 and rows >= FP8_MIN_ROWS and fp8_shape_ok(out_features, in_features)


def quantize_rows_torch(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t [M, C]`` (any float dtype) -> ``(q [M, C] float8_e4m3fn, scale [M] float32 = 2**e)`` (module doc); a
    non-finite row gets zero bytes and the scale NaN."""
    M, C = t.shape
    tf = t.to(torch.float32)
    finite = torch.isfinite(tf).all(dim=1) if C else torch.ones(M, dtype=torch.bool, device=t.device)
    amax = torch.where(finite, tf.abs().amax(dim=1) if C else torch.zeros(M, device=t.device), 0.0)
    e = fp8_exponents(amax)
    q = (torch.where(finite[:, None], tf, 0.0) * pow2(-e)[:, None]).to(FP8_DTYPE)
    return q, torch.where(finite, pow2(e), float("nan"))


def weight_exponent_torch(S: torch.Tensor) -> torch.Tensor:
    """int32 ``ew`` (0-d) of a layer from its float32 group scales ``S [N, G]`` (module doc)."""
    amax = S.amax() if S.numel() else torch.zeros((), device=S.device)
    return fp8_exponents(amax.reshape(1)).reshape(())


def expand_fp8_torch(T_packed: torch.Tensor, S: torch.Tensor, in_features: int, group_size: int,
                     transpose: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(wq, scale)``: ``wq [N, K]`` float8_e4m3fn (``[K, N]`` with ``transpose``) = ``e4m3(W_eff * 2**-ew)``, and
    ``scale`` float32 ``[N]`` (``[K]``) filled with ``2**ew``."""
    ew = weight_exponent_torch(S)
    N = T_packed.shape[0]
    wq = torch.empty(N, in_features, dtype=FP8_DTYPE, device=T_packed.device)
    for n0, n1 in row_blocks(N, in_features):
        w = expand_weight(T_packed[n0:n1], S[n0:n1], in_features, group_size)
        wq[n0:n1] = (w * pow2(-ew)).to(FP8_DTYPE)
    if transpose:
        wq = wq.t().contiguous()
    return wq, pow2(ew).expand(wq.shape[0]).contiguous()


def fp8_forward_torch(x: torch.Tensor, T_packed: torch.Tensor, S: torch.Tensor, in_features: int,
                      group_size: int) -> torch.Tensor:
    """``x [M, K] -> y [M, N]`` (x's dtype): the fp8 operands' exact values multiplied in float32, one row block of
    the weight at a time."""
    xf = dequantize(*quantize_rows_torch(x))
    wq, sw = expand_fp8_torch(T_packed, S, in_features, group_size)
    y = torch.empty(x.shape[0], wq.shape[0], dtype=torch.float32, device=x.device)
    for n0, n1 in row_blocks(wq.shape[0], in_features):
        y[:, n0:n1] = xf @ dequantize(wq[n0:n1], sw[n0:n1]).t()
    return y.to(x.dtype)


def fp8_grad_x_torch(grad_y: torch.Tensor, T_packed: torch.Tensor, S: torch.Tensor, in_features: int,
                     group_size: int) -> torch.Tensor:
    """``grad_y [M, N] -> grad_x [M, K]`` (grad_y's dtype), as ``fp8_forward_torch`` (the transposed ``wq`` of the
    Triton path holds the same values)."""
    gf = dequantize(*quantize_rows_torch(grad_y))
    wq, sw = expand_fp8_torch(T_packed, S, in_features, group_size)
    grad_x = torch.zeros(grad_y.shape[0], in_features, dtype=torch.float32, device=grad_y.device)
    for n0, n1 in row_blocks(wq.shape[0], in_features):
        grad_x.addmm_(gf[:, n0:n1], dequantize(wq[n0:n1], sw[n0:n1]))
    return grad_x.to(grad_y.dtype)
