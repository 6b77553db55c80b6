"""The packed ternary format: ``T_packed``, documented bit by bit.

This module is the one place that defines how ternary weights are stored.
Every other piece of arbitor (the torch reference ops, the Triton kernels,
checkpoints, the audit) reads and writes exactly this layout.

Layout
------
A ternary weight matrix ``T`` of shape ``[out_features, in_features]`` with
entries in ``{-1, 0, +1}`` is stored as a ``torch.uint8`` tensor

    T_packed: [out_features, ceil(in_features / 4)]

* rows are output features (one row of ``T`` -> one row of ``T_packed``);
* each row is packed along ``in_features``, **4 weights per byte**;
* weight ``k`` of a row lives in byte ``k // 4`` at bits
  ``2 * (k % 4)`` (low bit) and ``2 * (k % 4) + 1`` (high bit), i.e. the
  first weight of a byte occupies the two least-significant bits::

      bit:    7 6 | 5 4 | 3 2 | 1 0
      weight: k+3 | k+2 | k+1 |  k      (k = 4 * byte_index)

* each weight is a 2-bit code:

      code 0b00 ->  0
      code 0b01 -> +1
      code 0b10 -> -1
      code 0b11 -> invalid (never written; ``unpack_ternary`` maps it to 0,
                   ``validate_packed`` rejects it)

  so ``value = (code & 1) - (code >> 1)``, a branch-free decode that the
  Triton kernels use as well;
* when ``in_features`` is not a multiple of 4, the trailing codes of the
  last byte of each row are 0 (padding weights are zeros);
* the tensor is contiguous, row-major (C order).

Per-weight counters: ``C_packed`` (``update_rule="counter"`` only)
------------------------------------------------------------------
The ``counter`` update rule (``rules/counter.py``) keeps one unsigned ``b``-bit counter
per weight, ``b = counter_bits`` in ``{1, 2, 4, 5, 8}``. For ``b`` in ``{1, 2, 4, 8}`` they are
packed the same way as ``T_packed`` (one *plane*):

    C_packed: [out_features, ceil(in_features * b / 8)] uint8

* ``8 // b`` counters per byte; counter ``k`` of a row lives in byte ``k // (8 // b)``
  at bits ``b * (k % (8 // b))`` .. ``b * (k % (8 // b)) + b - 1`` (first counter in the
  least-significant bits, as for trits);
* values are plain unsigned integers in ``[0, 2**b)``; padding counters are 0.

``b = 5`` (0.625 bytes per weight) is two planes side by side in one tensor: the low 4 bits
of every counter as a 4-bit plane, then bit 4 as a 1-bit plane::

    C_packed: [out_features, ceil(in_features / 2) + ceil(in_features / 8)] uint8
    columns [0, ceil(K/2))        low nibbles, 4-bit layout above (2 per byte)
    columns [ceil(K/2), end)      high bits,   1-bit layout above (8 per byte)

so a row block of ``C_packed`` is still a row slice, and ``counter = lo | (hi << 4)``.

For ``b = 2`` the byte layout is identical to ``T_packed``'s (4 per byte).

Scale groups
------------
A scale group is ``group_size`` consecutive weights of one row (one ``E`` and one
``corr_accum`` entry each, ``scale.py``). ``group_size`` is a power of two >= 4 that
divides ``in_features`` (``check_group_size``), so every group starts on a byte boundary
of ``T_packed`` and covers ``group_size // 4`` whole bytes, and the GPU kernels tile
groups evenly. Ragged last groups are not supported.

The frozen layer's ``tc`` layout: ``T_tiles`` and ``S_tiles``
-------------------------------------------------------------
A frozen layer (``inference.TernaryInferenceLinear``) may hold its trits and float32 group scales ``S [N, G]``
rearranged for the tensor-core decode GEMV (``ops/decode_tc.py``): the same bytes and scales, in the order one
warp's lanes read them, so each of a warp's loads is contiguous (a Marlin-style weight permutation). It needs
``out_features % 16 == 0``, ``in_features % 256 == 0`` and ``group_size`` in {64, 128, 256} (``tc_tiles_ok``). With
``N = out_features``, ``NB = N / 16`` blocks of 16 features, ``C = in_features / 256`` chunks of 256 columns,
``T_packed`` read as little-endian int32 words ``w[n, j]`` (16 trits a word) and ``ngc = 256 / group_size``
groups a chunk::

    T_tiles: [NB, C, 2, 32, 16] uint8    unit (b, c, h, lane) = 4 int32 words, lane = 4 * g + tq (g < 8, tq < 4):
             word q (q < 4) of the unit = w[16 b + 8 h + g, 16 c + 4 q + tq]
    S_tiles: [NB, C, 2, 8, ngc] float32  S_tiles[b, c, h, g, i] = S[16 b + 8 h + g, ngc * c + i]

so a block's chunk is 1 KB of words (two runs of 512 bytes, one for features ``g`` and one for ``g + 8``) and
``64 * ngc`` bytes of scales. Lane ``(g, tq)`` of a warp's ``mma`` needs exactly its unit's words: word ``tq`` of
each of the chunk's four 64-column quads, for feature ``g`` (``h = 0``) and ``g + 8`` (``h = 1``).
``tc_tiles`` makes the layout from the row layout, ``tc_rows`` undoes it (bit for bit). A frozen layer in this layout
keeps its buffers' names (``T_packed``, ``S``: the state-dict keys) and shapes them as above; the decode ops tell
the layouts apart by rank (2-D rows, 5-D tiles).
"""
from __future__ import annotations

