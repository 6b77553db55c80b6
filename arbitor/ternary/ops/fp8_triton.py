"""Triton quantiser of the fp8 ``grad_W`` operands (format and reference: ``fp8.py``), and its launcher.

``quantize_t_triton(t [M, C], bad) -> (q [C, Mp] float8_e4m3fn, scale [C] float32)`` is two launches over ``t``:

1. ``amax_kernel``: each ``[BLOCK_M, BLOCK_C]`` tile's column maxima of ``|t|``, merged with ``atomic_max`` on
   the float32 bits as int32 (non-negative floats order like their bits; the maximum does not depend on the
   order, so the result is deterministic); a NaN or infinity raises the ballot's int32 ``bad`` flag;
2. ``cast_t_kernel``: the exponent ``e`` of each column from its maximum's bits (``fp8.fp8_exponents``), the tile
   times ``2**-e``, rounded to e4m3 by integer arithmetic (``_e4m3``: round to nearest even, with subnormals --
   bit-equal to torch's cast, which the CPU interpreter's own fp8 conversion is not), transposed and stored as
   bytes; columns ``m >= M`` of ``q`` get 0, and the first row of programs writes ``scale = 2**e``.

So ``t`` is read twice and ``q`` written once: ``5`` bytes an entry for a 16-bit ``t``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .fp8 import FP8_DTYPE, padded_tokens

__all__ = ["amax_kernel", "cast_t_kernel", "quantize_t_triton", "AMAX_TILE", "CAST_TILE"]

# ``[BLOCK_M, BLOCK_C]`` tiles, 4 warps: the fastest of seven pairs at four layer shapes on the H200
# (benchmarks/results/speed/h200-gradw-fp8/quant_sweep.json): 80 us for a bf16 [4096, 12288] grad_y, where a copy
# of it (read 2 B + write 2 B an entry) takes 50 us and this pass moves 5 B an entry; 64 x 64 for both: 88 us.
# One launch a column strip (the maximum, then the cast re-reading the strip) was 1.6-3x slower at every shape.
AMAX_TILE = (256, 64)
CAST_TILE = (64, 128)


@triton.jit
def amax_kernel(t_ptr, amax_ptr, bad_ptr, M, C, stride_m, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Column maxima of ``|t|`` into ``amax`` (int32 bits of float32, zeroed by the caller); ``bad`` set to 1 on a
    non-finite entry."""
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    mask = (m < M)[:, None] & c_mask[None, :]
    v = tl.abs(tl.load(t_ptr + m.to(tl.int64)[:, None] * stride_m + c[None, :], mask=mask, other=0.0).to(tl.float32))
    nonfinite = tl.sum(tl.sum(((v != v) | (v == float("inf"))).to(tl.int32), axis=1), axis=0)
    if nonfinite > 0:
        tl.atomic_max(bad_ptr, 1)
    tl.atomic_max(amax_ptr + c, tl.max(v, axis=0).to(tl.int32, bitcast=True), mask=c_mask)


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
def cast_t_kernel(t_ptr, amax_ptr, q_ptr, scale_ptr, M, MP, C, stride_m,
                  BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """``q[c, m] = e4m3(t[m, c] * 2**-e[c])`` for ``m < MP`` (0 past ``M``) and ``scale[c] = 2**e[c]``."""
    pid_m = tl.program_id(0)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    e = _exponent(tl.load(amax_ptr + c, mask=c_mask, other=0))
    v = tl.load(t_ptr + m.to(tl.int64)[:, None] * stride_m + c[None, :], mask=(m < M)[:, None] & c_mask[None, :],
                other=0.0).to(tl.float32)
    q = tl.trans(_e4m3(v * _pow2(-e)[None, :]))
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
    amax = torch.zeros(C, dtype=torch.int32, device=t.device)
    q = torch.empty(C, MP, dtype=FP8_DTYPE, device=t.device)
    scale = torch.empty(C, dtype=torch.float32, device=t.device)
    if C == 0:
        return q, scale
    (am, ac), (cm, cc) = AMAX_TILE, CAST_TILE
    if M:
        amax_kernel[(triton.cdiv(M, am), triton.cdiv(C, ac))](t, amax, bad, M, C, t.stride(0), BLOCK_M=am, BLOCK_C=ac)
    cast_t_kernel[(triton.cdiv(MP, cm), triton.cdiv(C, cc))](t, amax, q.view(torch.uint8), scale, M, MP, C, t.stride(0),
                                                            BLOCK_M=cm, BLOCK_C=cc)
    return q, scale
