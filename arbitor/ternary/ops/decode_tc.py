"""The tensor-core decode GEMV of a frozen ternary layer: ``y [M, N] = x [M, K] @ (T * S).T`` for ``M = 1..16``
rows of 16-bit ``x``, straight from ``T_packed`` (read as int32 words) and a float32 ``S [N, K // group_size]``.

Why: the CUDA-core GEMV (``decode_triton.decode_gemv_kernel``) spends 4.2 sm_90 instructions a weight (a byte
permute, an FMA, the word decode, Triton's layout exchanges) and is bound by instruction issue. Here a warp
multiplies with ``mma.sync.m16n8k16``: the weights are its ``A`` operand, built in registers by two ``prmt.b32``
table lookups per four weights, and ``x`` its ``B`` operand (the tokens are its 8 columns; a second mma serves
tokens 8-15), so a weight costs 1.84 instructions (``benchmarks/gemv_sass.py --kernel tc``) and the tensor cores
do the sums.

Fragment mapping (PTX ISA, ``mma.m16n8k16`` with 16-bit inputs; lane ``l`` of a warp, ``g = l // 4``,
``tq = l % 4``). A warp owns ``R`` blocks of 16 output features; a K step is a *quad* of 64 columns, the 4 int32
words of each feature's row, word ``tq`` read by lane ``tq``:

* ``A[m][k]`` (``m < 16`` features of the block, ``k < 16``): lane ``(g, tq)`` holds ``A[g][2tq, 2tq+1]``,
  ``A[g+8][2tq, 2tq+1]``, ``A[g][2tq+8, 2tq+9]``, ``A[g+8][2tq+8, 2tq+9]``: the weights of features ``g`` and
  ``g + 8`` from the lane's word of each. For the quad's mma ``j`` (``j < 4``) logical ``k = 2tq, 2tq+1`` are the
  word's columns ``j, 4+j`` and ``k = 2tq+8, 2tq+9`` its columns ``8+j, 12+j`` (column ``16tq + c`` of the quad):
  the 2-bit codes at bits ``2j`` of each byte. ``sel = (word << (4 - 2j)) & 0x30303030`` puts them in nibbles 1,
  3, 5, 7; ``prmt`` of ``TABLE`` (code 0: 0x00, 1: 0x40, 2: 0xC0, the invalid 3: 0x00) with ``sel`` and
  ``sel >> 16`` gives the 16-bit floats ``+2 / -2 / 0`` (0x4000 / 0xC000 / 0, the same bits in bf16 and fp16) of
  two weights each. The factor 2 keeps every low byte 0; the result is halved once at the end (exact).
* ``B[k][n]`` (``n < 8`` tokens): lane ``(g, tq)`` holds ``B[2tq, 2tq+1][g]`` and ``B[2tq+8, 2tq+9][g]``: token
  ``g`` of ``x`` at the same columns, from the lane's 16 columns ``16tq .. 16tq+15`` of the quad (two 16-byte
  loads, one ``prmt`` per register; shared by the warp's ``R`` blocks).
* ``D[m][n]``: lane ``(g, tq)`` holds ``D[g][2tq, 2tq+1]`` and ``D[g+8][2tq, 2tq+1]``: features ``g``, ``g + 8``
  of the block for tokens ``2tq``, ``2tq + 1``. The quads of one scale group chain through ``C``; at the group's
  end each value is multiplied by its feature's group scale and added to the lane's fp32 accumulators (at one
  token only ``D[.][0]`` is kept: two accumulators a block).

Rows past ``N`` (features) and ``M`` (tokens) are clamped to the last one instead of masked: their sums land in
outputs that are never stored, so no load is predicated. Each program is ``NUM_WARPS`` warps x ``R`` blocks and
a K range of whole 256-column chunks (four quads; the next chunk's words, scales and x are loaded while the
current one is multiplied, into registers or, with ``RING``, the words and scales into a shared-memory ring that
each thread fills and reads for itself through ``cp.async``); K is split as in the other decode kernels
(``triton_common.split_len``; partials summed in split order by the tile's last program). The whole K loop is
one inline-PTX block per thread (``tc_gemv_asm``), so Triton places nothing between the lanes and their fragments;
``tests/ternary/ops/test_decode_tc.py`` runs that PTX for a whole warp in a small interpreter on the CPU, and
under ``TRITON_INTERPRET`` the kernel computes the same sums with plain loads (``_plain_sums``).

Launch (sm_90+, ``TcTile.PDL``): a programmatic dependent of the kernel before it -- the launch and the
program's set-up overlap that kernel's end, the PTX waits for it before its first load, and the next kernel may
launch once the K loop is done (``decode_tc_kernel``), or, in the ``tc`` layout at one row
(``TcTile.EARLY_TRIGGER``), right after the wait. A decode step is a chain of ~230 short kernels, so their
launches were a large share of it: the ``3b`` step at batch 1 went from 812-815 to 890-892 tokens/s on the H200
with this and Inductor's own dependent launches (``model/decode.py``;
``benchmarks/results/inference/h200-decode-pdl-plain/``).

Layouts: the row layout (``T_packed [N, K / 4]`` uint8, ``S [N, G]``), or the frozen layer's ``tc`` layout
(``format.tc_tiles``, 5-D: ``TcTile.TILED``), the same words and scales in the order the lanes read them. There a
lane's four words of a feature's chunk are one 16-byte unit and a warp's units one 512-byte run, so a chunk is 4
contiguous warp loads instead of 10 that each touch 8 rows; the registers get the same values, so under the same
launch the outputs are the same bits. On the H200 the GEMV at one row took 3-24 % less time from it, and the ``3b``
step at batch 1 went from 892 to 938 tokens/s (``benchmarks/results/inference/h200-tc-layout/``).

Needs: 16-bit ``x`` with unit column stride and 16-byte aligned rows, ``group_size`` in {64, 128, 256}, ``K``
a multiple of 256 (``tc_ok``). Deterministic (fixed mma order, fixed split order).
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from ..format import packed_out_features
from .triton_common import INTERPRETED, last_to_arrive, n_sm, pdl_ok, reset_arrivals, split_buffers, split_len

__all__ = ["tc_gemv_asm", "tc_loop_chunks", "decode_tc_kernel", "tc_ok", "tc_forward", "tc_tile", "tc_tokens",
           "TcTile", "TC_TILES", "TC_TILE_SHORT_K", "TC_TILE_ONE_WAVE", "TC_TILES_TILED", "TC_TILED_ONE_WAVE", "TABLE"]

#: ``prmt`` table: byte ``c`` = the high byte of the 16-bit float ``2 * t`` of code ``c`` (0: 0, 1: +2, 2: -2, 3: 0)
TABLE = 0x00C04000
class TcTile(NamedTuple):
    """A launch of ``decode_tc_kernel``; its fields are the keys of ``tc_forward``'s ``config``."""
    R: int                      #: blocks of 16 output features a warp
    num_warps: int              #: warps a program
    PROGRAMS_PER_SM: int        #: the split-K target: programs a multiprocessor
    X_AHEAD: bool               #: x loaded a chunk ahead (``tc_gemv_asm``'s ``x_ahead``; only with ``AHEAD == 1``)
    AHEAD: int                  #: chunks of weights in flight beyond the current one
    WARP_SPLIT: bool            #: the warps of a program share its features and split its K range
    GROUP_COLUMNS: bool = False  #: one row: a lane's 64 contiguous columns, the groups apart in the mma's columns
    L2_PREFETCH: int = 0        #: bytes L2 fetches around each weight load (0, 64, 128, 256)
    RING: int = 0               #: slots of the shared-memory ring of words and scales (``tc_gemv_asm``'s ``ring``)
    PDL: bool = True            #: launched as a programmatic dependent (``tc_forward`` keeps it where ``pdl_ok``)
    TILED: bool = False         #: the weights in the ``tc`` layout (``format.tc_tiles``): set from the layer's layout
    EARLY_TRIGGER: bool = False  #: with ``PDL``: the next kernel may launch right after the wait, not after the K loop

    @property
    def ring_bytes(self) -> int:
        """Static shared memory of the launch's ring (``ring_bytes``; 0 without one)."""
        return ring_bytes(self.RING, self.R, 32 * self.num_warps)

    def asm(self, group_size: int, tokens: int, f16: bool) -> str:
        """The launch's K-loop PTX: ``tc_gemv_asm`` with this tile's fields."""
        return tc_gemv_asm(self.R, group_size, tokens, f16, self.X_AHEAD, self.AHEAD, self.GROUP_COLUMNS,
                           self.L2_PREFETCH, self.RING, 32 * self.num_warps, self.PDL, self.TILED,
                           self.EARLY_TRIGGER)