import math

import torch

__all__ = ["pack_ternary", "unpack_ternary", "packed_shape", "validate_packed", "CODE_ZERO", "CODE_POS", "CODE_NEG",
           "COUNTER_BITS", "check_counter_bits", "counter_packed_shape", "pack_counters", "unpack_counters",
           "counter_planes", "counter_padding_ok", "check_group_size", "tc_tiles_ok", "tc_tiles", "tc_rows",
           "tc_tiles_shapes", "packed_out_features"]

CODE_ZERO = 0b00
CODE_POS = 0b01
CODE_NEG = 0b10

_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)


def packed_shape(out_features: int, in_features: int) -> tuple[int, int]:
    """Shape of ``T_packed`` for a ``[out_features, in_features]`` ternary matrix."""
    return out_features, (in_features + 3) // 4


def pack_ternary(t: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Pack a ternary matrix into ``T_packed``.

    Args:
        t: ``[out_features, in_features]`` integer or float tensor whose
           entries are exactly -1, 0 or +1.
        check: validate the values (a host sync on GPU); internal callers whose values are
           in range by construction pass False.
    Returns:
        ``[out_features, ceil(in_features / 4)]`` uint8, contiguous.
    """
    if t.dim() != 2:
        raise ValueError(f"pack_ternary expects a 2-D [out_features, in_features] tensor, got shape {tuple(t.shape)}")
    if check and (t.is_floating_point() or t.is_complex()):
        if not torch.isfinite(t).all() or not torch.equal(t, t.round()):
            raise ValueError("pack_ternary: float input must hold exact integers -1, 0, +1")
    ti = t.to(torch.int8)
    if check and ti.numel() and (ti.abs() > 1).any():
        raise ValueError(f"pack_ternary: values must be in {{-1, 0, +1}}, got min {int(ti.min())} max {int(ti.max())}")
    # +1 -> 0b01, -1 -> 0b10, 0 -> 0b00; the codes are then 2-bit fields, laid out as 2-bit counters
    codes = torch.where(ti > 0, CODE_POS, torch.where(ti < 0, CODE_NEG, CODE_ZERO)).to(torch.uint8)
    return pack_counters(codes, 2, check=False)


def unpack_ternary(packed: torch.Tensor, in_features: int, dtype: torch.dtype = torch.int8) -> torch.Tensor:
    """Decode ``T_packed`` back to ``[out_features, in_features]`` values in ``{-1, 0, +1}``.

    Args:
        packed: ``[out_features, ceil(in_features / 4)]`` uint8.
        in_features: the logical row length (drops the padding weights).
        dtype: dtype of the result (int8 by default; float dtypes are exact).
    """
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_ternary: T_packed must be uint8, got {packed.dtype}")
    if packed.dim() != 2:
        raise ValueError(f"unpack_ternary: T_packed must be 2-D, got shape {tuple(packed.shape)}")
    if packed.shape[1] != (in_features + 3) // 4:
        raise ValueError(
            f"unpack_ternary: T_packed has {packed.shape[1]} bytes per row, "
            f"in_features={in_features} needs {(in_features + 3) // 4}")
    codes = unpack_counters(packed, in_features, 2, torch.int8)
    return ((codes & 1) - (codes >> 1)).to(dtype)


def validate_packed(packed: torch.Tensor, in_features: int) -> None:
    """Raise ``ValueError`` if ``T_packed`` holds an invalid code (0b11) or non-zero padding."""
    shifts = _SHIFTS.to(packed.device)
    codes = (packed.unsqueeze(-1) >> shifts) & 3
    if (codes == 3).any():
        raise ValueError("T_packed holds the invalid 2-bit code 0b11 (corrupt ternary weights)")
    pad = (-in_features) % 4
    if pad and packed.numel():
        tail = codes[:, -1, 4 - pad:]
        if (tail != 0).any():
            raise ValueError("T_packed has non-zero padding codes after in_features (corrupt ternary weights)")


COUNTER_BITS = (1, 2, 4, 5, 8)
_PLANES = {1: (1,), 2: (2,), 4: (4,), 5: (4, 1), 8: (8,)}   # the planes of each width, low bits first


def check_counter_bits(bits: int) -> tuple[int, ...]:
    """Raise ``ValueError`` unless ``bits`` is a supported counter width; returns the widths of its planes."""
    if bits not in COUNTER_BITS:
        raise ValueError(f"counter_bits must be one of {COUNTER_BITS}, got {bits!r}")
    return _PLANES[bits]


def counter_planes(in_features: int, bits: int) -> list[tuple[int, int, int, int]]:
    """Where each plane of ``bits``-bit counters lies in a ``C_packed`` row (module doc): ``(plane_bits, shift,
    first_column, n_bytes)`` per plane, low bits first (``shift``: the plane's lowest counter bit)."""
    out, shift, col = [], 0, 0
    for b in check_counter_bits(bits):
        per = 8 // b
        n = (in_features + per - 1) // per
        out.append((b, shift, col, n))
        shift, col = shift + b, col + n
    return out


def counter_packed_shape(out_features: int, in_features: int, bits: int) -> tuple[int, int]:
    """Shape of ``C_packed`` for ``[out_features, in_features]`` counters of ``bits`` bits."""
    return out_features, sum(n for _, _, _, n in counter_planes(in_features, bits))


def _pack_plane(ci: torch.Tensor, bits: int) -> torch.Tensor:
    per = 8 // bits
    rows, k = ci.shape
    pad = (-k) % per
    if pad:
        ci = torch.nn.functional.pad(ci, (0, pad))
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=ci.device)
    # each field stays inside its byte and the fields are disjoint: the sum is the bitwise or
    return (ci.view(rows, -1, per) << shifts).sum(dim=-1, dtype=torch.uint8)


def _unpack_plane(packed: torch.Tensor, in_features: int, bits: int) -> torch.Tensor:
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    vals = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return vals.reshape(packed.shape[0], -1)[:, :in_features]


def pack_counters(c: torch.Tensor, bits: int, check: bool = True) -> torch.Tensor:
    """Pack unsigned counters ``[rows, K]`` with values in ``[0, 2**bits)`` -> uint8 ``C_packed`` (module doc).

    ``check=False`` skips the range check (a host sync on GPU) for values in range by construction.
    """
    check_counter_bits(bits)
    if c.dim() != 2:
        raise ValueError(f"pack_counters expects a 2-D [rows, K] tensor, got shape {tuple(c.shape)}")
    planes = counter_planes(c.shape[1], bits)
    if check and c.numel() and (int(c.min()) < 0 or int(c.max()) >= (1 << bits)):
        raise ValueError(f"pack_counters: values must be in [0, {1 << bits}), got min {int(c.min())} "
                         f"max {int(c.max())}")
    ci = c.to(torch.uint8)
    out = [_pack_plane((ci >> shift) & ((1 << b) - 1), b) for b, shift, _, _ in planes]
    return (out[0] if len(out) == 1 else torch.cat(out, dim=1)).contiguous()


def unpack_counters(packed: torch.Tensor, in_features: int, bits: int, dtype: torch.dtype = torch.int16) -> torch.Tensor:
    """Decode ``C_packed`` -> ``[rows, in_features]`` unsigned counter values (``dtype``)."""
    planes = counter_planes(in_features, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise TypeError(f"unpack_counters: C_packed must be a 2-D uint8 tensor, got {packed.dtype} "
                        f"{tuple(packed.shape)}")
    need = sum(n for _, _, _, n in planes)
    if packed.shape[1] != need:
        raise ValueError(f"unpack_counters: C_packed has {packed.shape[1]} bytes per row, in_features={in_features} "
                         f"with {bits}-bit counters needs {need}")
    vals = None
    for b, shift, col, n in planes:
        v = _unpack_plane(packed[:, col:col + n], in_features, b).to(dtype)
        vals = v if vals is None else vals | (v << shift)
    return vals


def counter_padding_ok(packed: torch.Tensor, in_features: int, bits: int) -> bool:
    """True when every padding counter after ``in_features`` (in every plane) is 0 (a host sync)."""
    for b, _, col, n in counter_planes(in_features, bits):
        tail = in_features % (8 // b)
        if tail and packed.shape[0] and bool((packed[:, col + n - 1] >> (tail * b)).any()):
            return False
    return True


def check_group_size(in_features: int, group_size: int) -> None:
    """Raise ``ValueError`` unless ``group_size`` is a power of two >= 4 dividing ``in_features`` (module doc)."""
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 4 or group_size & (group_size - 1):
        raise ValueError(f"group_size must be a power of two >= 4, got {group_size!r}")
    if not isinstance(in_features, int) or isinstance(in_features, bool) or in_features <= 0:
        raise ValueError(f"in_features must be a positive int, got {in_features!r}")
    if in_features % group_size:
        hint = math.gcd(in_features, 1 << 12)
        fix = f"e.g. group_size={hint}" if hint >= 4 else "in_features is not a multiple of 4: pad the features"
        raise ValueError(f"in_features={in_features} is not a multiple of group_size={group_size}; pick a group_size "
                         f"dividing it ({fix})")


def tc_tiles_ok(out_features: int, in_features: int, group_size: int) -> bool:
    """Whether a ``[out_features, in_features]`` layer with groups of ``group_size`` has a ``tc`` layout: whole
    blocks of 16 features and chunks of 256 columns, groups of 64, 128 or 256 (module doc)."""
    return out_features > 0 and out_features % 16 == 0 and in_features % 256 == 0 and group_size in (64, 128, 256)


def packed_out_features(T_packed: torch.Tensor) -> int:
    """Output features of a frozen layer's ``T_packed`` in either layout: its rows (2-D), or 16 a block of the ``tc``
    layout (5-D ``T_tiles``)."""
    return T_packed.shape[0] * (16 if T_packed.dim() == 5 else 1)


def tc_tiles_shapes(out_features: int, in_features: int, group_size: int) -> tuple[tuple, tuple]:
    """Shapes of ``(T_tiles, S_tiles)`` for a ``[out_features, in_features]`` layer (module doc)."""
    return (out_features // 16, in_features // 256, 2, 32, 16), (out_features // 16, in_features // 256, 2, 8,
                                                                  256 // group_size)


def _check_tc(name: str, out_features: int, in_features: int, group_size: int) -> None:
    if not tc_tiles_ok(out_features, in_features, group_size):
        raise ValueError(f"{name}: the tc layout needs out_features % 16 == 0, in_features % 256 == 0 and group_size "
                         f"64, 128 or 256, got out_features={out_features}, in_features={in_features}, "
                         f"group_size={group_size}")


def tc_tiles(T_packed: torch.Tensor, S: torch.Tensor, in_features: int, group_size: int) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """``(T_tiles, S_tiles)``: ``T_packed [N, in_features / 4]`` (uint8) and ``S [N, G]`` (float32) in the ``tc``
    layout (module doc), new tensors on their device."""
    N = T_packed.shape[0]
    _check_tc("tc_tiles", N, in_features, group_size)
    if tuple(T_packed.shape) != packed_shape(N, in_features) or tuple(S.shape) != (N, in_features // group_size):
        raise ValueError(f"tc_tiles: T_packed {tuple(T_packed.shape)} and S {tuple(S.shape)} are not a [{N}, "
                         f"{in_features}] layer's at group_size {group_size}")
    nb, C, ngc = N // 16, in_features // 256, 256 // group_size
    words = T_packed.contiguous().view(torch.int32).view(nb, 2, 8, C, 4, 4)         # [b, h, g, c, q, tq]
    tiles = words.permute(0, 3, 1, 2, 5, 4).contiguous()                              # [b, c, h, g, tq, q]
    scales = S.to(torch.float32).reshape(nb, 2, 8, C, ngc).permute(0, 3, 1, 2, 4)     # [b, c, h, g, i]
    return tiles.view(torch.uint8).view(nb, C, 2, 32, 16), scales.contiguous()


def tc_rows(T_tiles: torch.Tensor, S_tiles: torch.Tensor, in_features: int, group_size: int) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
    """``tc_tiles``'s inverse: ``(T_packed [N, in_features / 4], S [N, G])`` with ``N = 16 * T_tiles.shape[0]``,
    bit for bit."""
    N = packed_out_features(T_tiles) if T_tiles.dim() == 5 else 0
    _check_tc("tc_rows", N, in_features, group_size)
    want_t, want_s = tc_tiles_shapes(N, in_features, group_size)
    if tuple(T_tiles.shape) != want_t or tuple(S_tiles.shape) != want_s:
        raise ValueError(f"tc_rows: T_tiles {tuple(T_tiles.shape)} and S_tiles {tuple(S_tiles.shape)} are not a "
                         f"[{N}, {in_features}] layer's tc layout {want_t}, {want_s}")
    nb, C = want_t[0], want_t[1]
    words = T_tiles.contiguous().view(torch.int32).view(nb, C, 2, 8, 4, 4).permute(0, 2, 3, 1, 5, 4)
    S = S_tiles.permute(0, 2, 3, 1, 4).reshape(N, in_features // group_size)
    return words.reshape(N, in_features // 16).contiguous().view(torch.uint8), S.contiguous()
