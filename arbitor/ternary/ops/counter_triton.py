"""Fused Triton kernel for the ``counter`` rule's per-ballot step, and its launcher.

Given one row block of ``grad_W`` (``[rows, K]``, from cuBLAS, any float dtype, read once) and the per-row
step scale ``rate / rms(grad_W[n, :])`` (``[rows]`` float32), one program of ``counter_step_kernel`` handles
``BLOCK_R`` rows x ``NGT * OPG`` octets (8 consecutive weights) -- each thread holding whole octets as words of
``T_packed`` and ``C_packed``, so that every byte is decoded and re-packed in its registers -- and does what the
plain-torch reference ``counter.counter_block_torch_`` does with ~50 torch kernels:

1. decode the trits (``T_packed``, 2 bits) and counters (``C_packed``, ``BITS`` bits);
2. cast the BigInt scale votes ``-sum_group sign(g) * T`` and add them to ``corr_accum``
   (a program covers whole groups, so each group belongs to one program: a plain load-add-store, no atomics);
3. draw ``u = (hash >> 8) * 2**-24`` from the same counter-based hash as
   ``hashing.counter_uniform`` (lowbias32 in uint32 lanes; the int64 index's two words from the row's, with a
   carry), with the ballot's hash base read from the device (``hashing.hash_base`` of the layer's key and the
   ballot index: no host value);
4. move each ladder position ``p = (T+1)*L + C`` by ``-sign(g) * floor(|g| * scale + u)``,
   clamped to ``[0, 3L)``;
5. re-encode and store whole bytes of ``T_packed`` and ``C_packed`` (a program covers whole octets: every
   byte belongs to one program; bytes past the row end are not written, padding codes past ``K`` -- read as 0,
   with ``grad_W`` 0 there -- come out 0).

Nothing is written when the ballot's ``bad`` flag (a device scalar: some ``grad_W`` entry not finite) is up.
``row_scale_kernel`` computes the per-row step scale and that flag in one read of a 16-bit ``grad_W`` chunk;
``count_ballot_kernel`` counts the ballot afterwards (``pending`` or ``nonfinite``) -- so a GPU ballot is
one cuBLAS GEMM and three launches, with nothing read back to the host. Everything after ``grad_W`` and
the scale is integer or exactly-rounded fp32, so the result equals the torch reference bit for bit on the
CPU interpreter; on a GPU the compiler may fuse ``|g| * scale + u`` into one FMA, which can move a weight
whose ``a + u`` lies within one rounding of an integer.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..format import counter_planes
from .triton_common import mix32u

__all__ = ["counter_step_kernel", "step_tile", "counter_block_triton_", "counter_gather_kernel",
           "counter_gather_block_triton_", "row_scale_kernel", "row_scale_triton", "count_ballot_kernel",
           "count_ballot_triton_"]


@triton.jit
def _lo32(v):
    """The low 32 bits of int64 ``v`` as uint32."""
    return (v & 0xFFFFFFFF).to(tl.uint32)


@triton.jit
def _tile(gw_ptr, t_ptr, bad_ptr, rows, K, KB, stride_g, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's ``[BLOCK_R, BLOCK_K]`` tile: row and column indices, masks (rows masked off when the ballot
    is ``bad``), ``grad_W`` as fp32, the decoded trits ``t`` and ``sign(g)``."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    r_mask = (r < rows) & (tl.load(bad_ptr) == 0)
    mask = r_mask[:, None] & (k < K)[None, :]
    r64 = r.to(tl.int64)
    g = tl.load(gw_ptr + r64[:, None] * stride_g + k[None, :], mask=mask, other=0.0).to(tl.float32)
    tb = tl.load(t_ptr + r64[:, None] * KB + (k // 4)[None, :], mask=mask, other=0).to(tl.int32)
    code = (tb >> ((k % 4) * 2)[None, :]) & 3
    t = (code & 1) - (code >> 1)
    sgn = (g > 0).to(tl.int32) - (g < 0).to(tl.int32)
    return r, k, r_mask, mask, r64, g, t, sgn


@triton.jit
def _add_group_votes(vote_ptr, sgn, t, r64, r_mask, G, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                     GS: tl.constexpr):
    """The BigInt scale votes ``-sum_group sign(g) * T``, one group per ``GS`` columns, added to the int64
    ``[rows, G]`` buffer at ``vote_ptr`` (each group belongs to one program: no atomics). ``sgn`` and ``t``: the
    tile's ``[BLOCK_R, BLOCK_K]`` values in column order."""
    NG: tl.constexpr = BLOCK_K // GS
    vote = -tl.sum(tl.reshape(sgn * t, (BLOCK_R, NG, GS)), axis=2)
    gi = tl.program_id(1) * NG + tl.arange(0, NG)
    g_mask = r_mask[:, None] & (gi < G)[None, :]
    offs = r64[:, None] * G + gi[None, :]
    tl.store(vote_ptr + offs, tl.load(vote_ptr + offs, mask=g_mask, other=0) + vote.to(tl.int64), mask=g_mask)


