"""Fused Triton kernel for the ``counter`` rule's per-ballot step, and its launcher.

Given one row block of ``grad_W`` (``[rows, K]``, from cuBLAS, any float dtype, read once) and the per-row
step scale ``rate / rms(grad_W[n, :])`` (``[rows]`` float32), one program handles a ``[BLOCK_R, BLOCK_K]``
tile of weights -- held as ``[BLOCK_R, BLOCK_K / 8, 8]`` octets, each thread owning whole octets, so that every
byte of ``T_packed`` and ``C_packed`` is decoded and re-packed in its registers -- and does what the plain-torch
reference ``counter.counter_block_torch_`` does with ~50 torch kernels:

1. decode the trits (``T_packed``, 2 bits) and counters (``C_packed``, ``BITS`` bits);
2. cast the BigInt scale votes ``-sum_group sign(g) * T`` and add them to ``corr_accum``
   (``BLOCK_K`` is a multiple of the group size, so each group belongs to one program: a plain
   load-add-store, no atomics);
3. draw ``u = (hash >> 8) * 2**-24`` from the same counter-based hash as
   ``hashing.counter_uniform`` (lowbias32 in uint32 lanes; the int64 index's two words from the row's, with a
   carry), with the ballot's hash base read from the device (``hashing.hash_base`` of the layer's key and the
   ballot index: no host value);
4. move each ladder position ``p = (T+1)*L + C`` by ``-sign(g) * floor(|g| * scale + u)``,
   clamped to ``[0, 3L)``;
5. re-encode and store whole bytes of ``T_packed`` and ``C_packed`` (``BLOCK_K`` is a
   multiple of 8: every byte belongs to one program; bytes past the row end are not written,
   padding codes past ``K`` come out 0).

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
def _group_sums(x, BLOCK_R: tl.constexpr, Q: tl.constexpr, GS: tl.constexpr, NG: tl.constexpr):
    """``[BLOCK_R, Q, 8]`` int32 -> ``[BLOCK_R, NG]`` sums over each group of ``GS`` consecutive columns, without
    reshaping the octet axis (spread over lanes and warps: a 4 x 512 tile's reshape of it into ``[rows, groups,
    group]`` summed wrong on the H200, benchmarks/results/speed/h200-counter-step-ab). Octets are summed in their
    thread, then each group's octets by a masked reduction; half octets for groups of 4."""
    if GS == 4:
        return tl.reshape(tl.sum(tl.reshape(x, (BLOCK_R, Q, 2, 4)), axis=3), (BLOCK_R, NG))
    octet = tl.sum(x, axis=2)                                    # [BLOCK_R, Q], in-thread
    if GS == 8:
        return octet
    group_of = tl.arange(0, Q) // (GS // 8)
    g_idx = tl.arange(0, NG)
    out = tl.zeros((BLOCK_R, NG), dtype=tl.int32)
    for gg in tl.static_range(NG):
        s_g = tl.sum(tl.where((group_of == gg)[None, :], octet, 0), axis=1)
        out = tl.where((g_idx == gg)[None, :], s_g[:, None], out)
    return out


