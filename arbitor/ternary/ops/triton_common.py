"""What the Triton ternary kernels share: in-register decode of the packed state, launch checks and configs.

Device functions (``@triton.jit``, inlined into the kernels of ``linear_triton.py``,
``votes_triton.py`` and ``counter_triton.py``):

* ``load_bytes`` / ``expand_bytes`` -- the 2-bit codes of a ``[BLOCK_N, BLOCK_K]`` weight tile
  (layout: ``format.py``) decoded in registers with ``value = (code & 1) - (code >> 1)``;
* ``load_group_state`` / ``scale_from_state`` / ``ballot_coef`` -- the per-group BigInt scale ``S``
  (``scale.py``) expanded from ``E``, ``corr_accum`` and the ballot count ``step_counter + pending``;
* ``weff_from`` / ``weff_cast`` / ``expand_bits16`` -- the ``W_eff = T * S`` tile in the dot's input type;
* ``grouped_pid`` -- the standard grouped program order of Triton matmuls;
* ``mix32u`` -- the counter-based hash of ``hashing.py`` on uint32 lanes.

``W_eff`` is never written to global memory.

In-kernel scale (``scale_from_state``)::

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

Tiling: ``group_size`` (``GS``) and ``BLOCK_K`` are powers of two; when ``GS >= BLOCK_K``
a K tile lies inside one group per output row and the scale is a ``[BLOCK_N]`` vector,
otherwise the tile holds ``BLOCK_K // GS`` whole groups per row and the scale is a
``[BLOCK_N, BLOCK_K // GS]`` tile broadcast over the group. Both cases keep every group on
whole bytes (``GS >= 4``).

Host side: the launchers' input checks (device, dtype, shape, group size, contiguity of the
state buffers; a clear ``TypeError``/``ValueError``/``RuntimeError`` before any kernel could
read out of bounds), the dot precision (``ARB_TRITON_FP32_PRECISION``), and ``INTERPRETED``:
True when the kernels were built for the CPU interpreter (``TRITON_INTERPRET=1`` at import).
"""
from __future__ import annotations

import functools
import os
import struct
from typing import Optional

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..format import check_group_size
from ..scale import MAX_STRENGTH

__all__ = ["INTERPRETED", "INTERP_DEFAULT", "FLOATS", "ballot_coef", "load_bytes", "expand_bytes", "load_group_state",
           "scale_from_state", "group_scale", "weff_from", "expand_bits16", "weff_cast", "grouped_pid", "mix32u",
           "dot_precision", "launch_cfg", "check_state", "check_scalars", "check_act", "check_device",
           "check_kernel_device", "check_group_size_op", "check_counter_tensor", "exact_scale", "float64_bits",
           "round_to", "byte_to_float", "plane_signs16", "SIGN_TABLES", "word_dots", "group_sums", "n_sm", "split_len",
           "split_epilogue", "last_to_arrive", "reset_arrivals", "arrival_counters", "split_buffers", "pdl_ok",
           "gemv_split_start", "COUNTERS"]

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
INTERP_DEFAULT = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32}


@triton.jit
def ballot_coef(step_ptr, pending_ptr, strength, GS: tl.constexpr):
    """``strength / (ballots * GS)`` as a float64 scalar, 0.0 while ``ballots == 0`` (``ballots = step_counter +
    pending``, both read from the device: no host value that changes per ballot)."""
    ballots = tl.load(step_ptr).to(tl.int64) + tl.load(pending_ptr).to(tl.int64)
    denom = ballots.to(tl.float64) * GS
    coef = strength / tl.maximum(denom, 1.0)  # fp32 scalar / fp64 -> fp64
    return tl.where(denom > 0.0, coef, 0.0)


@triton.jit
def load_bytes(t_ptr, row_off, n_mask, k0, KB, BLOCK_K: tl.constexpr, RAW: tl.constexpr = False):
    """The ``BLOCK_K // 4`` packed bytes of columns ``k0 .. k0+BLOCK_K`` of rows ``row_off / KB``:
    int32 ``[BLOCK_N, BLOCK_K // 4]`` (contiguous per row; bytes past the row end read as 0); ``RAW``: as loaded,
    uint8 (four bytes of a row stay one register: ``plane_signs16``'s input)."""
    offs_b = k0 // 4 + tl.arange(0, BLOCK_K // 4)
    b = tl.load(t_ptr + row_off[:, None] + offs_b[None, :], mask=n_mask[:, None] & (offs_b < KB)[None, :], other=0)
    if not RAW:
        b = b.to(tl.int32)
    return b