@triton.jit
def _hash_base(key_ptr, ballot):
    """``hashing.hash_base`` of the layer's key (int64 at ``key_ptr``) and the ballot index ``ballot`` (int64),
    on the device, as a uint32."""
    key = tl.load(key_ptr).to(tl.int64)
    return mix32u(mix32u(_lo32(key) ^ mix32u(_lo32(key >> 32))) ^ _lo32(ballot) ^ mix32u(_lo32(ballot >> 32)))


@triton.jit
def _add_carry(lo, hi, k):
    """The uint32 words ``(lo, hi)`` of an int64 index plus ``k`` (int32, ``0 <= k < 2**31``): one carry."""
    lo_k = lo + tl.cast(k, tl.uint32)
    return lo_k, hi + (lo_k < lo).to(tl.uint32)


@triton.jit
def _uniform(x, hh):
    """``hashing.counter_uniform``'s ``u = (mix32(mix32(lo ^ base) ^ hi) >> 8) * 2**-24`` (lowbias32 in uint32
    lanes: the hash is defined mod 2**32, so wrapping 32-bit products are exact and far cheaper than int64 ones),
    given ``x = y ^ (y >> 16)`` for ``y = lo ^ base`` (the first mix's first xorshift, which a caller may form
    once for several indices) and ``hh = hi ^ (hi >> 16)``: the first mix's last xorshift and the second's first
    cancel to ``x ^ hi ^ (hi >> 16)``."""
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    x = x ^ hh
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    h = x ^ (x >> 16)
    return (h >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _uniform_at(lo, hi, base):
    """``_uniform`` of the index with uint32 words ``(lo, hi)`` under the ballot's hash base ``base``."""
    y = lo ^ base
    return _uniform(y ^ (y >> 16), hi ^ (hi >> 16))


@triton.jit
def _uniforms(key_ptr, ballot, row_idx, k):
    """Counter-based uniforms of ballot ``ballot`` (int64) at ``idx = row_idx + k``, as ``hashing.counter_uniform``;
    ``row_idx = (row0 + r) * K`` int64 and ``k`` int32 (``0 <= k < 2**31``) broadcast to the tile's shape."""
    lo, hi = _add_carry(_lo32(row_idx), _lo32(row_idx >> 32), k)
    return _uniform_at(lo, hi, _hash_base(key_ptr, ballot))


@triton.jit
def _halves(x):
    """``[..., 2n]`` -> the even and the odd positions of the last axis, ``[..., n]`` each (in-thread)."""
    return tl.split(tl.reshape(x, x.shape[:-1] + (x.shape[-1] // 2, 2)))


@triton.jit
def _eight(x):
    """``[..., 8]`` -> its eight ``[...]`` slices, position order (the last axis is held by one thread)."""
    e, o = _halves(x)
    ee, eo = _halves(e)
    oe, oo = _halves(o)
    x0, x4 = tl.split(ee)
    x2, x6 = tl.split(eo)
    x1, x5 = tl.split(oe)
    x3, x7 = tl.split(oo)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _word(ptr, offs, mask, NBYTES: tl.constexpr, LIMIT):
    """``NBYTES`` (<= 4) consecutive bytes at ``ptr + offs`` (those below ``LIMIT``) as one little-endian uint32."""
    w = tl.load(ptr + offs, mask=mask & (offs < LIMIT), other=0).to(tl.uint32)
    for i in tl.static_range(1, NBYTES):
        w = w | (tl.load(ptr + offs + i, mask=mask & (offs + i < LIMIT), other=0).to(tl.uint32) << (8 * i))
    return w


@triton.jit
def _store_word(ptr, offs, mask, w, NBYTES: tl.constexpr, LIMIT):
    """The inverse of ``_word``: the low ``NBYTES`` bytes of ``w`` to ``ptr + offs`` (those below ``LIMIT``)."""
    for i in tl.static_range(NBYTES):
        tl.store(ptr + offs + i, (w >> (8 * i)).to(tl.uint8), mask=mask & (offs + i < LIMIT))


@triton.jit
def _move(g, j: tl.constexpr, tw, cw, cw2, hb, sc, lo_oct, hi_oct, zo, ho, base, BITS: tl.constexpr,
          LO_BITS: tl.constexpr, ALIGN8: tl.constexpr):
    """The ladder move of the weight at position ``j`` of each octet (``counter.counter_block``): ``g`` its
    ``grad_W`` entries, ``tw`` / ``cw`` (``cw2``: bytes 4-7 at 8 bits) / ``hb`` the octets' words of ``T_packed``,
    the counters' low plane and their bit-4 plane, ``sc`` the row scale; the hash index's words per octet. Returns
    ``(sign(g) * T, new trit code, new counter)``, each shaped as ``g``."""
    L: tl.constexpr = 1 << BITS
    TOP: tl.constexpr = 3 * L - 1
    code = (tw >> (2 * j)) & 3
    t = (code & 1).to(tl.int32) - (code >> 1).to(tl.int32)
    if LO_BITS == 8:
        if j < 4:
            c = (cw >> (8 * j)) & 255
        else:
            c = (cw2 >> (8 * (j - 4))) & 255
    else:
        c = (cw >> (LO_BITS * j)) & ((1 << LO_BITS) - 1)
    if BITS == 5:
        c = c | (((hb >> j) & 1) << 4)
    # the uniform (``_uniform``): with 8-aligned octets ``lo = lo_oct | j``, so the first xorshift is the octet's
    # (``zo``) xor ``j``; otherwise the index's words with their carry
    if ALIGN8:
        u = _uniform(zo ^ j, ho)
    else:
        lo, hi = _add_carry(lo_oct, hi_oct, j)
        u = _uniform_at(lo, hi, base)
    # the signed step -sign(g) * min(floor(|g| * scale + u), 3L - 1): the truncation of +-a (a >= 0), the clamp
    # taken on a (TOP is an integer, so min and floor commute; the int32 conversion never saturates, whatever
    # the rate); g = 0 moves nothing (a = u < 1)
    a = tl.minimum(tl.abs(g) * sc + u, TOP)
    steps = tl.where(g > 0, a, -a).to(tl.int32)
    p = (t + 1) * L + c.to(tl.int32) - steps
    p = tl.minimum(tl.maximum(p, 0), TOP)
    sgn = (g > 0).to(tl.int32) - (g < 0).to(tl.int32)
    q3 = p >> BITS
    new_code = tl.where(q3 == 2, 1, tl.where(q3 == 0, 2, 0)).to(tl.uint32)
    return sgn * t, new_code, (p & (L - 1)).to(tl.uint32)


@triton.jit(do_not_specialize=["one"])
def counter_step_kernel(gw_ptr, scale_ptr, t_ptr, c_ptr, corr_ptr, key_ptr, step_ptr, pending_ptr, bad_ptr, rows, K,
                        KB, CB, CB_LO, G, row0, stride_g, one, BITS: tl.constexpr, GS: tl.constexpr,
                        BLOCK_R: tl.constexpr, NGT: tl.constexpr, OPG: tl.constexpr, ALIGN8: tl.constexpr):
    """One program: ``BLOCK_R`` rows x ``NGT * OPG`` octets (8 consecutive weights) of a row block. Each thread
    holds whole octets as words -- ``T_packed``'s 2 bytes, the counters' ``LO_BITS`` low-plane bytes and (5 bits)
    their bit-4 byte -- and ``grad_W``'s 8 entries from one 16-byte load, split in registers (``_eight``); the
    eight weights of an octet are stepped one position at a time (``_move``) and the words re-packed. Groups of
    ``GS >= 8`` are ``OPG = GS / 8`` octets (their votes one in-program sum), groups of 4 half an octet.
    ``ALIGN8``: ``K % 8 == 0`` (an octet's hash indices share their high word). ``one``: the integer 1, passed at
    run time so the compiler cannot see the bit-4 plane's bytes as contiguous (it would pick another layout for
    them and convert every weight's values between the two)."""
    LO_BITS: tl.constexpr = 4 if BITS == 5 else BITS
    LO_B: tl.constexpr = 4 if LO_BITS == 8 else LO_BITS      # bytes in the first low-plane word
    # octets of this program: [OPG, NGT, BLOCK_R] (octet-in-group first: the compiler orders lanes by the first
    # axis of equal contiguity, so a warp's lanes read consecutive octets of a row)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = (r < rows) & (tl.load(bad_ptr) == 0)
    r64 = r.to(tl.int64)
    q = (tl.program_id(1) * (NGT * OPG) + tl.arange(0, NGT)[None, :] * OPG + tl.arange(0, OPG)[:, None])  # [OPG, NGT]
    q3 = q[:, :, None]
    r3 = r64[None, None, :]
    m3 = r_mask[None, None, :] & (q3 * 8 < K)
    k4 = q3[:, :, :, None] * 8 + tl.arange(0, 8)[None, None, None, :]
    g4 = tl.load(gw_ptr + r3[:, :, :, None] * stride_g + k4,
                 mask=m3[:, :, :, None] & (k4 < K), other=0.0).to(tl.float32)
    gs = _eight(g4)
    t_offs = r3 * KB + q3 * 2
    tw = _word(t_ptr, t_offs, m3, 2, r3 * KB + KB)
    c_offs = r3 * CB + q3 * LO_BITS
    cw = _word(c_ptr, c_offs, m3, LO_B, r3 * CB + CB_LO)
    cw2 = cw
    if LO_BITS == 8:
        cw2 = _word(c_ptr, c_offs + 4, m3, 4, r3 * CB + CB_LO)
    hb = cw
    if BITS == 5:
        hb = tl.load(c_ptr + r3 * CB + CB_LO + q3 * one, mask=m3, other=0).to(tl.uint32)
    # hash: idx = (row0 + r) * K + 8q + j as two uint32 words
    ballot = tl.load(step_ptr).to(tl.int64) + tl.load(pending_ptr).to(tl.int64)
    base = _hash_base(key_ptr, ballot)
    row_idx = (row0 + r3) * K
    lo_oct, hi_oct = _add_carry(_lo32(row_idx), _lo32(row_idx >> 32), q3 * 8)
    sc = tl.load(scale_ptr + r, mask=r_mask, other=0.0)[None, None, :]
    zo = lo_oct ^ base
    zo = zo ^ (zo >> 16)
    ho = hi_oct ^ (hi_oct >> 16)
    # the eight positions of each octet, one at a time: votes (two halves for groups of 4) and the new words
    LM: tl.constexpr = (1 << LO_BITS) - 1
    v_lo = tl.zeros(tw.shape, dtype=tl.int32)
    v_hi = tl.zeros(tw.shape, dtype=tl.int32)
    tw_n = tl.zeros_like(tw)
    cw_n = tl.zeros_like(tw)
    cw2_n = tl.zeros_like(tw)
    hb_n = tl.zeros_like(tw)
    for j in tl.static_range(8):
        v, n, c = _move(gs[j], j, tw, cw, cw2, hb, sc, lo_oct, hi_oct, zo, ho, base, BITS, LO_BITS, ALIGN8)
        if j < 4:
            v_lo += v
        else:
            v_hi += v
        tw_n = tw_n | (n << (2 * j))
        if LO_BITS == 8:
            if j < 4:
                cw_n = cw_n | (c << (8 * j))
            else:
                cw2_n = cw2_n | (c << (8 * (j - 4)))
        else:
            cw_n = cw_n | ((c & LM) << (LO_BITS * j))
        if BITS == 5:
            hb_n = hb_n | ((c >> 4) << j)
    # votes: -sum over each group of sign(g) * T
    if GS == 4:   # two groups an octet
        gi = 2 * q3
        vo = r3 * G + gi
        gm = m3 & (gi < G)
        tl.store(corr_ptr + vo, tl.load(corr_ptr + vo, mask=gm, other=0) - v_lo.to(tl.int64), mask=gm)
        gm = m3 & (gi + 1 < G)
        tl.store(corr_ptr + vo + 1, tl.load(corr_ptr + vo + 1, mask=gm, other=0) - v_hi.to(tl.int64), mask=gm)
    else:
        vote = -tl.sum(v_lo + v_hi, axis=0)        # [NGT, BLOCK_R]
        gi = tl.program_id(1) * NGT + tl.arange(0, NGT)
        gm = r_mask[None, :] & (gi < G)[:, None]
        vo = r64[None, :] * G + gi[:, None]
        tl.store(corr_ptr + vo, tl.load(corr_ptr + vo, mask=gm, other=0) + vote.to(tl.int64), mask=gm)
    # the new words back
    _store_word(t_ptr, t_offs, m3, tw_n, 2, r3 * KB + KB)
    _store_word(c_ptr, c_offs, m3, cw_n, LO_B, r3 * CB + CB_LO)
    if LO_BITS == 8:
        _store_word(c_ptr, c_offs + 4, m3, cw2_n, 4, r3 * CB + CB_LO)
    if BITS == 5:
        tl.store(c_ptr + r3 * CB + CB_LO + q3 * one, hb_n.to(tl.uint8), mask=m3)

@triton.jit
def counter_gather_kernel(gw_ptr, scale_ptr, t_ptr, vote_ptr, move_ptr, key_ptr, ballot_ptr, bad_ptr, rows, K, KB,
                          G, row0, stride_g, CAP: tl.constexpr, GS: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_K: tl.constexpr):
    """The step-boundary twin of ``counter_step_kernel`` (``ops/gather.py``): the same votes and draws, but the
    votes go into ``vote_sum`` and each weight's move ``-sign(g) * min(floor(a + u), CAP)`` into ``move_sum``
    (int8); the trits and counters are not touched. The draw is keyed by the ballot's global index
    (``ballot_ptr``: ``step_counter + slot``)."""
    r, k, r_mask, mask, r64, g, t, sgn = _tile(gw_ptr, t_ptr, bad_ptr, rows, K, KB, stride_g, BLOCK_R, BLOCK_K)
    _add_group_votes(vote_ptr, sgn, t, r64, r_mask, G, BLOCK_R, BLOCK_K, GS)
    u = _uniforms(key_ptr, tl.load(ballot_ptr).to(tl.int64), ((row0 + r64) * K)[:, None], k[None, :])
    sc = tl.load(scale_ptr + r, mask=r_mask, other=0.0)
    steps = tl.minimum(tl.floor(tl.abs(g) * sc[:, None] + u), CAP).to(tl.int32)
    m_offs = r64[:, None] * K + k[None, :]
    old = tl.load(move_ptr + m_offs, mask=mask, other=0).to(tl.int32)
    tl.store(move_ptr + m_offs, (old - sgn * steps).to(tl.int8), mask=mask)


@triton.jit
def row_scale_kernel(gw_ptr, scale_ptr, bad_ptr, rate_ptr, rows, K, stride_g, BLOCK_K: tl.constexpr):
    """Per row: ``scale = rate / max(rms(grad_W[n, :]), 1e-30)`` (float32, sum of squares in fp32; ``rate`` read
    from a float32 0-d tensor, so a schedule needs no new launch constant) and the ballot's ``bad`` flag (int32)
    set if any entry is not finite. One program per row."""
    r = tl.program_id(0)
    acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
    nonfin = tl.zeros((BLOCK_K,), dtype=tl.int32)
    row = gw_ptr + r.to(tl.int64) * stride_g
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        g = tl.load(row + k, mask=k < K, other=0.0).to(tl.float32)
        acc += g * g
        nonfin += ((g != g) | (tl.abs(g) == float("inf"))).to(tl.int32)
    if tl.sum(nonfin, axis=0) > 0:
        tl.atomic_max(bad_ptr, 1)
    rms = tl.maximum(tl.sqrt(tl.sum(acc, axis=0) / K), 1e-30)
    tl.store(scale_ptr + r, tl.load(rate_ptr) / rms)


@triton.jit
def count_ballot_kernel(bad_ptr, pending_ptr, nonfinite_ptr):
    """``pending += 1`` -- or ``nonfinite += 1`` when the ballot's ``bad`` flag is up."""
    bad = (tl.load(bad_ptr) != 0).to(tl.int64)
    tl.store(pending_ptr, tl.load(pending_ptr) + (1 - bad))
    tl.store(nonfinite_ptr, tl.load(nonfinite_ptr) + bad)


def row_scale_triton(gw: torch.Tensor, rate: float | torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """``rate / rms(gw[n, :])`` per row, ``[rows]`` float32, one read of a (16-bit) ``grad_W`` chunk; raises the
    int32 ``bad`` flag when an entry is not finite. ``rate``: a float or a float32 0-d tensor on the device."""
    rows, K = gw.shape
    scale = torch.empty(rows, dtype=torch.float32, device=gw.device)
    if not isinstance(rate, torch.Tensor):
        rate = torch.full((), rate, dtype=torch.float32, device=gw.device)
    elif rate.dtype != torch.float32 or rate.dim() != 0 or rate.device != gw.device:
        raise ValueError(f"row_scale_triton: rate must be a float32 0-d tensor on {gw.device}, got {rate.dtype} "
                         f"{tuple(rate.shape)} on {rate.device}")
    if rows:
        row_scale_kernel[(rows,)](gw, scale, bad, rate, rows, K, gw.stride(0),
                                  BLOCK_K=min(4096, triton.next_power_of_2(max(K, 16))))
    return scale


def count_ballot_triton_(bad: torch.Tensor, pending: torch.Tensor, nonfinite: torch.Tensor) -> None:
    """Count one ballot from its int32 ``bad`` flag (one launch)."""
    count_ballot_kernel[(1,)](bad, pending, nonfinite)


#: counter_step_kernel's tile: octets a program and warps (step_tile)
STEP_OCTETS = 64
STEP_WARPS = 2


def step_tile(group_size: int) -> tuple[int, int, int, int]:
    """``(BLOCK_R, NGT, OPG, num_warps)`` of ``counter_step_kernel``: ``OPG = max(1, group_size // 8)`` octets a
    group, ``NGT = max(1, 16 // OPG)`` groups (128 columns, or one group) across, ``STEP_OCTETS`` octets a program
    over ``STEP_WARPS`` warps. 64 octets on 2 warps (one octet a thread) and 128 on 4 were the fastest of eleven
    tiles at all four layer shapes of ``benchmarks/results/speed/h200-counter-step-words`` (within 1 % of each
    other; 256 on 2 warps was 1.2-1.4x slower), every tile's state checked equal first."""
    opg = max(1, group_size // 8)
    ngt = max(1, 16 // opg)
    return max(1, STEP_OCTETS // (ngt * opg)), ngt, opg, STEP_WARPS


def counter_block_triton_(gw: torch.Tensor, scale: torch.Tensor, T_packed: torch.Tensor, C_packed: torch.Tensor,
                          corr_accum: torch.Tensor, hash_key: torch.Tensor, step_counter: torch.Tensor,
                          pending: torch.Tensor, bad: torch.Tensor, row0: int, in_features: int, group_size: int,
                          bits: int) -> None:
    """Launch ``counter_step_kernel`` on one row block (views ``T_packed[n0:n1]`` etc., moved in place).

    Args:
        gw: ``[rows, K]`` float block of ``grad_W`` (rows contiguous; any float dtype).
        scale: ``[rows]`` float32, ``rate / rms(gw[n, :])``.
        T_packed, C_packed, corr_accum: the block's rows (contiguous row slices).
        hash_key, step_counter, pending: the layer's int64 0-d tensors (the ballot's hash base is computed in
            the kernel from the key and the ballot index ``step_counter + pending``).
        bad: 0-d int tensor, nonzero: the ballot does not count (nothing is written).
        row0: the block's first row in the whole layer (the hash index is global).
    """
    rows, K = gw.shape
    for name, tsr in (("scale", scale), ("T_packed", T_packed), ("C_packed", C_packed), ("corr_accum", corr_accum)):
        if not tsr.is_contiguous():
            raise ValueError(f"counter_block_triton_: {name} must be contiguous")
    for name, tsr in (("scale", scale), ("T_packed", T_packed), ("C_packed", C_packed), ("corr_accum", corr_accum),
                      ("hash_key", hash_key), ("step_counter", step_counter), ("pending", pending), ("bad", bad)):
        if tsr.device != gw.device:
            raise RuntimeError(f"counter_block_triton_: {name} is on {tsr.device}, grad_W on {gw.device}")
    if gw.stride(1) != 1:
        raise ValueError("counter_block_triton_: grad_W rows must be contiguous")
    if not gw.is_floating_point() or scale.dtype != torch.float32:
        raise TypeError("counter_block_triton_: grad_W must be a float tensor and scale float32")
    block_r, ngt, opg, warps = step_tile(group_size)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(K, 8 * ngt * opg))
    lo_bytes = counter_planes(K, bits)[0][3]        # bytes of the low-bit plane: the whole row but at 5 bits
    counter_step_kernel[grid](gw, scale, T_packed, C_packed, corr_accum, hash_key, step_counter, pending, bad, rows, K,
                              T_packed.shape[1], C_packed.shape[1], lo_bytes, corr_accum.shape[1], row0,
                              gw.stride(0), 1, BITS=bits, GS=group_size, BLOCK_R=block_r, NGT=ngt, OPG=opg,
                              ALIGN8=K % 8 == 0, num_warps=warps)


def counter_gather_block_triton_(gw: torch.Tensor, scale: torch.Tensor, T_packed: torch.Tensor,
                                 vote_sum: torch.Tensor, move_sum: torch.Tensor, hash_key: torch.Tensor,
                                 ballot: torch.Tensor, bad: torch.Tensor, row0: int, in_features: int,
                                 group_size: int, cap: int) -> None:
    """Launch ``counter_gather_kernel`` on one row block (the contract of ``gather.counter_gather_block_torch_``)."""
    rows, K = gw.shape
    for name, tsr in (("scale", scale), ("T_packed", T_packed), ("vote_sum", vote_sum), ("move_sum", move_sum)):
        if not tsr.is_contiguous():
            raise ValueError(f"counter_gather_block_triton_: {name} must be contiguous")
        if tsr.device != gw.device:
            raise RuntimeError(f"counter_gather_block_triton_: {name} is on {tsr.device}, grad_W on {gw.device}")
    if gw.stride(1) != 1:
        raise ValueError("counter_gather_block_triton_: grad_W rows must be contiguous")
    block_k = max(128, group_size)
    block_r = max(1, 2048 // block_k)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(K, block_k))
    counter_gather_kernel[grid](gw, scale, T_packed, vote_sum, move_sum, hash_key, ballot, bad, rows, K,
                                T_packed.shape[1], vote_sum.shape[1], row0, gw.stride(0), CAP=cap, GS=group_size,
                                BLOCK_R=block_r, BLOCK_K=block_k)