#: by token count (1, up to 8, up to 16). From the H200 sweeps in ``benchmarks/results/inference``:
#: ``h200-sweep-tc.md`` (45 configs x 12 shapes; no config with 2 blocks a warp or 2 chunks of weights in flight
#: (``AHEAD``) was best at one row) and ``h200-sweep-tc-warpsplit.md`` (one run): at 1 and 4 rows, 1 block x 4
#: warps x 2 per SM with ``WARP_SPLIT`` took 9.3 / 6.4 / 12.2 / 9.9 us (one row; K, N = 3072, 12288 / 4096² /
#: 8192² / 12288, 3072) against 9.3 / 6.9 / 13.8 / 11.3 without, and 41.8 us over the four shapes at 4 rows
#: against 44.0; at 16 rows the tile without it (2 warps) is faster at two shapes of four and in total.
#: ``L2_PREFETCH`` (``h200-sweep-tc-prefetch.md``, the default tiles with each in one run): 256 at 16 rows, 62.2 us
#: over the four shapes against 65.0 without; at 1 and 4 rows none was faster than 0.
TC_TILES = {1: TcTile(1, 4, 2, True, 1, True), 8: TcTile(1, 4, 2, True, 1, True),
            16: TcTile(1, 2, 2, True, 1, False, L2_PREFETCH=256)}
#: one row and ``K <= 3072`` (the ``3b`` preset's q/k/v/gate, o and up projections): 2 warps with
#: ``GROUP_COLUMNS``, 8.2 us against 9.3 for ``TC_TILES[1]`` at K, N = 3072, 12288 in one H200 sweep
#: (``h200-sweep-tc-groupcols.md``). Not for longer rows: there its 144 registers a thread (128 without) leave
#: fewer warps a SM, and at K = 8192 it took 14.0-14.9 us against 12.3 (ncu: L1 throughput 42 % against 79 %,
#: achieved occupancy 15 % against 23 %; ``h200-ncu-tc.md``).
TC_TILE_SHORT_K = (3072, TcTile(1, 2, 2, True, 1, True, GROUP_COLUMNS=True))
#: one row of at most 4096 columns into one to two tiles of 16 features a multiprocessor (``N`` = 2097-4208 on an
#: H200's 132): the tiles above, at 2 programs a SM, split K in two there, and the split's sum across programs (a
#: global store, an atomic, a read of the other half) costs more than the parallelism gains. One program a SM of 4
#: warps sharing its features (``WARP_SPLIT``: their sums added in the program), no K split: 4.42 us against 5.75
#: (``TC_TILES[1]``) and 5.80 (``TC_TILE_SHORT_K``) at K = N = 3072, the ``3b`` preset's o projection
#: (``h200-one-wave/``); 5.92 against 6.44 at 4096² (``h200-sweep-tc-warpsplit.md``, where 8 warps took 5.57
#: but 6.47 at 3072²). At 6144 x 3072 it took 7.18 against 6.89, so longer rows keep ``TC_TILES[1]``. Its lanes read
#: 64 contiguous columns (``GROUP_COLUMNS``) through a 2-slot shared-memory ring (``RING``, x a chunk ahead in
#: registers): 4.61 against 4.97 us at 3072², 5.61 against 5.94 at 4096², in one sweep (``h200-tc-ring/``; the
#: register tile took 4.42 us at 3072² in the earlier sweep's call, so calls differ by up to 10 % at this size; in
#: the GEMV rows, consecutive calls, 5.0 -> 4.6 us and 6.0 -> 5.5). Deeper rings were no faster; at the other four
#: shapes the ring was 2-5 % slower than their tiles, or (6144 x 3072) even.
TC_TILE_ONE_WAVE = (4096, TcTile(1, 4, 1, True, 1, True, GROUP_COLUMNS=True, RING=2))


#: the ``tc`` layout's launches (``format.tc_tiles``: a warp's loads are contiguous already, so no
#: ``GROUP_COLUMNS``). From one H200 sweep of 22 launches at one row and 10 at 4 and 16 rows over the six shapes of
#: ``bench_decode.py``'s GEMV rows (``benchmarks/results/inference/h200-tc-layout/call1``): the row layout's tiles
#: are within 3 % of the sweep's best at one row where the features fill more than two waves of 16-feature tiles
#: (8192², 3072 x 12288), within 1-4 % at 4 rows and 1-20 % at 16; no launch of the sweep was faster at every
#: shape of a row count (nor 2 or 4 blocks a warp at one row, ``call6``). At one row they let the next kernel
#: launch right after their wait (``EARLY_TRIGGER``): in one H200 process the ``3b`` step at batch 1 took 1,036
#: tokens/s with it against 1,001 without, the decode attention after the q/k/v/gate projection reading its settled
#: cache meanwhile (``model/decode_attention.py``; before that attention, the trigger alone took 940 against 946,
#: and in the GEMV harness's chain of one layer it is 0-2 % slower: ``benchmarks/results/inference/h200-early-reads``)
TC_TILES_TILED = {k: t._replace(TILED=True, EARLY_TRIGGER=k == 1) for k, t in TC_TILES.items()}
#: one row into one to two waves of 16-feature tiles (``tc_tile``): one program a tile, no K split, its warps
#: sharing the features (``WARP_SPLIT``); 4 warps up to ``[0]`` columns (3.71 us at 3072², 4.40 at 4096²), 8 above
#: (5.13 us at 6144 x 3072 against 5.35 with 4; 8.26 at 12288 x 3072 against 9.05 for ``TC_TILES_TILED[1]``); the
#: early trigger as ``TC_TILES_TILED[1]``
TC_TILED_ONE_WAVE = (4096, TcTile(1, 4, 1, True, 1, True, TILED=True, EARLY_TRIGGER=True),
                     TcTile(1, 8, 1, True, 1, True, TILED=True, EARLY_TRIGGER=True))