@triton.jit
def expand_bytes(b, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
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
def load_group_state(e_ptr, corr_ptr, row_g, n_mask, k0, G, GS: tl.constexpr, BLOCK_K: tl.constexpr):
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
def scale_from_state(e, c, coef):
    """BigInt scale ``S = exp2(float32(corr * coef)) * 2**E`` (float32; see module doc)."""
    q = (c.to(tl.int64).to(tl.float64) * coef).to(tl.float32)
    pow2_e = ((e.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)  # exact 2**E for E in [-126, 127]
    return tl.exp2(q) * pow2_e


@triton.jit
def scale_log2(e, c, ballots, strength_bits, GS: tl.constexpr):
    """float64 ``log2 S = E + strength * corr / (ballots * GS)`` (0 votes while ``ballots == 0``) of
    ``exact_scale``; ``S`` grows with it, so the largest ``S`` is ``exact_pow2`` of the largest of these."""
    strength = strength_bits.to(tl.int64).to(tl.float64, bitcast=True)
    denom = ballots.to(tl.float64) * GS
    mean = tl.where(denom > 0.0, c.to(tl.float64) / tl.maximum(denom, 1.0), 0.0)
    return e.to(tl.float64) + strength * mean


@triton.jit
def exact_scale(e, c, ballots, strength_bits, GS: tl.constexpr, INTERP: tl.constexpr):
    """``S`` exactly as ``scale.bigint_scale`` computes it: ``float32(exp2(float64(E) + strength * corr /
    (ballots * GS)))``, all in float64 (``strength_bits``: the int64 bit pattern of the float64 strength, since
    Triton passes float scalars as float32). One per group: cheap next to the group's weights. ``INTERP``: the
    CPU interpreter has no libdevice; numpy's float64 exp2 stands in there."""
    return exact_pow2(scale_log2(e, c, ballots, strength_bits, GS), INTERP)


@triton.jit
def exact_weff_tile(t_ptr, e_ptr, corr_ptr, step_ptr, pending_ptr, offs_n, n_mask, k0, G, KB, strength_bits,
                    GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INTERP: tl.constexpr):
    """float32 ``T * S`` of rows ``offs_n`` and columns ``k0 .. k0+BLOCK_K`` (``[BLOCK_N, BLOCK_K]``), ``S`` per
    group as ``exact_scale`` (so the tile is exact). ``BLOCK_K`` is a multiple of ``GS``. The bf16 expand kernel's
    body (``linear_triton``)."""
    ballots = tl.load(step_ptr).to(tl.int64) + tl.load(pending_ptr).to(tl.int64)
    NG: tl.constexpr = BLOCK_K // GS
    offs_g = k0 // GS + tl.arange(0, NG)
    g_mask = n_mask[:, None] & (offs_g < G)[None, :]
    g_offs = offs_n.to(tl.int64)[:, None] * G + offs_g[None, :]
    e = tl.load(e_ptr + g_offs, mask=g_mask, other=0)
    c = tl.load(corr_ptr + g_offs, mask=g_mask, other=0)
    sc = exact_scale(e, c, ballots, strength_bits, GS, INTERP)                   # [BLOCK_N, NG] float32
    return weff_tile(t_ptr, sc, offs_n, n_mask, k0, KB, GS, BLOCK_N, BLOCK_K)


@triton.jit
def weff_tile(t_ptr, sc, offs_n, n_mask, k0, KB, GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """float32 ``T * sc`` of rows ``offs_n`` and columns ``k0 .. k0+BLOCK_K`` (``[BLOCK_N, BLOCK_K]``) from the
    packed trits, ``sc [BLOCK_N, BLOCK_K // GS]`` one float32 factor a group."""
    NG: tl.constexpr = BLOCK_K // GS
    t = expand_bytes(load_bytes(t_ptr, offs_n.to(tl.int64) * KB, n_mask, k0, KB, BLOCK_K), BLOCK_N, BLOCK_K)
    return tl.reshape(tl.reshape(t.to(tl.float32), (BLOCK_N, NG, GS)) * sc[:, :, None], (BLOCK_N, BLOCK_K))


@triton.jit
def exact_pow2(q, INTERP: tl.constexpr):
    """``float32(exp2(q))`` for float64 ``q``, as torch computes it on a double tensor (``exact_scale``)."""
    if INTERP:
        s = tl.exp2(q)
    else:
        s = libdevice.exp2(q)  # float64 exp2 (__nv_exp2), as torch's exp2 on a double CUDA tensor
    return s.to(tl.float32)


@triton.jit
def round_to(x, dtype: tl.constexpr):
    """float32 ``x`` rounded once, to nearest even, to ``dtype``. bf16 is rounded with integer ops (the CPU
    interpreter's own bf16 conversion truncates); other types by the cast."""
    if dtype == tl.bfloat16:
        b = x.to(tl.uint32, bitcast=True)
        b = b + (((b >> 16) & 1) + 0x7FFF)
        return (b >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def group_scale(e_ptr, corr_ptr, offs, mask, coef):
    """Per-group BigInt scale ``S`` (float32) at flat ``[N, G]`` offsets ``offs``."""
    e = tl.load(e_ptr + offs, mask=mask, other=0)
    c = tl.load(corr_ptr + offs, mask=mask, other=0)
    return scale_from_state(e, c, coef)


@triton.jit
def weff_from(b, e, c, coef, GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``W_eff`` tile ``[BLOCK_N, BLOCK_K]`` float32 from packed bytes and the groups' ``(E, corr)``."""
    t = expand_bytes(b, BLOCK_N, BLOCK_K).to(tl.float32)
    s = scale_from_state(e, c, coef)
    if GS >= BLOCK_K:
        w = t * s[:, None]
    else:
        NG: tl.constexpr = BLOCK_K // GS
        w = tl.reshape(tl.reshape(t, (BLOCK_N, NG, GS)) * s[:, :, None], (BLOCK_N, BLOCK_K))
    return w


@triton.jit
def expand_bits16(b, sbits, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
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


def _plane_asm(j: int) -> str:
    """PTX of code plane ``j`` for ``plane_signs16`` (see there): ``v`` = the plane's four codes, one a byte;
    ``s0`` / ``s1`` the selectors of bytes 0-1 / 2-3."""
    v = f"shr.b32 v, $8, {2 * j};\n and.b32 v, v, 0x03030303;" if j else "and.b32 v, $8, 0x03030303;"
    return (f" {v}\n mad.lo.u32 s0, v, 17, 0x0404;\n mad.hi.u32 s1, v, 0x110000, 0x0404;\n"
            f" prmt.b32 ${2 * j}, $9, $13, s0;\n prmt.b32 ${2 * j + 1}, $9, $13, s1;\n")


_PLANE_ASM = tl.constexpr("{\n .reg .b32 v, s0, s1;\n" + "".join(_plane_asm(j) for j in range(4)) + "}")
#: ``plane_signs16``'s tables: the high / low bytes of the 16-bit float -1, 0, +1 by 2-bit code (0: 0, 1: +1,
#: 2: -1, 3: the invalid code, read as 0), byte ``c`` of each word
SIGN_TABLES = {"bf16": (0x00BF3F00, 0x00808000), "fp16": (0x00BC3C00, 0x00000000)}


@triton.jit
def _plane_signs_plain(bi, one, J: tl.constexpr):
    """Code plane ``J`` of ``plane_signs16`` with plain integer ops (the interpreter's form): code 1 -> ``one``
    (the +1 pattern), 2 -> ``one`` with the sign bit, 0 and the invalid 3 -> 0."""
    code = (bi >> (2 * J)) & 3
    return tl.where(code == 1, one, tl.where(code == 2, one | 0x8000, 0)).to(tl.int16)


@triton.jit
def plane_signs16(b, t_hi, t_lo, INTERP: tl.constexpr):
    """The trits of packed bytes ``b [BLOCK_N, BLOCK_K // 4]`` (``load_bytes(..., RAW=True)``) as 16-bit float
    bit patterns of -1 / 0 / +1, one code plane at a time: ``(m0, m1, m2, m3)``, each int16 ``[BLOCK_N,
    BLOCK_K // 4]``, ``m_j[:, q]`` the weight of column ``4q + j``, so that a caller multiplies plane ``j`` by
    ``x``'s columns ``4q + j`` and never reorders the weights. ``t_hi`` / ``t_lo``: the type's ``SIGN_TABLES``
    (``tl.int32`` scalars or tensors of one value).

    On NVIDIA, 1.75 instructions a weight: one ``prmt.b32`` looks up two weights in the two 4-entry tables --
    its selector takes, for each output byte, the code (the high byte, first register) or the code plus 4 (the
    low byte, second register). For code plane ``j`` of four packed bytes, ``v = (w >> 2j) & 0x03030303`` gives
    both pairs' selectors with one ``mad.lo`` / ``mad.hi`` (``v * 17 + 0x0404`` puts each code into two nibbles;
    ``mad.hi`` by ``17 << 16`` brings bytes 2-3 down), so four weights cost two integer ops, two multiply-adds
    (the FMA pipe) and two byte permutes. The tables are the same for every weight, so the result does not
    depend on which elements an ``asm`` call gets (``pack=4``). The interpreter computes the same patterns with
    plain integer ops."""
    if INTERP:
        bi = b.to(tl.int32)
        one = (t_hi & 0xFF00) | ((t_lo >> 8) & 0xFF)          # the +1 pattern, from byte 1 of each table
        return (_plane_signs_plain(bi, one, 0), _plane_signs_plain(bi, one, 1), _plane_signs_plain(bi, one, 2),
                _plane_signs_plain(bi, one, 3))
    zero = tl.zeros(b.shape, dtype=tl.int32)
    # operands: $0-$7 out (plane j: $2j bytes 0-1, $2j+1 bytes 2-3), $8 the four bytes, $9-$12 / $13-$16 the
    # tables of the four elements (one value: the asm reads $9 and $13)
    m0, m1, m2, m3 = tl.inline_asm_elementwise(_PLANE_ASM, "=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r,r,r,r,r,r",
                                               [b, zero + t_hi, zero + t_lo],
                                               dtype=(tl.int16, tl.int16, tl.int16, tl.int16), is_pure=True, pack=4)
    return m0, m1, m2, m3


@triton.jit
def weff_cast(b, e, c, coef, dtype: tl.constexpr, GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``W_eff`` tile ``[BLOCK_N, BLOCK_K]`` in ``dtype`` (the dot's input type).

    16-bit types with ``GS >= BLOCK_K`` (one scale per row in the tile) use the bit
    construction of ``expand_bits16``; otherwise the float path of ``weff_from``.
    Both give ``float32(T * S)`` rounded once to ``dtype``.
    """
    if dtype != tl.float32 and GS >= BLOCK_K:
        s = scale_from_state(e, c, coef)
        sbits = s.to(dtype).to(tl.int16, bitcast=True).to(tl.int32)
        w = expand_bits16(b, sbits[:, None], BLOCK_N, BLOCK_K).to(dtype, bitcast=True)
    else:
        w = weff_from(b, e, c, coef, GS, BLOCK_N, BLOCK_K).to(dtype)
    return w


@triton.jit
def byte_to_float(uw, hi, b: tl.constexpr, INTERP: tl.constexpr):
    """float32 with byte 3 = 0x3F, byte 2 = byte ``b`` of the uint32 ``uw``, bytes 0-1 = 0: one ``prmt.b32`` on
    NVIDIA (selector: d.b0 = 0, d.b1 = 0 from ``hi`` = 0x3F000000, d.b2 = uw.b``b``, d.b3 = 0x3F); plain
    shifts under the interpreter (no inline PTX there). ``hi`` comes from a kernel argument so that ptxas
    keeps it in a register and encodes the selector as the immediate."""
    if INTERP:
        bits = (((uw >> (8 * b)) & 0xFF) << 16) | 0x3F000000
    else:
        if b == 0:
            bits = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, 0x7054;", "=r,r,r", [uw, hi], dtype=tl.uint32,
                                             is_pure=True, pack=1)
        elif b == 1:
            bits = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, 0x7154;", "=r,r,r", [uw, hi], dtype=tl.uint32,
                                             is_pure=True, pack=1)
        elif b == 2:
            bits = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, 0x7254;", "=r,r,r", [uw, hi], dtype=tl.uint32,
                                             is_pure=True, pack=1)
        else:
            bits = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, 0x7354;", "=r,r,r", [uw, hi], dtype=tl.uint32,
                                             is_pure=True, pack=1)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def word_dots(w, x_base, x_mask, stride_xk, F_HI, BLOCK_N: tl.constexpr, BW: tl.constexpr, INTERP: tl.constexpr):
    """The M = 1 GEMVs' inner step for words inside one scale group (group size >= 16): ``w`` int32 words
    ``[BLOCK_N, BW]`` (16 trits each), ``x`` at ``x_base + c * stride_xk`` for column ``c`` of each word
    (``[BW]`` pointers, ``x_mask``). Returns ``(ps, xs)``: ``ps [BLOCK_N, BW]`` = ``sum(f * x)`` over each word
    and ``xs [BW]`` = ``sum(x)``, where ``f = (t + 5) / 8`` (exact; ``f * x`` is exact for 16-bit x), so a
    word's ``sum(t * x) = 8 * ps - 5 * xs`` (``group_sums``). The word's 16 codes (``format``: 0b01 = +1,
    0b10 = -1; the invalid 0b11 reads as 0, as in ``unpack_ternary``) are first rewritten as ``c = t + 1`` in
    binary (5 ops a word: high bit = the +1 bit and not the -1 bit, low bit = both bits equal); then each code plane
    ``j`` is one shift and one ``lop3`` for 4 weights (bytes ``c << 5``: byte 2 of ``f``, since
    ``0x3F000000 | c << 21`` is ``0.5 + c / 8``), and one byte permute a weight makes ``f`` (``byte_to_float``;
    ``F_HI`` = 0x3F000000 from a kernel argument, opaque to the compiler). The decode before this one (``f = 1 +
    c / 4``, bytes ``0x80 | c << 5``) took 5 integer ops a plane: 1.25 a weight against 0.81 now, and the GEMV is
    bound by the integer pipe. Its ``4 * ps`` equals ``8 * ps`` here bit for bit (each product and partial sum is
    exactly halved)."""
    ps = tl.zeros((BLOCK_N, BW), dtype=tl.float32)
    xs = tl.zeros((BW,), dtype=tl.float32)
    wu = w.to(tl.uint32, bitcast=True)
    # c = t + 1 per 2-bit field (code bits p = 2i: +1, m = 2i+1: -1): bit 2i+1 = p and not m, bit 2i = (p == m)
    cw = ((wu << 1) & (wu ^ 0xAAAAAAAA) & 0xAAAAAAAA) | (((wu ^ (wu >> 1)) & 0x55555555) ^ 0x55555555)
    f_hi = tl.zeros((BLOCK_N, BW), dtype=tl.uint32) + F_HI.to(tl.uint32)
    for j in tl.static_range(4):
        if j < 3:
            uw = (cw << (5 - 2 * j)) & 0x60606060
        else:
            uw = (cw >> 1) & 0x60606060
        for b in tl.static_range(4):
            f = byte_to_float(uw, f_hi, b, INTERP)
            xv = tl.load(x_base + (4 * b + j) * stride_xk, mask=x_mask, other=0.0).to(tl.float32)
            ps += f * xv[None, :]
            xs += xv
    return ps, xs


@triton.jit
def group_sums(ps, xs, s, GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``[BLOCK_N]``: ``sum over the K step of sum(t * x) * S`` from ``word_dots``' ``(ps, xs)`` and the group
    scales ``s`` -- ``[BLOCK_N]`` when ``GS >= BLOCK_K`` (one group a step), else ``[BLOCK_N, BLOCK_K // GS]``."""
    if GS >= BLOCK_K:
        return (8.0 * tl.sum(ps, axis=1) - 5.0 * tl.sum(xs, axis=0)) * s
    else:
        NG: tl.constexpr = BLOCK_K // GS
        pg = tl.sum(tl.reshape(ps, (BLOCK_N, NG, GS // 16)), axis=2)
        xg = tl.sum(tl.reshape(xs, (NG, GS // 16)), axis=1)
        return tl.sum((8.0 * pg - 5.0 * xg[None, :]) * s, axis=1)


@triton.jit
def last_to_arrive(cnt_ptr, n):
    """Whether this program is the last of ``n`` to arrive at the int32 counter ``cnt_ptr``
    (``arrival_counters``), after every thread of the program has written its partials (a CTA barrier, then an
    ``acq_rel`` add at GPU scope: the last program then sees every partial). That program merges them and calls
    ``reset_arrivals``. Used by ``split_epilogue``, ``decode_tc`` and ``model/decode_attention.py``."""
    tl.debug_barrier()                                       # every thread's partial is written ...
    return tl.atomic_add(cnt_ptr, 1, sem="acq_rel", scope="gpu") == n - 1   # ... before it is released


@triton.jit
def reset_arrivals(cnt_ptr):
    """The last program puts the counter back to 0 for the next call (or a replay of a captured graph)."""
    tl.atomic_xchg(cnt_ptr, 0, sem="relaxed", scope="gpu")


@triton.jit
def split_epilogue(acc, y_ptrs, ws_ptrs, mask, cnt_ptr, pid_s, SPLIT, WS_STRIDE, UNROLL: tl.constexpr):
    """Store this K split's fp32 partial ``acc``; the program of the tile that finishes last sums all the
    tile's partials in ascending split order (deterministic: the order never depends on which program is last)
    and writes ``y``. ``cnt_ptr``: the tile's int32 arrival counter (``arrival_counters``), 0 on entry and reset
    to 0 by the last program (so a replayed CUDA graph finds it at 0). Every split-K/N kernel (decode and
    training paths) ends with it: a second reduction kernel cost more to launch than the reduction (3.3 us
    against a 9 us GEMV in the 3b decode step).

    ``UNROLL``: partials read per loop trip. The reads of one trip are independent, so they are in flight
    together (one memory latency a trip instead of one a split) and then added one by one in split order: the
    sum is bit-identical for every ``UNROLL``. Small tiles (the M = 1 GEMVs' ``[BLOCK_N]``) take 8; big tiles 1
    (each read in flight holds the whole tile in registers)."""
    tl.store(ws_ptrs + pid_s * WS_STRIDE, acc, mask=mask)
    if last_to_arrive(cnt_ptr, SPLIT):
        tot = tl.zeros_like(acc)
        if UNROLL == 1:
            for s in range(0, SPLIT):
                tot += tl.load(ws_ptrs + s * WS_STRIDE, mask=mask, other=0.0, cache_modifier=".cg")
        else:
            for s0 in range(0, SPLIT, UNROLL):
                for u in tl.static_range(UNROLL):            # a split past the end adds nothing (not even -0.0)
                    part = tl.load(ws_ptrs + (s0 + u) * WS_STRIDE, mask=mask & (s0 + u < SPLIT), other=0.0,
                                   cache_modifier=".cg")
                    tot = tl.where(s0 + u < SPLIT, tot + part, tot)
        tl.store(y_ptrs, tot.to(y_ptrs.dtype.element_ty), mask=mask)
        reset_arrivals(cnt_ptr)


@triton.jit
def grouped_pid(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
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
def mix32u(x):
    """``hashing.mix32`` on uint32 lanes: the same function, with the wrapping 32-bit products it is defined by."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


#: True when the kernels were built for the CPU interpreter (``TRITON_INTERPRET=1`` at import time).
INTERPRETED: bool = type(mix32u).__name__ == "InterpretedFunction"


def _fp32_precision() -> str:
    value = os.environ.get("ARB_TRITON_FP32_PRECISION", "tf32x3").strip().lower() or "tf32x3"
    if value not in ("ieee", "tf32x3", "tf32"):
        raise ValueError(f"ARB_TRITON_FP32_PRECISION must be ieee, tf32x3 or tf32; got {value!r}")
    return value


#: per device: int32 arrival counters of split tiles (``split_epilogue``), all 0 between calls. A buffer is never
#: freed (a captured CUDA graph may hold its address); a larger one is added only when a call needs more tiles.
COUNTERS: dict[torch.device, list[torch.Tensor]] = {}



@triton.jit
def gemv_split_start(w_ptr, N, G, KW, Q_PER_SPLIT, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The prologue of the one-row GEMV kernels (``ternary_gemv_m1_kernel``, ``decode_gemv_kernel``): program axis
    0 owns ``BLOCK_N`` rows, axis 1 the K-word range ``[q_start, q_end)`` of ``Q_PER_SPLIT`` int32 words (16
    trits each) of ``T_packed`` (``[N, KW]`` words, ``G`` groups a row). Returns ``(pid_n, pid_s, offs_n, n_mask,
    row_w, row_g, q_start, q_end, offs_q, w_first)``: ``row_w`` / ``row_g`` the rows' offsets in words / groups,
    ``offs_q`` the ``BLOCK_K // 16`` words of a K step, ``w_first`` the first step's words (loaded up front)."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    row_w = offs_n.to(tl.int64) * KW
    row_g = offs_n.to(tl.int64) * G
    q_start = pid_s * Q_PER_SPLIT
    q_end = tl.minimum(KW, q_start + Q_PER_SPLIT)
    offs_q = tl.arange(0, BLOCK_K // 16)
    w_first = tl.load(w_ptr + row_w[:, None] + (q_start + offs_q)[None, :],
                      mask=n_mask[:, None] & (q_start + offs_q < q_end)[None, :], other=0)
    return pid_n, pid_s, offs_n, n_mask, row_w, row_g, q_start, q_end, offs_q, w_first


def arrival_counters(device: torch.device, n: int) -> torch.Tensor:
    """At least ``n`` zeroed int32 counters on ``device``, shared by every split call there. Each call leaves
    them at 0, so calls on one stream (and replays of a captured graph) may share them; kernels of two calls
    must not run concurrently on two streams."""
    bufs = COUNTERS.setdefault(device, [])
    if not bufs or bufs[-1].numel() < n:
        bufs.append(torch.zeros(max(n, 1 << 16), dtype=torch.int32, device=device))
    return bufs[-1]


def split_buffers(out: torch.Tensor, split: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ws, cnt)`` of a ``split_epilogue`` kernel writing ``out [M, C]`` from ``tiles`` output tiles: the fp32
    ``[split, M, C]`` workspace and the arrival counters; ``out`` itself for both when ``split == 1`` (unused)."""
    if split == 1:
        return out, out
    return (torch.empty(split, *out.shape, dtype=torch.float32, device=out.device),
            arrival_counters(out.device, tiles))


def pdl_ok(device: torch.device) -> bool:
    """Whether a kernel on ``device`` may launch as a programmatic dependent (``launch_pdl``: it starts while the
    kernel before it in the stream still runs, and waits for it with ``griddepcontrol.wait``): a CUDA device of
    compute capability 9.0 or newer, kernels not built for the interpreter."""
    if device.type != "cuda" or INTERPRETED:
        return False
    return _capability(device.index if device.index is not None else torch.cuda.current_device())[0] >= 9


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def n_sm(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (4 off CUDA: the interpreter's launch arithmetic)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def split_len(red: int, split: int, step: int) -> tuple[int, int]:
    """A reduction of ``red`` split ``split`` ways in whole ``step`` s: ``(length per split, non-empty splits)``."""
    per = triton.cdiv(triton.cdiv(red, split), step) * step
    return per, triton.cdiv(red, per)


def dot_precision(dtype: torch.dtype) -> str:
    return _fp32_precision() if dtype == torch.float32 else "tf32"  # ignored for 16-bit inputs




def check_device(t: torch.Tensor, name: str, device: torch.device) -> None:
    if t.device != device:
        raise RuntimeError(f"triton ternary op: {name} is on {t.device} but the weights are on {device}")


def check_kernel_device(device: torch.device) -> None:
    if device.type == "cuda":
        if INTERPRETED:
            raise RuntimeError("triton ternary op: arbitor.ternary.ops.triton_common was imported with TRITON_INTERPRET=1 "
                               "(CPU interpreter); restart without it to run on CUDA")
        return
    if device.type == "cpu" and INTERPRETED:
        return
    raise RuntimeError(
        f"triton ternary op: tensors on {device} need CUDA, or TRITON_INTERPRET=1 set before "
        "arbitor.ternary.ops.triton_common is first imported (CPU interpreter); use ARB_TERNARY_BACKEND=torch otherwise")


def check_group_size_op(in_features: int, group_size: int) -> None:
    try:
        check_group_size(in_features, group_size)
    except ValueError as exc:
        raise ValueError(f"triton ternary op: {exc}") from None


def check_state(T_packed: torch.Tensor, in_features: int, group_size: int, E: Optional[torch.Tensor],
                 corr_accum: torch.Tensor, step_counter: Optional[torch.Tensor]) -> tuple[int, int]:
    """Validate the integer state; returns ``(N, G)``."""
    check_group_size_op(in_features, group_size)
    if not isinstance(T_packed, torch.Tensor) or T_packed.dtype != torch.uint8 or T_packed.dim() != 2:
        raise TypeError(f"triton ternary op: T_packed must be a 2-D uint8 tensor, got "
                        f"{getattr(T_packed, 'dtype', type(T_packed))} {tuple(getattr(T_packed, 'shape', ()))}")
    N = T_packed.shape[0]
    G = in_features // group_size
    if T_packed.shape[1] != in_features // 4:
        raise ValueError(f"triton ternary op: T_packed has {T_packed.shape[1]} bytes per row, in_features="
                         f"{in_features} needs {in_features // 4}")
    if not T_packed.is_contiguous():
        raise ValueError("triton ternary op: T_packed must be contiguous")
    device = T_packed.device
    check_kernel_device(device)
    named = [("corr_accum", corr_accum, torch.int64)] + ([("E", E, torch.int8)] if E is not None else [])
    for name, t, dtype in named:
        if not isinstance(t, torch.Tensor) or t.dtype != dtype:
            raise TypeError(f"triton ternary op: {name} must be a {dtype} tensor, got {getattr(t, 'dtype', type(t))}")
        if tuple(t.shape) != (N, G):
            raise ValueError(f"triton ternary op: {name} must have shape {(N, G)} (out_features, in_features // "
                             f"group_size), got {tuple(t.shape)}")
        if not t.is_contiguous():
            raise ValueError(f"triton ternary op: {name} must be contiguous")
        check_device(t, name, device)
    if step_counter is not None:
        check_counter_tensor(step_counter, "step_counter", device)
    return N, G


def float64_bits(value: float) -> int:
    """The int64 bit pattern of ``value`` as a float64 (see ``exact_scale``)."""
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def check_counter_tensor(t: torch.Tensor, name: str, device: torch.device) -> None:
    """A one-element int64 counter on ``device`` (``step_counter``, ``pending``, ``nonfinite``...)."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.numel() != 1:
        raise TypeError(f"triton ternary op: {name} must be a one-element int64 tensor, got "
                        f"{getattr(t, 'dtype', type(t))} {tuple(getattr(t, 'shape', ()))}")
    check_device(t, name, device)


def check_scalars(pending: torch.Tensor, strength: float) -> None:
    check_counter_tensor(pending, "pending", pending.device if isinstance(pending, torch.Tensor) else None)
    if not isinstance(strength, (int, float)) or not (0.0 <= float(strength) <= MAX_STRENGTH):
        raise ValueError(f"triton ternary op: strength must be a number in [0, {MAX_STRENGTH}], got {strength!r}")


def check_act(t: torch.Tensor, name: str, cols: int, colname: str, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"triton ternary op: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOATS:
        raise TypeError(f"triton ternary op: {name} must be float32, float16 or bfloat16, got {t.dtype}")
    if t.dim() != 2 or t.shape[1] != cols:
        raise ValueError(f"triton ternary op: {name} must be 2-D [M, {colname}={cols}], got {tuple(t.shape)}")
    check_device(t, name, device)


def launch_cfg(config: Optional[dict]) -> dict:
    """Fixed launch config (interpreter / explicit ``config=``)."""
    cfg = dict(INTERP_DEFAULT, GROUP_M=1)
    if INTERPRETED:
        cfg.update(num_warps=4, num_stages=1)
    if config:
        unknown = set(config) - {"BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages", "SPLIT"}
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        cfg.update(config)
        if not (isinstance(cfg.get("SPLIT", 1), int) and cfg.get("SPLIT", 1) >= 1):
            raise ValueError(f"SPLIT must be a positive int, got {cfg['SPLIT']!r}")
    for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
        v = cfg[key]
        if v < 16 or v & (v - 1):
            raise ValueError(f"{key} must be a power of two >= 16, got {v}")
    return cfg