@triton.jit
def _add_group_votes(vote_ptr, sgn, t, r64, r_mask, G, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                     GS: tl.constexpr, OCTETS: tl.constexpr = False):
    """The BigInt scale votes ``-sum_group sign(g) * T``, one group per ``GS`` columns, added to the int64
    ``[rows, G]`` buffer at ``vote_ptr`` (each group belongs to one program: no atomics). ``sgn`` and ``t``: the
    tile's ``[BLOCK_R, BLOCK_K]`` values in column order; with ``OCTETS`` as ``[BLOCK_R, BLOCK_K / 8, 8]`` octets
    (each thread holding whole octets), summed by ``_group_sums`` without reshaping the octet axis."""
    NG: tl.constexpr = BLOCK_K // GS
    if OCTETS:
        vote = -_group_sums(sgn * t, BLOCK_R, BLOCK_K // 8, GS, NG)
    else:
        vote = -tl.sum(tl.reshape(sgn * t, (BLOCK_R, NG, GS)), axis=2)
    gi = tl.program_id(1) * NG + tl.arange(0, NG)
    g_mask = r_mask[:, None] & (gi < G)[None, :]
    offs = r64[:, None] * G + gi[None, :]
    tl.store(vote_ptr + offs, tl.load(vote_ptr + offs, mask=g_mask, other=0) + vote.to(tl.int64), mask=g_mask)


@triton.jit
def _uniforms(key_ptr, ballot, row_idx, k):
    """Counter-based uniforms of ballot ``ballot`` (int64) at ``idx = row_idx + k``, as ``hashing.counter_uniform``
    (lowbias32 in uint32 lanes: the hash is defined mod 2**32, so wrapping 32-bit products are exact and far cheaper
    than int64 ones); ``row_idx = (row0 + r) * K`` int64 and ``k`` int32 (``0 <= k < 2**31``) broadcast to the tile's
    shape, the index's low and high words formed from the row's with one carry; the hash base is
    ``hashing.hash_base``, on the device."""
    key = tl.load(key_ptr).to(tl.int64)
    base = mix32u(mix32u(_lo32(key) ^ mix32u(_lo32(key >> 32))) ^ _lo32(ballot) ^ mix32u(_lo32(ballot >> 32)))
    lo_row = _lo32(row_idx)
    lo = lo_row + k.to(tl.uint32)
    hi = _lo32(row_idx >> 32) + (lo < lo_row).to(tl.uint32)
    h = mix32u(mix32u(lo ^ base) ^ hi)
    return (h >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _octets(x, W: tl.constexpr, BLOCK_R: tl.constexpr, Q: tl.constexpr):
    """``[BLOCK_R, Q, W]`` bytes (int32) of a plane of ``W``-bit fields -> the ``[BLOCK_R, Q, 8]`` fields, low bits
    first (``format.py``'s layout: ``8 // W`` fields a byte). Each thread holds whole octets, so this is in-register."""
    PER: tl.constexpr = 8 // W
    f = (x[:, :, :, None] >> (tl.arange(0, PER) * W)[None, None, None, :]) & ((1 << W) - 1)
    return tl.reshape(f, (BLOCK_R, Q, 8))


@triton.jit
def _pack_octets(f, W: tl.constexpr, BLOCK_R: tl.constexpr, Q: tl.constexpr):
    """The inverse of ``_octets``: ``[BLOCK_R, Q, 8]`` fields in ``[0, 2**W)`` -> ``[BLOCK_R, Q, W]`` bytes (int32;
    the fields are disjoint, so the sum is the bitwise or)."""
    PER: tl.constexpr = 8 // W
    f = tl.reshape(f, (BLOCK_R, Q, W, PER))
    return tl.sum(f << (tl.arange(0, PER) * W)[None, None, None, :], axis=3)


@triton.jit
def counter_step_kernel(gw_ptr, scale_ptr, t_ptr, c_ptr, corr_ptr, key_ptr, step_ptr, pending_ptr, bad_ptr, rows, K,
                        KB, CB, CB_LO, G, row0, stride_g, BITS: tl.constexpr, GS: tl.constexpr, BLOCK_R: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    # The tile is [BLOCK_R, Q, 8]: octets of 8 consecutive weights, each held by one thread, so the trits' 2
    # bytes, the counters' low-plane bytes and their bit-4 byte of an octet are decoded and re-packed in registers
    # (a [BLOCK_R, BLOCK_K] tile packed with tl.sum over reshapes spent ~1/3 of its 130 sm_90 instructions a
    # weight on shuffles and shared memory). BITS 5: two planes in one row of C_packed (format.py) -- the low
    # nibbles (4-bit layout) in columns [0, CB_LO), bit 4 (1-bit layout) after them; other widths: one plane.
    LO_BITS: tl.constexpr = 4 if BITS == 5 else BITS
    L: tl.constexpr = 1 << BITS
    TOP: tl.constexpr = 3 * L - 1
    Q: tl.constexpr = BLOCK_K // 8
    # 1. the tile, its trits and counters
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = (r < rows) & (tl.load(bad_ptr) == 0)
    r64 = r.to(tl.int64)
    q = tl.program_id(1) * Q + tl.arange(0, Q)                    # octet index in the row
    j = tl.arange(0, 8)
    k = q[:, None] * 8 + j[None, :]                              # [Q, 8] columns
    in_k = (k < K)[None, :, :]
    mask = r_mask[:, None, None] & in_k
    g = tl.load(gw_ptr + r64[:, None, None] * stride_g + k[None, :, :], mask=mask, other=0.0).to(tl.float32)
    tb_i = q[:, None] * 2 + tl.arange(0, 2)[None, :]             # [Q, 2] T_packed bytes of each octet
    tb_mask = r_mask[:, None, None] & (tb_i < KB)[None, :, :]
    code = _octets(tl.load(t_ptr + r64[:, None, None] * KB + tb_i[None, :, :], mask=tb_mask, other=0).to(tl.int32),
                   2, BLOCK_R, Q)
    t = (code & 1) - (code >> 1)
    cb_i = q[:, None] * LO_BITS + tl.arange(0, LO_BITS)[None, :]  # [Q, LO_BITS] low-plane bytes of each octet
    cb_mask = r_mask[:, None, None] & (cb_i < CB_LO)[None, :, :]
    c = _octets(tl.load(c_ptr + r64[:, None, None] * CB + cb_i[None, :, :], mask=cb_mask, other=0).to(tl.int32),
                LO_BITS, BLOCK_R, Q)
    if BITS == 5:
        hb_mask = r_mask[:, None] & (q < CB - CB_LO)[None, :]
        hb = tl.load(c_ptr + r64[:, None] * CB + CB_LO + q[None, :], mask=hb_mask, other=0).to(tl.int32)
        c = c | (((hb[:, :, None] >> j[None, None, :]) & 1) << 4)
    sgn = (g > 0).to(tl.int32) - (g < 0).to(tl.int32)
    # 2. BigInt scale votes into corr_accum
    _add_group_votes(corr_ptr, sgn, t, r64, r_mask, G, BLOCK_R, BLOCK_K, GS, True)
    # 3. counter-based uniforms of this ballot (index step_counter + pending)
    ballot = tl.load(step_ptr).to(tl.int64) + tl.load(pending_ptr).to(tl.int64)
    u = _uniforms(key_ptr, ballot, ((row0 + r64) * K)[:, None, None], k[None, :, :])
    # 4. the ladder step (p >= 0 after the clamp, so p // L is a shift)
    sc = tl.load(scale_ptr + r, mask=r_mask, other=0.0)
    steps = tl.minimum(tl.floor(tl.abs(g) * sc[:, None, None] + u), TOP).to(tl.int32)
    p = (t + 1) * L + c - sgn * steps
    p = tl.minimum(tl.maximum(p, 0), TOP)
    tn = (p >> BITS) - 1
    cn = tl.where(in_k, p & (L - 1), 0)                          # padding past K stays code 0, counter 0
    new_code = tl.where(in_k, tl.where(tn > 0, 1, tl.where(tn < 0, 2, 0)), 0)
    # 5. whole bytes back
    tl.store(t_ptr + r64[:, None, None] * KB + tb_i[None, :, :], _pack_octets(new_code, 2, BLOCK_R, Q).to(tl.uint8),
             mask=tb_mask)
    tl.store(c_ptr + r64[:, None, None] * CB + cb_i[None, :, :],
             _pack_octets(cn & ((1 << LO_BITS) - 1), LO_BITS, BLOCK_R, Q).to(tl.uint8), mask=cb_mask)
    if BITS == 5:
        hbytes = tl.sum(((cn >> 4) & 1) << j[None, None, :], axis=2)
        tl.store(c_ptr + r64[:, None] * CB + CB_LO + q[None, :], hbytes.to(tl.uint8), mask=hb_mask)


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


def step_tile(group_size: int) -> tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_K, num_warps)`` of ``counter_step_kernel``: 8 rows x 128 columns on 2 warps (1,024 weights,
    16 a thread), or one group wide for groups of more than 128. The fastest of ten tiles at all four layer shapes
    of ``benchmarks/results/speed/h200-counter-step-ab`` (1.19-1.26x the 16 x 128 / 4-warp tile it replaces), each
    tile's state checked equal to the old kernel's there before it was timed. (A 4 x 512 tile was faster still
    with the group sum's reshape, but gave wrong votes on the H200; ``_group_sums`` sums without that reshape.)"""
    block_k = max(128, group_size)
    return max(1, 1024 // block_k), block_k, 2


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
    block_r, block_k, warps = step_tile(group_size)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(K, block_k))
    lo_bytes = counter_planes(K, bits)[0][3]        # bytes of the low-bit plane: the whole row but at 5 bits
    counter_step_kernel[grid](gw, scale, T_packed, C_packed, corr_accum, hash_key, step_counter, pending, bad, rows, K,
                              T_packed.shape[1], C_packed.shape[1], lo_bytes, corr_accum.shape[1], row0,
                              gw.stride(0), BITS=bits, GS=group_size, BLOCK_R=block_r, BLOCK_K=block_k,
                              num_warps=warps)


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