def tc_tokens(M: int) -> int:
    """The PTX's token count for ``M`` rows of x: 1, 8 (2-8 rows) or 16 (9-16 rows)."""
    return 1 if M == 1 else 8 if M <= 8 else 16


def tc_tile(M: int, in_features: int, config: Optional[dict] = None, out_features: int = 0,
            sms: int = 0, tiled: bool = False) -> TcTile:
    """The launch of a call with ``M`` rows of ``in_features`` columns into ``out_features`` features on ``sms``
    multiprocessors. ``tiled`` (the ``tc`` layout): ``TC_TILED_ONE_WAVE`` for one row into ``[sms, 2 * sms)`` tiles
    of 16 features, else ``TC_TILES_TILED`` by token count. The row layout: ``TC_TILE_ONE_WAVE`` for one row of at
    most ``TC_TILE_ONE_WAVE[0]`` columns into ``[sms, 2 * sms)`` tiles of 16 features, else ``TC_TILE_SHORT_K`` for
    one short row, else ``TC_TILES`` by token count. Either with ``config``'s keys (``TcTile``'s fields) overriding
    (``TILED`` only as the layout has it); ``X_AHEAD`` only with ``AHEAD == 1``; a default ``RING`` that does not fit
    the config's ``R`` and warps is dropped (one the config names is checked). One-line ``ValueError`` for an unknown
    key or a value the kernel does not take."""
    one_wave = sms > 0 and sms <= triton.cdiv(out_features, 16) < 2 * sms
    if tiled:
        base = (TC_TILED_ONE_WAVE[1 if in_features <= TC_TILED_ONE_WAVE[0] else 2] if M == 1 and one_wave
                else TC_TILES_TILED[tc_tokens(M)])
    else:
        base = (TC_TILE_ONE_WAVE[1] if M == 1 and in_features <= TC_TILE_ONE_WAVE[0] and one_wave
                else TC_TILE_SHORT_K[1] if M == 1 and in_features <= TC_TILE_SHORT_K[0] else TC_TILES[tc_tokens(M)])
    if not config:          # the defaults are valid launches (checked in tests)
        return base
    unknown = sorted(set(config) - set(TcTile._fields))
    if unknown:
        raise ValueError(f"unknown tc decode config keys {unknown}")
    if bool(config.get("TILED", tiled)) != tiled:
        layout = "tc" if tiled else "rows"
        raise ValueError(f"tc decode config TILED={config['TILED']} is not this layer's layout ({layout}); it follows "
                         "the weights (format.tc_tiles), not a launch option")
    tile = base._replace(**{k: type(getattr(base, k))(v) for k, v in config.items()})
    tile = tile._replace(X_AHEAD=tile.X_AHEAD and tile.AHEAD == 1)
    if "RING" not in config and tile.ring_bytes > RING_MAX_BYTES:
        tile = tile._replace(RING=0)        # the default tile's ring does not fit the config's R and warps
    if tile.GROUP_COLUMNS and tile.TILED:
        raise ValueError("tc decode config GROUP_COLUMNS reads the row layout; this layer is in the tc layout")
    if tile.GROUP_COLUMNS and M != 1:
        raise ValueError(f"tc decode config GROUP_COLUMNS needs one row of x, got {M}")
    if tile.L2_PREFETCH not in (0, 64, 128, 256):
        raise ValueError(f"bad tc decode config: L2_PREFETCH must be 0, 64, 128 or 256, got {tile.L2_PREFETCH}")
    if tile.RING and not (2 <= tile.RING <= 8 and tile.ring_bytes <= RING_MAX_BYTES):
        raise ValueError(f"bad tc decode config: RING must be 0 or 2-8 slots of at most {RING_MAX_BYTES} bytes in all, "
                         f"got {tile.RING} ({tile.ring_bytes} bytes at R {tile.R}, {tile.num_warps} warps)")
    if tile.R not in (1, 2, 4) or tile.num_warps not in (1, 2, 4, 8):
        raise ValueError(f"bad tc decode config: R must be 1, 2 or 4 and num_warps 1, 2, 4 or 8, got {tile.R}, "
                         f"{tile.num_warps}")
    return tile


def _accs(tokens: int) -> int:
    """fp32 accumulators a block of 16 features for ``tokens`` rows (``D`` values a lane keeps)."""
    return {1: 2, 8: 4, 16: 8}[tokens]


def _ops(name: str, fmt: str) -> str:
    return f"{name}.sync.aligned.m16n8k16.row.col.f32.{fmt}.{fmt}.f32"


def tc_loop_chunks(ahead: int, x_ahead: bool, ring: int = 0) -> int:
    """Chunks in one trip of ``tc_gemv_asm``'s unrolled K loop: one a register set (``ahead + 1``) or, with
    ``ring``, one a slot -- twice as many when x rides a chunk ahead in two sets and ``ring`` is odd."""
    if not ring:
        return ahead + 1
    return ring if ring % 2 == 0 or not x_ahead else 2 * ring


@lru_cache(maxsize=None)
def tc_gemv_asm(R: int, group_size: int, tokens: int, f16: bool, x_ahead: bool = True, ahead: int = 1,
                group_columns: bool = False, l2_prefetch: int = 0, ring: int = 0, threads: int = 128,
                pdl: bool = False, tiled: bool = False, early_trigger: bool = False) -> str:
    """The per-thread PTX of ``decode_tc_kernel``'s K loop for ``tokens`` rows of x (1: one; 8: up to 8; 16: up
    to 16, a second mma per weight fragment). Operands: ``$0 .. $(NA*R-1)`` the fp32 accumulators (out;
    ``NA = (2, 4, 8)[tokens]``: block ``r``'s ``D`` values of features ``g`` / ``g + 8`` and the lane's tokens),
    then ``2R`` pointers to the lane's words of features ``g`` and ``g + 8`` of each block at the first quad,
    ``2R`` pointers to those features' scales at the first chunk's first group, ``xp`` / ``xp2`` (x tokens ``g``
    and ``g + 8`` at the lane's columns), ``nc`` (256-column chunks to do) and ``tbl`` (a pointer to ``TABLE`` in
    device memory: loaded once, it stays in a register; ptxas re-materialised a constant operand before every
    ``prmt``). Loads are predicated only on whether there is a next chunk: the caller
    clamps rows past ``N`` / ``M`` to the last one (their sums land in outputs that are never stored) and a split
    holds whole chunks. The next chunk's loads are in flight while the current one is computed (the first form,
    without it, streamed 0.7-1.3 TB/s at one row on the H200 against 0.8-1.5 now: ``h200-sweep-tc-first.md``,
    ``h200-sweep-tc.md`` in ``benchmarks/results/inference``); ``x_ahead=False``
    loads x (a few KB, from L1/L2) at the start of each chunk's compute instead, with half the registers.
    ``ahead``: chunks of words and scales in flight beyond the current one (x is then loaded at each chunk's
    compute: ``x_ahead`` needs ``ahead == 1``).

    ``group_columns`` (one token only): the mma's unused token columns carry the scale groups apart, so that a lane
    can read 64 contiguous columns of a feature at once. Lane ``(g, tq)`` reads the chunk's words ``4tq .. 4tq+3``
    of each of its features (one 16-byte load, not four 4-byte loads that each use half of a 32-byte sector);
    its ``k`` slots of step ``s`` are word ``4tq + s`` (column ``64tq + 16s + c``: scale group ``64tq // gs`` of
    the chunk). ``B``'s column ``n`` holds x only where lane ``tq = n`` supplies ``k`` slots (lane ``(g, tq)`` loads
    x when ``g == tq``, operand ``xok``; every other lane's x registers stay 0), so ``D[f][n]`` is column group
    ``n``'s partial sum of feature ``f``, scaled by that group's scale (lanes ``tq = 0, 1`` hold columns 0-3) and
    summed over the four lanes of the feature at the end (``shfl.bfly``, fixed order). The lane's scale pointers
    are at its first column group (``group_size`` 64: the pair of groups ``2tq, 2tq + 1`` of the chunk, ``(tq % 2)``
    pairs in; 128: group ``tq % 2``; 256: the chunk's group) and its x pointer at column ``64 tq``.

    ``l2_prefetch`` (0, 64, 128 or 256): the weight and scale loads ask L2 to fetch that many bytes around each
    (``ld``'s ``.L2::<n>B``): a feature row's 64 bytes a chunk are 256-byte aligned in fours, so one DRAM trip
    brings the next three chunks' words into L2 with no instruction or register more.

    ``ring`` (2 or more): the chunks' words and scales go through a ring of ``ring`` slots in
    shared memory (a static array of the block, ``ring_bytes``), ``ring - 1`` chunks ahead, by ``cp.async``: each
    thread copies only its own words and scales into its own 16-byte units of a slot (unit ``u`` of slot ``s`` at
    ``(s * 4R + u) * threads * 16 + 16 * tid``: a warp's units are 512 contiguous bytes) and reads them back itself,
    so no barrier is needed, only the thread's own ``cp.async.wait_group``. Registers hold one chunk, the ring the
    rest; with ``x_ahead`` x stays in registers, a chunk ahead (two sets, the loop unrolled to an even number of
    copies). ``threads``: the block's threads (``num_warps * 32``).

    ``pdl`` (a launch as a programmatic dependent, ``decode_tc_kernel``'s ``PDL``): the block starts with
    ``griddepcontrol.wait`` -- the kernel may start while the one before it in the stream still runs, and nothing
    is loaded before that kernel has finished and its writes are visible -- and every load is a plain
    ``ld.global``, not ``ld.global.nc``: the non-coherent path assumes data that no kernel writes while this one
    runs, which a dependent launch breaks (on the H200 x read through it was stale: the ``3b`` step's greedy tokens
    left the plain step's after 2 tokens). The weights and scales are read plainly too, in case the kernel before
    wrote them in place; that cost nothing measurable (``benchmarks/results/inference/h200-decode-pdl-plain/``).
    ``early_trigger`` (with ``pdl``): ``griddepcontrol.launch_dependents`` right after the wait, so that the next
    kernel may launch while this one's K loop runs (``decode_tc_kernel``'s ``EARLY_TRIGGER``); without ``pdl`` it
    adds nothing.

    ``tiled`` (the frozen layer's ``tc`` layout, ``format.tc_tiles``): the word pointer of block ``r``'s feature
    ``g + 8h`` points at the lane's 16-byte unit of the chunk -- its word of each of the chunk's four quads, in the
    registers that the row layout's four 4-byte loads fill -- and a warp's 32 units of one ``h`` are 512 contiguous
    bytes, a block's chunk 1 KB; the scale pointer at the row's ``256 / group_size`` scales of the chunk, the 8
    rows of one ``h`` contiguous. A warp then reads a chunk's words in two fully used 512-byte loads, not eight loads
    of 8 half-used sectors each, and its scales in two 128-byte loads (group 64), not two of 8 sectors."""
    if ahead not in (1, 2, 3) or (x_ahead and ahead != 1):
        raise ValueError(f"tc_gemv_asm: ahead must be 1, 2 or 3 (x_ahead only with 1), got {ahead}, {x_ahead}")
    sets = ahead + 1
    if group_size not in (64, 128, 256):
        raise ValueError(f"tc_gemv_asm: group_size must be 64, 128 or 256, got {group_size}")
    if tokens not in (1, 8, 16):
        raise ValueError(f"tc_gemv_asm: tokens must be 1, 8 or 16, got {tokens}")
    if group_columns and tokens != 1:
        raise ValueError(f"tc_gemv_asm: group_columns needs tokens == 1, got {tokens}")
    if tiled and group_columns:
        raise ValueError("tc_gemv_asm: tiled (the tc layout) and group_columns exclude each other")
    if l2_prefetch not in (0, 64, 128, 256):
        raise ValueError(f"tc_gemv_asm: l2_prefetch must be 0, 64, 128 or 256, got {l2_prefetch}")
    if ring and ring < 2:
        raise ValueError(f"tc_gemv_asm: ring must be 0 or >= 2 slots, got {ring}")
    if ring:
        sets, ahead = 1, ring - 1
    pf = f".L2::{l2_prefetch}B" if l2_prefetch else ""
    ld = "ld.global" if pdl else "ld.global.nc"       # coherent loads under a dependent launch (docstring)
    gc = group_columns
    qg = group_size // 64                      # quads a group
    ngc = 4 // qg                              # groups a 256-column chunk
    ns = (2 if ngc == 4 else 1) if gc else ngc  # scales a row a chunk the lane reads (gc: its columns' groups)
    na = _accs(tokens)                         # accumulators a block
    o = na * R                                 # first input operand
    wps = [f"${o + k}" for k in range(2 * R)]
    sps = [f"${o + 2 * R + k}" for k in range(2 * R)]
    xp, xp2, nc, tbl, xok = (f"${o + 4 * R + i}" for i in range(5))
    fmt = "f16" if f16 else "bf16"
    xsets = (("txa", "txp"), ("txb", "txp2")) if tokens == 16 else (("txa", "txp"),)
    L = ["{",
         ".reg .pred tpd, tpn, tpg, tpx;", ".reg .f32 tred;", ".reg .b32 tsb, ttid;",
         f".reg .b32 ttb, tn, tsel, tselh, tsh, tw<{8 * R * sets}>, txa<64>, txb<64>, ta<4>, tba<8>, tbb<8>;",
         f".reg .f32 tfz, td<{max(8 * ngc, 16) * R}>, ts<{8 * R * sets}>;",
         f".reg .b64 twp<{2 * R}>, tsp<{2 * R}>, txp, txp2;",
         *(["griddepcontrol.wait;"] if pdl else []),
         *(["griddepcontrol.launch_dependents;"] if pdl and early_trigger else []),
         "mov.f32 tfz, 0f00000000;", f"mov.b32 tn, {nc};", f"{ld}.b32 ttb, [{tbl}];",
         f"mov.b64 txp, {xp};", f"mov.b64 txp2, {xp2};"]
    L += [f"mov.b64 twp{k}, {p};" for k, p in enumerate(wps)] + [f"mov.b64 tsp{k}, {p};" for k, p in enumerate(sps)]
    L += [f"mov.f32 ${k}, 0f00000000;" for k in range(na * R)]
    if gc:       # lanes with g != tq never load x: their B registers stay 0
        L += [f"setp.ne.s32 tpg, {xok}, 0;"] + [f"mov.b32 txa{i}, 0;" for i in range(64)]
    units = 4 * R                              # a slot's 16-byte units a thread: words then scales of each row
    if ring:     # the thread's first unit: the block's ring + 16 * tid
        L = L[:1] + [f".shared .align 16 .b8 tring${{:uid}}[{ring_bytes(ring, R, threads)}];"] + L[1:]
        L += ["mov.u32 tsb, tring${:uid};", "mov.u32 ttid, %tid.x;", "mad.lo.u32 tsb, ttid, 16, tsb;"]

    def unit(slot: int, u: int, byte: int = 0) -> str:
        return f"[tsb+{(slot * units + u) * threads * 16 + byte}]"

    def scale_load(op: str, k: int, b: int, addr: str) -> str:
        """``op`` (a load) of row ``k``'s ``ns`` scales into register set ``b``: one vector, or one float."""
        v = ", ".join(f"ts{8 * R * b + 4 * k + i}" for i in range(ns))
        return f"{op}.v{ns}.f32 {{{v}}}, {addr};" if ns > 1 else f"{op}.f32 {v}, {addr};"

    def advance() -> list[str]:
        """The word and scale pointers to the next chunk (tiled: the block's next 1 KB of words, 64 * ngc bytes
        of scales)."""
        return ([f"add.s64 twp{k}, twp{k}, {1024 if tiled else 64};" for k in range(2 * R)]
                + [f"add.s64 tsp{k}, tsp{k}, {64 * ngc if tiled else 4 * ngc};" for k in range(2 * R)])

    def ring_loads(slot: int, pred: str) -> list[str]:
        """A chunk's words and scales copied into ``slot`` (one ``cp.async`` group), the pointers advanced."""
        out = []
        for k in range(2 * R):
            if gc or tiled:
                out.append(f"{pred}cp.async.cg.shared.global{pf} {unit(slot, k)}, [twp{k}], 16;")
            else:
                out += [f"{pred}cp.async.ca.shared.global{pf} {unit(slot, k, 4 * q)}, [twp{k}+{16 * q}], 4;"
                        for q in range(4)]
        out += [f"{pred}cp.async.{'cg' if ns == 4 else 'ca'}.shared.global{pf} {unit(slot, 2 * R + k)}, "
                f"[tsp{k}], {4 * ns};" for k in range(2 * R)]
        return out + ["cp.async.commit_group;"] + advance()

    def ring_read(slot: int) -> list[str]:
        """Wait for ``slot``'s group (the ``ring - 1`` groups after it may still fly), then its words and scales into
        register set 0."""
        out = [f"cp.async.wait_group {ring - 1};"]
        for k in range(2 * R):
            out.append(f"ld.shared.v4.b32 {{{', '.join(f'tw{4 * k + q}' for q in range(4))}}}, {unit(slot, k)};")
        return out + [scale_load("ld.shared", k, 0, unit(slot, 2 * R + k)) for k in range(2 * R)]

    def loads(b: int, pred: str) -> list[str]:
        """A chunk's loads into register set ``b`` (words, x, the scales of its groups: one vector a row), then
        the pointers advance to the next chunk."""
        out = []
        for k in range(2 * R):
            w0 = 8 * R * b + 8 * (k // 2) + 4 * (k % 2)
            if gc or tiled:   # the lane's 4 contiguous words: one 16-byte load
                out.append(f"{pred}{ld}{pf}.v4.b32 {{{', '.join(f'tw{w0 + q}' for q in range(4))}}}, "
                           f"[twp{k}];")
            else:
                out += [f"{pred}{ld}{pf}.b32 tw{w0 + q}, [twp{k}+{16 * q}];" for q in range(4)]
        if x_ahead:
            out += xloads(b, pred)
        out += [scale_load(f"{pred}{ld}{pf}", k, b, f"[tsp{k}]") for k in range(2 * R)]
        return out + advance() + (xadvance() if x_ahead else [])

    def xloads(b: int, pred: str) -> list[str]:
        out = []
        if gc:       # only lanes with g == tq load x
            out, pred = (["and.pred tpx, tpn, tpg;"], "@tpx ") if pred else ([], "@tpg ")
        for q in range(4):
            for regs, xreg in xsets:
                for h in range(2):
                    v = ", ".join(f"{regs}{32 * b + 8 * q + 4 * h + i}" for i in range(4))
                    out.append(f"{pred}{ld}.v4.b32 {{{v}}}, [{xreg}+{(32 if gc else 128) * q + 16 * h}];")
        return out

    def xadvance() -> list[str]:
        return ["add.s64 txp, txp, 512;"] + (["add.s64 txp2, txp2, 512;"] if tokens == 16 else [])

    def compute(b: int, xb: Optional[int] = None) -> list[str]:
        """The chunk in register set ``b`` (x in set ``xb``, default ``b``): four quads of four mmas a block, scaled
        into the accumulators at each group's end."""
        xb = b if xb is None else xb
        out = [] if x_ahead else xloads(0, "") + xadvance()
        for q in range(4):
            gi, first, last = q // qg, q % qg == 0, q % qg == qg - 1
            # x as the B fragments of the quad's four mmas: (cols j, 4+j), (8+j, 12+j) of the lane's 16 columns
            for regs, bregs in (("txa", "tba"), ("txb", "tbb"))[:len(xsets)]:
                for j in range(4):
                    sel = "0x5410" if j % 2 == 0 else "0x7632"
                    x0 = (32 * xb if x_ahead else 0) + 8 * q
                    out += [f"prmt.b32 {bregs}{2 * j}, {regs}{x0 + j // 2}, {regs}{x0 + 2 + j // 2}, {sel};",
                            f"prmt.b32 {bregs}{2 * j + 1}, {regs}{x0 + 4 + j // 2}, {regs}{x0 + 6 + j // 2}, {sel};"]
            for r in range(R):
                for j in range(4):
                    shift = 4 - 2 * j
                    for h in range(2):                     # feature g (a0, a2) and feature g + 8 (a1, a3)
                        w = f"tw{8 * R * b + 8 * r + 4 * h + q}"
                        out.append(f"shl.b32 tsh, {w}, {shift};" if shift > 0 else
                                   f"mov.b32 tsh, {w};" if shift == 0 else f"shr.u32 tsh, {w}, {-shift};")
                        out += ["and.b32 tsel, tsh, 0x30303030;", "shr.u32 tselh, tsel, 16;",
                                f"prmt.b32 ta{h}, ttb, 0, tsel;", f"prmt.b32 ta{2 + h}, ttb, 0, tselh;"]
                    for t, bregs in enumerate(("tba", "tbb")[:len(xsets)]):
                        # one D a group of the chunk (gc: a step): independent mma chains, in flight together
                        d = ", ".join(f"td{16 * r + 4 * q + i}" if gc else f"td{8 * R * gi + 8 * r + 4 * t + i}"
                                      for i in range(4))
                        c = "tfz, tfz, tfz, tfz" if ((gc or first) and j == 0) else d
                        out.append(f"{_ops('mma', fmt)} {{{d}}}, {{ta0, ta1, ta2, ta3}}, "
                                   f"{{{bregs}{2 * j}, {bregs}{2 * j + 1}}}, {{{c}}};")
            if gc and q == 3:        # the chunk's 4 step chains summed, then each column by its group's scale
                for r in range(R):
                    t0 = 16 * r
                    for i in range(4):
                        out += [f"add.f32 td{t0 + i}, td{t0 + i}, td{t0 + 4 + i};",
                                f"add.f32 td{t0 + 8 + i}, td{t0 + 8 + i}, td{t0 + 12 + i};",
                                f"add.f32 td{t0 + i}, td{t0 + i}, td{t0 + 8 + i};"]
                    for h in range(2):          # feature g: D values 0, 1 (columns 2tq, 2tq+1); g + 8: 2, 3
                        s0 = 8 * R * b + 4 * (2 * r + h)
                        s1 = s0 + 1 if ngc == 4 else s0
                        out += [f"fma.rn.f32 ${na * r + h}, td{t0 + 2 * h}, ts{s0}, ${na * r + h};",
                                f"fma.rn.f32 ${na * r + h}, td{t0 + 2 * h + 1}, ts{s1}, ${na * r + h};"]
            elif last and not gc:
                for r in range(R):
                    sg, sg8 = f"ts{8 * R * b + 4 * (2 * r) + gi}", f"ts{8 * R * b + 4 * (2 * r + 1) + gi}"
                    # D of feature g: d0 (token 2tq), d1 (2tq + 1); of feature g + 8: d2, d3; tokens 8-15: d4..d7
                    pairs = [(0, sg), (2, sg8)] if tokens == 1 else [(i, sg if i % 4 < 2 else sg8) for i in range(na)]
                    for a, (i, sv) in enumerate(pairs):
                        out.append(f"fma.rn.f32 ${na * r + a}, td{8 * R * gi + 8 * r + i}, {sv}, ${na * r + a};")
        return out

    # software pipelined: the loads of the chunk ``ahead`` chunks on are issued before the current chunk is
    # computed (``ahead + 1`` register sets, the loop body unrolled once a set so that each keeps its names; with
    # ``ring``, ``ring`` slots of shared memory and one register set, the body unrolled once a slot)
    copies = tc_loop_chunks(ahead, x_ahead, ring)
    if ring and x_ahead:     # x of the first chunk into x set 0
        L += ["setp.gt.s32 tpn, tn, 0;"] + xloads(0, "@tpn ") + xadvance()
    for i in range(ahead):
        L += [f"setp.gt.s32 tpn, tn, {i};"] + (ring_loads(i, "@tpn ") if ring else loads(i, "@tpn "))
    L += ["TCLOOP${:uid}:"]
    for b in range(copies):
        L += ["setp.lt.s32 tpd, tn, 1;", "@tpd bra TCDONE${:uid};"]
        if ring and x_ahead:     # x of the next chunk into the other x set
            L += ["setp.gt.s32 tpn, tn, 1;"] + xloads((b + 1) % 2, "@tpn ") + xadvance()
        L += [f"setp.gt.s32 tpn, tn, {ahead};"]
        if ring:
            L += ring_loads((b + ahead) % ring, "@tpn ") + ring_read(b % ring) + compute(0, b % 2)
        else:
            L += loads((b + ahead) % sets, "@tpn ") + compute(b)
        L += ["sub.s32 tn, tn, 1;"]
    L += ["bra TCLOOP${:uid};", "TCDONE${:uid}:"]
    if gc:           # a feature's four lanes (tq = 0..3) hold its column groups' sums: add them, fixed order
        for k in range(na * R):
            for m in (1, 2):
                L += [f"shfl.sync.bfly.b32 tred, ${k}, {m}, 0x1f, 0xffffffff;", f"add.f32 ${k}, ${k}, tred;"]
    L += ["}"]
    return "\n".join(L)


def ring_bytes(ring: int, R: int, threads: int) -> int:
    """Shared memory of ``tc_gemv_asm``'s ring: ``ring`` slots of ``4R`` 16-byte units a thread."""
    return ring * 4 * R * 16 * threads


#: the most static shared memory a ring may take (the limit of a static array is 48 KB, and Triton's own buffers
#: of the program share the block's memory)
RING_MAX_BYTES = 40 * 1024


@lru_cache(maxsize=None)
def _constraints(R: int, tokens: int) -> str:
    return ",".join(["=f"] * (_accs(tokens) * R) + ["l"] * (4 * R + 2) + ["r", "l", "r"])


@triton.jit
def _plain_sums(w_ptr, x_ptr, s_ptr, n, xrow, xok, sok, KW, G, q_start, q_end, q_lo, q_hi, GS: tl.constexpr,
                TILED: tl.constexpr):
    """The interpreter's form of one accumulator: ``sum_k t[n, k] * x[m, k] * S[n, k // GS]`` over each thread's
    quads ``[q_lo, q_hi)`` (inside the program's ``[q_start, q_end)``), for each thread's ``(m, n)`` (``n`` the
    feature, int64; ``xrow`` x's row offset in elements; ``xok``/``sok`` masks), by plain loads -- what the PTX
    computes, in another order. ``TILED``: the weights and scales in the ``tc`` layout (``format.tc_tiles``)."""
    acc = tl.zeros(n.shape, dtype=tl.float32)
    part = tl.zeros(n.shape, dtype=tl.float32)
    c = tl.arange(0, 16)
    unit = (n // 16 * (KW // 16)) * 2 + (n % 16) // 8          # TILED: the unit of chunk 0, plus 2 a chunk
    for q in range(q_start, q_end):
        mine = (q >= q_lo) & (q < q_hi)
        for wi in tl.static_range(4):
            if TILED:
                at = ((unit + 2 * (q // 4)) * 32 + 4 * (n % 8) + wi) * 4 + q % 4
            else:
                at = n * KW + 4 * q + wi
            word = tl.load(w_ptr + at, mask=sok & mine, other=0).to(tl.uint32, bitcast=True)
            code = (word[:, None] >> (2 * c[None, :]).to(tl.uint32)) & 3                   # [threads, 16]
            t = tl.where(code == 1, 1.0, tl.where(code == 2, -1.0, 0.0))
            xv = tl.load(x_ptr + xrow[:, None] + 64 * q + 16 * wi + c[None, :], mask=xok[:, None], other=0.0)
            part += tl.sum(t * xv.to(tl.float32), axis=1)
        if (q + 1) % (GS // 64) == 0:
            if TILED:
                at = ((unit + 2 * (q // 4)) * 8 + n % 8) * (256 // GS) + (q % 4) // (GS // 64)
            else:
                at = n * G + (64 * q) // GS
            sv = tl.load(s_ptr + at, mask=sok & mine, other=0.0)
            acc += part * sv
            part = tl.zeros(n.shape, dtype=tl.float32)
    return acc


@triton.jit
def _coords(rb, g, tq, r: tl.constexpr, a: tl.constexpr, TOKENS: tl.constexpr):
    """``(m, n)`` of accumulator ``a`` of block ``r``: the mma ``D`` value ``i`` (``i = 2a`` with one token) is
    feature ``g`` (``i % 4 < 2``) or ``g + 8`` of the block, token ``2tq + i % 2 (+ 8 for i >= 4)``."""
    i: tl.constexpr = 2 * a if TOKENS == 1 else a
    return 2 * tq + (i % 2) + 8 * (i // 4), rb + 16 * r + g + 8 * ((i % 4) // 2)


@triton.jit
def decode_tc_kernel(x_ptr, w_ptr, s_ptr, y_ptr, ws_ptr, cnt_ptr, tbl_ptr, M, N, KW, G, stride_xm, SPLIT,
                     Q_PER_SPLIT, GS: tl.constexpr, R: tl.constexpr, TOKENS: tl.constexpr, NUM_WARPS: tl.constexpr,
                     WARP_SPLIT: tl.constexpr, GROUP_COLUMNS: tl.constexpr, ASM: tl.constexpr,
                     CONSTRAINTS: tl.constexpr, RELU_SQUARE: tl.constexpr, INTERP: tl.constexpr,
                     PDL: tl.constexpr = False, TILED: tl.constexpr = False, EARLY_TRIGGER: tl.constexpr = False):
    """Program axis 0: ``R`` blocks of 16 output features a warp (``NUM_WARPS * R`` blocks a program, or, with
    ``WARP_SPLIT``, the same ``R`` blocks for every warp, each warp taking a share of the program's K range and
    the warps' sums added in the program); axis 1: the quads ``[s * Q_PER_SPLIT, ...)`` of K (whole 256-column
    chunks). ``GROUP_COLUMNS`` (one row): the lanes' pointers for ``tc_gemv_asm(group_columns=True)``. One
    element a thread (``i = 32 * warp + lane``); ``w_ptr``: ``T_packed`` as int32 ``[N, KW]``; ``tbl_ptr``:
    ``TABLE`` (int32, one element).

    ``PDL`` (launched with ``launch_pdl``): the PTX waits for the kernel before it first of all
    (``tc_gemv_asm(pdl=True)``), and once its K loop is done the program lets the next kernel launch
    (``griddepcontrol.launch_dependents``; that kernel waits for this one to finish before it reads anything). A
    program triggers only after its own wait, so a kernel two launches on never starts before this one's
    predecessor has finished. ``EARLY_TRIGGER`` (the PTX's ``early_trigger``): the trigger comes right after the wait
    instead, still after it; the next kernel may then launch during the K loop, and a kernel that reads something
    this one does not write before its own wait (the decode attention's settled cache) has its loads in flight
    meanwhile.

    ``TILED``: ``w_ptr`` / ``s_ptr`` hold the ``tc`` layout (``format.tc_tiles``: ``[NB, C, 2, 32, 4]`` int32 words,
    ``[NB, C, 2, 8, 256 // GS]`` scales); each lane's pointers are its units of its blocks' first chunk."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    i = tl.arange(0, 32 * NUM_WARPS)
    lane = i % 32
    warp = i // 32
    g = lane // 4
    tq = lane % 4
    q_start = pid_s * Q_PER_SPLIT
    q_end = tl.minimum(KW // 4, q_start + Q_PER_SPLIT)
    if WARP_SPLIT:
        rb = pid_n * (16 * R) + 0 * i                                  # every warp: the program's blocks
        chunks = (q_end - q_start) // 4
        per = (chunks + NUM_WARPS - 1) // NUM_WARPS
        q_lo = q_start + 4 * tl.minimum(warp * per, chunks)            # the warp's share of the K range
        q_hi = q_start + 4 * tl.minimum(warp * per + per, chunks)
    else:
        rb = pid_n * (16 * R * NUM_WARPS) + warp * (16 * R)            # the warp's first feature
        q_lo = q_start + 0 * i
        q_hi = q_end + 0 * i
    NA: tl.constexpr = 2 if TOKENS == 1 else (4 if TOKENS == 8 else 8)
    if INTERP:
        accs = ()
        for r in tl.static_range(R):
            for a in tl.static_range(NA):
                m, n = _coords(rb, g, tq, r, a, TOKENS)
                accs = accs + (2.0 * _plain_sums(w_ptr, x_ptr, s_ptr, n.to(tl.int64), m.to(tl.int64) * stride_xm,
                                                 m < M, n < N, KW, G, q_start, q_end, q_lo, q_hi, GS, TILED),)
    else:
        # rows past N / M are clamped to the last one: no load is predicated, and their sums are never stored.
        # The lane's first word, scale and x column: word tq of each quad, the chunk's first group, columns
        # 16tq..; with GROUP_COLUMNS its 4 contiguous words 4tq.., its pair (group 64) or one (128) of the
        # chunk's groups, columns 64tq..
        WQ: tl.constexpr = 4 if GROUP_COLUMNS else 1
        SQ: tl.constexpr = (2 if GS == 64 else (1 if GS == 128 else 0)) if GROUP_COLUMNS else 0
        wps = ()     # the lane's word pointers (feature g, g + 8 of each block), then its scale pointers
        sps = ()
        for r in tl.static_range(R):
            for h in tl.static_range(2):
                if TILED:    # block b's unit (b, c, h, lane) of the first chunk c = q_lo / 4; blocks past N clamped
                    unit = (tl.minimum(rb // 16 + r, (N - 1) // 16).to(tl.int64) * (KW // 16) + q_lo // 4) * 2 + h
                    wps = wps + ((w_ptr + (unit * 32 + lane) * 4).to(tl.int64),)
                    sps = sps + ((s_ptr + (unit * 8 + g) * (256 // GS)).to(tl.int64),)
                else:
                    row = tl.minimum(rb + 16 * r + g + 8 * h, N - 1).to(tl.int64)
                    wps = wps + ((w_ptr + row * KW + 4 * q_lo + WQ * tq).to(tl.int64),)
                    sps = sps + ((s_ptr + row * G + (64 * q_lo) // GS + SQ * (tq % 2)).to(tl.int64),)
        ops = wps + sps
        xp = x_ptr + tl.minimum(g, M - 1).to(tl.int64) * stride_xm + 64 * q_lo + 16 * WQ * tq
        xp2 = x_ptr + tl.minimum(g + 8, M - 1).to(tl.int64) * stride_xm + 64 * q_lo + 16 * WQ * tq
        accs = tl.inline_asm_elementwise(
            ASM, CONSTRAINTS, ops + (xp.to(tl.int64), xp2.to(tl.int64), (q_hi - q_lo) // 4,
                                     (tbl_ptr + 0 * i).to(tl.int64), (g == tq).to(tl.int32)),
            dtype=(tl.float32,) * (NA * R), is_pure=not PDL, pack=1)
        if PDL and not EARLY_TRIGGER:
            tl.extra.cuda.gdc_launch_dependents()
    if WARP_SPLIT:       # the warps' sums of each lane's outputs, added in the program (fixed order)
        red = ()
        for k in tl.static_range(NA * R):
            red = red + (tl.sum(tl.reshape(accs[k], (NUM_WARPS, 32)), axis=0),)
        accs = red
        e = tl.arange(0, 32)
        rb = pid_n * (16 * R) + 0 * e
        g = e // 4
        tq = e % 4
    _store_outputs(accs, rb, g, tq, y_ptr, ws_ptr, cnt_ptr, pid_n, pid_s, M, N, SPLIT, R, NA, TOKENS, RELU_SQUARE)


@triton.jit
def _output(acc, dtype: tl.constexpr, RELU_SQUARE: tl.constexpr):
    """The stored value of an accumulator: ``y = acc / 2`` (the weights entered as +-2) in the output's ``dtype``;
    with ``RELU_SQUARE`` then ``relu(y) ** 2`` rounded to ``dtype`` again, bit for bit what ``F.relu(y).square()``
    gives on the stored ``y``: the float32 square of a 16-bit value is exact, so one rounding, as torch's; NaN stays
    NaN (``y < 0`` is false for it)."""
    y = (acc * 0.5).to(dtype)
    if RELU_SQUARE:
        f = y.to(tl.float32)
        f = tl.where(f < 0.0, 0.0, f)
        y = (f * f).to(dtype)
    return y


@triton.jit
def _store_outputs(accs, rb, g, tq, y_ptr, ws_ptr, cnt_ptr, pid_n, pid_s, M, N, SPLIT, R: tl.constexpr,
                   NA: tl.constexpr, TOKENS: tl.constexpr, RELU_SQUARE: tl.constexpr):
    """``_output`` of every accumulator of each thread (``_coords``); with a K split the partials go to
    ``ws [SPLIT, M, N]`` and the tile's last program adds them in split order."""
    if SPLIT == 1:
        for r in tl.static_range(R):
            for a in tl.static_range(NA):
                m, n = _coords(rb, g, tq, r, a, TOKENS)
                tl.store(y_ptr + m.to(tl.int64) * N + n, _output(accs[NA * r + a], y_ptr.dtype.element_ty, RELU_SQUARE),
                         mask=(m < M) & (n < N))
    else:
        for r in tl.static_range(R):
            for a in tl.static_range(NA):
                m, n = _coords(rb, g, tq, r, a, TOKENS)
                tl.store(ws_ptr + (pid_s * M + m).to(tl.int64) * N + n, accs[NA * r + a], mask=(m < M) & (n < N))
        if last_to_arrive(cnt_ptr + pid_n, SPLIT):
            # every accumulator's partials, 4 splits a trip, are in flight together before they are added (in
            # split order: deterministic); one L2 latency a trip, not one a split and accumulator
            tots = ()
            for k in tl.static_range(NA * R):
                tots = tots + (tl.zeros(g.shape, dtype=tl.float32),)
            for s0 in range(0, SPLIT, 4):
                parts = ()
                for r in tl.static_range(R):
                    for a in tl.static_range(NA):
                        m, n = _coords(rb, g, tq, r, a, TOKENS)
                        ok = (m < M) & (n < N)
                        for u in tl.static_range(4):
                            parts = parts + (tl.load(ws_ptr + ((s0 + u) * M + m).to(tl.int64) * N + n,
                                                     mask=ok & (s0 + u < SPLIT), other=0.0, cache_modifier=".cg"),)
                new = ()
                for k in tl.static_range(NA * R):
                    t = tots[k]
                    for u in tl.static_range(4):
                        t = tl.where(s0 + u < SPLIT, t + parts[4 * k + u], t)
                    new = new + (t,)
                tots = new
            for r in tl.static_range(R):
                for a in tl.static_range(NA):
                    m, n = _coords(rb, g, tq, r, a, TOKENS)
                    tl.store(y_ptr + m.to(tl.int64) * N + n, _output(tots[NA * r + a], y_ptr.dtype.element_ty,
                                                                      RELU_SQUARE), mask=(m < M) & (n < N))
            reset_arrivals(cnt_ptr + pid_n)


def tc_ok(x: torch.Tensor, T_packed: torch.Tensor, in_features: int, group_size: int) -> bool:
    """Whether ``decode_tc_kernel`` takes a call: 1-16 rows of 16-bit ``x`` (unit column stride, 16-byte
    aligned rows), ``group_size`` 64, 128 or 256, ``in_features % 256 == 0`` (whole chunks), a 16-byte aligned
    ``T_packed``."""
    return (0 < x.shape[0] <= 16 and x.dtype in (torch.bfloat16, torch.float16) and group_size in (64, 128, 256)
            and in_features % 256 == 0 and x.stride(1) == 1 and (x.stride(0) * 2) % 16 == 0
            and x.data_ptr() % 16 == 0 and T_packed.shape[0] > 0 and T_packed.storage_offset() % 4 == 0
            and T_packed.data_ptr() % 16 == 0)


@lru_cache(maxsize=None)
def _table(device: torch.device) -> torch.Tensor:
    """``TABLE`` as a one-element int32 tensor on ``device`` (the kernel loads it once a thread)."""
    return torch.tensor([TABLE], dtype=torch.int32, device=device)


def tc_forward(x: torch.Tensor, T_packed: torch.Tensor, S: torch.Tensor, in_features: int, group_size: int,
               config: Optional[dict] = None, relu_square: bool = False) -> torch.Tensor:
    """``y [M, N]`` in x's dtype (inputs checked by the caller: ``decode_triton.decode_forward``). ``config``
    overrides the tile (``tc_tile``: the keys are ``TcTile``'s fields). ``relu_square``: ``relu(y) ** 2`` stored
    instead (``_output``). A 5-D ``T_packed`` is the ``tc`` layout (``T_tiles`` / ``S_tiles`` of ``16 *
    T_packed.shape[0]`` features, ``format.tc_tiles``), read by the ``TILED`` form of the kernel."""
    tiled = T_packed.dim() == 5
    M, N, G = x.shape[0], packed_out_features(T_packed), in_features // group_size
    sms = n_sm(x.device)
    t = tc_tile(M, in_features, config, N, sms, tiled)
    if t.PDL and not pdl_ok(x.device):      # the launch as it runs: a dependent only where the device allows it
        t = t._replace(PDL=False)
    tokens = tc_tokens(M)
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    quads = in_features // 64
    tiles = triton.cdiv(N, 16 * t.R * (1 if t.WARP_SPLIT else t.num_warps))
    want = max(1, triton.cdiv(t.PROGRAMS_PER_SM * sms, tiles))
    # splits in whole 256-column chunks (a chunk never straddles two splits: the PTX loads a chunk at a time)
    per, split = split_len(quads, max(1, min(want, triton.cdiv(quads, 4))), 4)
    ws, cnt = split_buffers(y, split, tiles)
    decode_tc_kernel[(tiles, split)](x, T_packed.view(torch.int32), S, y, ws, cnt, _table(x.device), M, N,
                                     in_features // 16, G, x.stride(0), split, per, GS=group_size, R=t.R, TOKENS=tokens,
                                     NUM_WARPS=t.num_warps, WARP_SPLIT=t.WARP_SPLIT, GROUP_COLUMNS=t.GROUP_COLUMNS,
                                     ASM=t.asm(group_size, tokens, x.dtype == torch.float16),
                                     CONSTRAINTS=_constraints(t.R, tokens), RELU_SQUARE=relu_square,
                                     INTERP=INTERPRETED, PDL=t.PDL, TILED=t.TILED, EARLY_TRIGGER=t.EARLY_TRIGGER,
                                     num_warps=t.num_warps, launch_pdl=t.PDL)
    return y
