"""One query's attention over a KV cache as one fused Triton launch (flash-decoding), deterministic.

The decode token step attends one query per head over the whole static cache (``attention.StaticKVCache``):
``q [B, H, 1, hd]`` over ``k, v [B, H, L, hd]`` under a bool ``mask [1, L]`` (True: may attend), ``L`` the
cache's ``max_len``. The work is reading K and V once. ``_split_kernel``, grid ``(B * H, splits)``:

1. program ``(bh, s)`` takes positions ``s * SPLIT_TILES * BLOCK_L ..`` of one head, ``SPLIT_TILES`` tiles of
   ``BLOCK_L`` keys, and runs the online softmax over them in float32: running max ``m``, sum ``l`` and
   unnormalised ``acc [hd]``. A tile's K and V rows are requested together, under the mask (masked-out
   positions are not read: a static cache's unwritten tail may hold anything) and contribute nothing. It
   writes ``(m, l, acc)`` of its chunk to float32 partial buffers;
2. the head's last program to arrive (an int32 arrival counter a head, ``triton_common.arrival_counters``, left
   at 0 for the next call) merges its ``splits`` partials in split order (``M = max m_s``,
   ``out = sum_s 2**(m_s - M) acc_s / sum_s 2**(m_s - M) l_s``, ``_combine``) and stores ``out`` in q's type.
   One split: no partials, the program stores its own.

Deterministic bit for bit run to run: every sum has a fixed order (no float atomics; the split count depends
only on the shapes and the device; which program combines changes, the order it combines in does not), and a
CUDA graph replays the one launch like any other. Splitting L keeps the GPU busy at batch 1 (``3b``: 24 heads
x 5 tiles of 128 keys of a 576-position cache = 120 programs on 132 SMs); very large batches take several tiles
a program (fewer partials to write and merge: ``launch_config``).

Masks: a chunk with no allowed position keeps ``m = -inf, l = 0, acc = 0`` (no NaN: the exponentials subtract a
finite stand-in for ``-inf``). A row with no allowed position at all gives NaN (``0 / 0``), as the reference and
``torch.softmax`` do; the model never passes one (a query always sees its own key).

Scores are ``q . k * hd**-0.5`` in float32 (in base 2: ``log2(e)`` folded into the scale, ``exp2``), the
probabilities stay float32 for ``@ v`` (the cuBLAS fallback of ``attention._one_query_attention`` rounds them
to q's type), only the output is rounded. ``one_query_attention_torch`` is the reference.

The token step's cache write goes into the same launch (``one_query_attention_append``, the op
``arbitor::one_query_attention_append``, which mutates the two cache buffers in place): given the step's key and
value and the device position ``p`` of a static cache, the program whose chunk holds ``p`` writes them there and
takes that row from its registers, keys ``<= p`` are allowed (no mask tensor) -- bit for bit the write followed by
``one_query_attention`` under ``key position <= p``, one kernel a layer fewer in a decode step
(``attention.StaticKVCache.attend``).

On sm_90+ the kernel launches as a programmatic dependent (``triton_common.pdl_ok``): it may start while the
kernel before it (the q/k/v projection) finishes, waits for it (``gdc_wait``) before reading anything that kernel
may have written, and lets the next kernel launch once its K and V tiles are read; it reads nothing through the
non-coherent path, which a launch overlapping its producer could serve stale (``ternary/ops/decode_tc.py``). A
token step's append whose caller knows the kernel before wrote neither cache nor the position
(``cache_settled=True``: ``attention.StaticKVCache.attend``, whose projection comes just before) reads the
position and its first tile of K and V before that wait, so their trip to memory overlaps the projection's end.

Layout: reference -> kernels -> launcher (``one_query_attention``, input checks) -> the registered op
``arbitor::one_query_attention`` (``one_query_attention_op``: opaque to ``torch.compile``, with a fake impl for
shapes, so the compiled token step keeps it as one node and a CUDA graph captures its launch).
CPU tensors run only in Triton's interpreter (``TRITON_INTERPRET=1`` before triton is first imported; tests).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ..ternary.ops.triton_common import INTERPRETED, arrival_counters, last_to_arrive, n_sm, pdl_ok, reset_arrivals

__all__ = ["one_query_attention_torch", "one_query_attention", "one_query_attention_op", "check_inputs",
           "one_query_attention_append", "one_query_attention_append_op", "check_append_inputs", "launch_config",
           "INTERPRETED", "MAX_HEAD_DIM"]

MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256
_LOG2E = math.log2(math.e)     # scores in base 2: exp2 is the hardware exponential


def one_query_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reference: ``q [B, H, 1, hd]`` over ``k, v [B, H, L, hd]`` under the bool ``mask`` (``[L]`` or
    ``[1, L]``, broadcast over batch and heads; True: may attend), in float32 math: ``softmax(q . k * hd**-0.5,
    masked with -inf) @ v``. Returns ``[B, H, 1, hd]`` in q's dtype (NaN for a row with no allowed key)."""
    hd = q.shape[-1]
    s = (q.float() @ k.float().transpose(-1, -2)) * hd ** -0.5
    s = torch.where(mask.reshape(-1), s, float("-inf"))
    return (torch.softmax(s, dim=-1) @ v.float()).to(q.dtype)


@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, kn_ptr, vn_ptr, pos_ptr, acc_ptr, ml_ptr, cnt_ptr, out_ptr,
                  H, L, n_splits, BH, qk_scale,
                  s_qb, s_qh, s_kb, s_kh, s_kl, s_vb, s_vh, s_vl, s_m, s_knb, s_knh, s_vnb, s_vnh, s_ob, s_oh,
                  HD: tl.constexpr, BLOCK_L: tl.constexpr, SPLIT_TILES: tl.constexpr, SPLIT_BLOCK: tl.constexpr,
                  APPEND: tl.constexpr, PDL: tl.constexpr = False, EARLY: tl.constexpr = False):
    """Program ``(bh, s)``: the online softmax of head ``bh`` over chunk ``s`` (``SPLIT_TILES * BLOCK_L`` keys).
    Writes ``acc [hd]`` to ``acc_ptr[bh, s]`` and ``(m, l)`` to ``ml_ptr[0 | 1, bh, s]`` (``m`` in base-2
    units, ``-inf`` when the chunk has no allowed key); the head's last program to arrive (``cnt_ptr[bh]``, an
    int32 arrival counter it resets) merges the partials in split order (``_combine``) and stores the output.
    One split: the chunk's ``acc / l`` straight to the output.

    ``APPEND`` (``one_query_attention_append``): no mask; the step's key and value (``kn_ptr`` / ``vn_ptr``, one
    ``[hd]`` row a head) belong at position ``qpos = *pos_ptr`` and keys ``<= qpos`` are allowed. The program
    whose chunk holds ``qpos`` writes them into the cache there and uses them from its registers for that row (the
    tile's load of that row may see the cache before or after the write: its value is replaced either way); no
    other program touches the row. (Loading, storing and selecting the row in the tile's own 2-D layout instead, to
    save moving the ``[hd]`` vectors between layouts, made the kernel 32-67 % slower on the H200:
    ``benchmarks/results/inference/h200-decode-fusions/``.)

    ``EARLY`` (``APPEND`` under ``PDL``, when the caller knows that the kernel just before wrote neither the caches
    nor ``pos``: ``one_query_attention_append(cache_settled=True)``): ``qpos`` and the chunk's first tile of K and V
    are loaded before the wait for that kernel, so their trip to memory overlaps its end. Everything older is
    visible by then: that kernel waited for its own predecessor before it let this one launch. q, the new key and
    value, and the later tiles are read after the wait. The same loads and sums in the same order: the same bits."""
    bh = tl.program_id(0)
    sp = tl.program_id(1)
    b = (bh // H).to(tl.int64)      # 64-bit offsets: a large cache's B * H * L * hd may pass 2**31
    h = (bh % H).to(tl.int64)
    d = tl.arange(0, HD)
    k_base = k_ptr + b * s_kb + h * s_kh
    v_base = v_ptr + b * s_vb + h * s_vh
    start = sp * (SPLIT_TILES * BLOCK_L)
    qpos = 0
    if EARLY:   # the settled cache: the position and the first tile before the wait
        qpos = tl.load(pos_ptr)
        kt0, vt0, rows0, allowed0 = _tile_loads(k_base, v_base, mask_ptr, s_kl, s_vl, s_m, start, L, qpos, d,
                                                BLOCK_L, APPEND)
    if PDL:     # a programmatic dependent: nothing written by the kernel before is read before it has finished
        tl.extra.cuda.gdc_wait()
    q = tl.load(q_ptr + b * s_qb + h * s_qh + d).to(tl.float32) * qk_scale
    m_i = tl.full((), float("-inf"), tl.float32)
    l_i = tl.zeros((), tl.float32)
    acc = tl.zeros([HD], tl.float32)
    kn = q      # placeholders: the new key and value are loaded and read only under APPEND
    vn = q
    if APPEND:
        if not EARLY:
            qpos = tl.load(pos_ptr)        # the query's position: its key is written there
        kn = tl.load(kn_ptr + b * s_knb + h * s_knh + d)
        vn = tl.load(vn_ptr + b * s_vnb + h * s_vnh + d)
        if (qpos >= start) & (qpos < start + SPLIT_TILES * BLOCK_L):
            tl.store(k_base + qpos * s_kl + d, kn)
            tl.store(v_base + qpos * s_vl + d, vn)
    first = 0
    if EARLY:
        m_i, l_i, acc = _tile_update(kt0, vt0, rows0, allowed0, q, kn, vn, qpos, m_i, l_i, acc, APPEND)
        first = 1
    for t in range(first, SPLIT_TILES):
        kt, vt, rows, allowed = _tile_loads(k_base, v_base, mask_ptr, s_kl, s_vl, s_m, start + t * BLOCK_L, L, qpos,
                                            d, BLOCK_L, APPEND)
        m_i, l_i, acc = _tile_update(kt, vt, rows, allowed, q, kn, vn, qpos, m_i, l_i, acc, APPEND)
    if PDL:     # K and V read: the next kernel may launch (it waits for this one to finish before it reads)
        tl.extra.cuda.gdc_launch_dependents()
    if n_splits == 1:
        tl.store(out_ptr + b * s_ob + h * s_oh + d, (acc / l_i).to(out_ptr.dtype.element_ty))
    else:
        part = bh.to(tl.int64) * n_splits + sp
        tl.store(acc_ptr + part * HD + d, acc)
        tl.store(ml_ptr + part, m_i)
        tl.store(ml_ptr + BH * n_splits + part, l_i)
        if last_to_arrive(cnt_ptr + bh, n_splits):
            _combine(acc_ptr, ml_ptr, out_ptr + b * s_ob + h * s_oh, bh, n_splits, BH, HD, SPLIT_BLOCK)
            reset_arrivals(cnt_ptr + bh)


@triton.jit
def _tile_loads(k_base, v_base, mask_ptr, s_kl, s_vl, s_m, tile_start, L, qpos, d, BLOCK_L: tl.constexpr,
                APPEND: tl.constexpr):
    """The tile of ``BLOCK_L`` keys from ``tile_start``: ``(K [BLOCK_L, hd], V, rows, allowed)``, K and V requested
    together (one memory latency a tile, not two), masked-out rows not read (a static cache's unwritten tail may
    hold anything)."""
    pos = tile_start + tl.arange(0, BLOCK_L)
    inside = pos < L
    rows = pos.to(tl.int64)
    if APPEND:
        allowed = inside & (rows <= qpos)
    else:
        allowed = inside & (tl.load(mask_ptr + rows * s_m, mask=inside, other=0) != 0)
    kt = tl.load(k_base + rows[:, None] * s_kl + d[None, :], mask=allowed[:, None], other=0.0)
    vt = tl.load(v_base + rows[:, None] * s_vl + d[None, :], mask=allowed[:, None], other=0.0)
    return kt, vt, rows, allowed


@triton.jit
def _tile_update(kt, vt, rows, allowed, q, kn, vn, qpos, m_i, l_i, acc, APPEND: tl.constexpr):
    """The online softmax's step over one tile (``APPEND``: the query's own row taken from ``kn`` / ``vn``):
    ``(m, l, acc)`` after it."""
    if APPEND:
        new = (rows == qpos)[:, None]
        kt = tl.where(new, kn[None, :], kt)
        vt = tl.where(new, vn[None, :], vt)
    s = tl.where(allowed, tl.sum(kt.to(tl.float32) * q[None, :], axis=1), float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=0))
    m_sub = _finite(m_new)                  # every key so far masked: subtract 0, never exp2(-inf - -inf)
    alpha = tl.exp2(m_i - m_sub)            # 0 while m_i = -inf (acc, l are still 0)
    p = tl.exp2(s - m_sub)                  # 0 at masked positions
    acc = acc * alpha + tl.sum(p[:, None] * vt.to(tl.float32), axis=0)
    l_i = l_i * alpha + tl.sum(p, axis=0)
    return m_new, l_i, acc


@triton.jit
def _partials(acc_ptr, ml_ptr, row, s0, n_splits, BH, d, j, HD: tl.constexpr):
    """Splits ``s0 .. s0 + SPLIT_BLOCK`` of a head's partials, read past L1 (``.cg``: other programs wrote them):
    ``(m, l, acc [SPLIT_BLOCK, hd])``, padding past ``n_splits`` as ``m = -inf``, ``l = 0``, ``acc = 0``."""
    live = s0 + j < n_splits
    m = tl.load(ml_ptr + row + s0 + j, mask=live, other=float("-inf"), cache_modifier=".cg")
    lp = tl.load(ml_ptr + BH * n_splits + row + s0 + j, mask=live, other=0.0, cache_modifier=".cg")
    a = tl.load(acc_ptr + (row + s0 + j)[:, None] * HD + d[None, :], mask=live[:, None], other=0.0,
                cache_modifier=".cg")
    return m, lp, a


@triton.jit
def _finite(m_max):
    """The running maximum ``m`` to subtract from the scores, 0 while it is ``-inf`` (no allowed key yet: every
    weight is then ``exp2(-inf) = 0``, never ``exp2(-inf - -inf) = NaN``; a head with none at all gets 0/0 = NaN)."""
    return tl.where(m_max == float("-inf"), 0.0, m_max)


@triton.jit
def _weigh(m, lp, a, m_sub, l_sum, acc):
    """``(l_sum, acc)`` plus a block of partials weighted by ``exp2(m - m_sub)`` (0 for a split with no allowed key
    and for padding); a first block is added to zeros, so one block and several give the same bits."""
    w = tl.exp2(m - m_sub)
    return l_sum + tl.sum(w * lp, axis=0), acc + tl.sum(w[:, None] * a, axis=0)


@triton.jit
def _combine(acc_ptr, ml_ptr, o_ptr, bh, n_splits, BH, HD: tl.constexpr, SPLIT_BLOCK: tl.constexpr):
    """Merges the ``n_splits`` partials of head ``bh`` in split order (blocks of ``SPLIT_BLOCK`` splits, a
    fixed-shape ``tl.sum`` in each) and stores ``acc / l`` at ``o_ptr`` (``[hd]``); the partials are read past
    L1 (``.cg``: other programs wrote them). Up to ``SPLIT_BLOCK`` splits (the launcher's choice whenever there are
    at most 16) every partial is requested at once, one trip to L2 instead of two; the sums are the same."""
    d = tl.arange(0, HD)
    j = tl.arange(0, SPLIT_BLOCK)
    row = bh.to(tl.int64) * n_splits
    l_sum = tl.zeros((), tl.float32)
    acc = tl.zeros([HD], tl.float32)
    if n_splits <= SPLIT_BLOCK:
        m, lp, a = _partials(acc_ptr, ml_ptr, row, 0, n_splits, BH, d, j, HD)
        l_sum, acc = _weigh(m, lp, a, _finite(tl.max(m, axis=0)), l_sum, acc)
    else:
        m_max = tl.full((), float("-inf"), tl.float32)
        for s0 in range(0, n_splits, SPLIT_BLOCK):
            m = tl.load(ml_ptr + row + s0 + j, mask=s0 + j < n_splits, other=float("-inf"), cache_modifier=".cg")
            m_max = tl.maximum(m_max, tl.max(m, axis=0))
        m_sub = _finite(m_max)
        for s0 in range(0, n_splits, SPLIT_BLOCK):
            m, lp, a = _partials(acc_ptr, ml_ptr, row, s0, n_splits, BH, d, j, HD)
            l_sum, acc = _weigh(m, lp, a, m_sub, l_sum, acc)
    tl.store(o_ptr + d, (acc / l_sum).to(o_ptr.dtype.element_ty))


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> Optional[str]:
    """What the kernel cannot take in these inputs, as one line, or ``None`` when it can (``one_query_attention``
    raises it as a ``ValueError``; ``attention._one_query_attention`` falls back to cuBLAS instead)."""
    if not isinstance(mask, torch.Tensor):
        return f"mask must be a tensor, got {type(mask).__name__}"
    problem = _check_qkv(q, k, v, {"mask": mask})
    if problem is not None:
        return problem
    L = k.shape[2]
    if mask.dtype != torch.bool:
        return f"mask must be bool (True: may attend), got {mask.dtype}"
    if tuple(mask.shape) not in ((L,), (1, L)):
        return f"mask must be [L] or [1, L] with L = {L}, got shape {tuple(mask.shape)}"
    return None


def check_append_inputs(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
                        v_cache: torch.Tensor, pos: torch.Tensor) -> Optional[str]:
    """``check_inputs`` for ``one_query_attention_append``: ``k_new`` / ``v_new`` shaped, typed and placed as
    ``q`` (unit stride on hd), the caches as ``k`` / ``v``, ``pos`` a 0-d int64 tensor on their device."""
    for name, t in (("k_new", k_new), ("v_new", v_new), ("pos", pos)):
        if not isinstance(t, torch.Tensor):
            return f"{name} must be a tensor, got {type(t).__name__}"
    problem = _check_qkv(q, k_cache, v_cache, {"k_new": k_new, "v_new": v_new, "pos": pos})
    if problem is not None:
        return problem
    for name, t in (("k_new", k_new), ("v_new", v_new)):
        if t.shape != q.shape or t.dtype != q.dtype or t.stride(3) != 1:
            return (f"{name} must be [B, H, 1, hd] = {tuple(q.shape)} in {q.dtype} with unit stride on hd, got "
                    f"{tuple(t.shape)} {t.dtype} stride {t.stride()}")
    if pos.dim() != 0 or pos.dtype != torch.int64:
        return f"pos must be a 0-d int64 tensor, got shape {tuple(pos.shape)} {pos.dtype}"
    return None


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, others: dict) -> Optional[str]:
    """The checks of ``q [B, H, 1, hd]`` over ``k, v [B, H, L, hd]`` that both launches share; ``others``: their
    other tensors by name, which must be on q's device."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            return f"{name} must be a tensor, got {type(t).__name__}"
    if q.dim() != 4 or q.shape[2] != 1:
        return f"q must be [B, H, 1, hd], got shape {tuple(q.shape)}"
    B, H, _, hd = q.shape
    if k.dim() != 4 or k.shape[:2] != q.shape[:2] or k.shape[3] != hd or k.shape[2] < 1:
        return f"k must be [B, H, L, hd] = [{B}, {H}, L >= 1, {hd}], got shape {tuple(k.shape)}"
    if v.shape != k.shape:
        return f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}"
    if q.dtype not in (torch.bfloat16, torch.float16):
        return f"q must be bfloat16 or float16, got {q.dtype}"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return f"k and v must be q's dtype {q.dtype}, got {k.dtype} and {v.dtype}"
    if hd < MIN_HEAD_DIM or hd > MAX_HEAD_DIM or hd & (hd - 1):
        return f"head_dim must be a power of two in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}], got {hd}"
    if any(t.device != q.device for t in (k, v, *others.values())):
        return (f"{', '.join(['q', 'k', 'v', *others])} must be on one device, got "
                f"{', '.join(str(t.device) for t in (q, k, v, *others.values()))}")
    if q.device.type == "cuda" and INTERPRETED:
        return "the kernels were built for Triton's CPU interpreter (TRITON_INTERPRET=1); restart without it for CUDA"
    if q.device.type != "cuda" and not (q.device.type == "cpu" and INTERPRETED):
        return f"tensors on {q.device} need CUDA, or TRITON_INTERPRET=1 set before triton is first imported"
    if q.stride(3) != 1 or k.stride(3) != 1 or v.stride(3) != 1:
        return f"q, k, v need unit stride on hd, got {q.stride(3)}, {k.stride(3)}, {v.stride(3)}"
    return None


def launch_config(B: int, H: int, L: int, hd: int, n_sm: int, block_l: Optional[int] = None,
                  split_tiles: Optional[int] = None) -> dict:
    """``BLOCK_L`` (keys a tile), ``SPLIT_TILES`` (tiles a program), ``splits`` (programs a head) and
    ``num_warps``: by default tiles of 128 keys (64 at hd 256: the tile stays 16K elements), one a program until
    ``B * H * tiles`` reaches 64 programs a multiprocessor, then ``B * H * tiles // (64 * n_sm)`` a program. A pure
    function of the shapes and the device: the same inputs always take the same summation order. On the H200, the
    ``3b`` step's attention (24 heads x 128, a 576-position cache) took 8.0 us at batch 1 with 128-key tiles
    (120 programs) against 8.8 with 64 (216) and 10.8 with 32 or 256; at batch 16 46 us, against 45 with 64-key
    tiles (even) and 53.5 for the former default (three 64-key tiles a program). Two tiles a program and 8 warps
    were slower at both batches (``benchmarks/results/inference/h200-decode-fusions/``)."""
    block_l = block_l if block_l is not None else (128 if hd <= 128 else 64)
    tiles = triton.cdiv(L, block_l)
    if split_tiles is None:
        split_tiles = max(1, min(tiles, (B * H * tiles) // (64 * n_sm)))
    return dict(BLOCK_L=block_l, SPLIT_TILES=split_tiles, splits=triton.cdiv(tiles, split_tiles),
                num_warps=4 if hd <= 128 else 8)


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *,
                        block_l: Optional[int] = None, split_tiles: Optional[int] = None) -> torch.Tensor:
    """``q [B, H, 1, hd]`` (bf16 / fp16) over ``k, v [B, H, L, hd]`` (q's dtype; any strides with unit stride on
    hd: a static cache's buffers, or views of them) under the bool ``mask [L]`` or ``[1, L]`` (broadcast over
    batch and heads; True: may attend) -> ``[B, H, 1, hd]`` in q's dtype, contiguous. ``hd`` a power of two in
    [16, 256]. ``block_l`` / ``split_tiles`` override ``launch_config`` (tests). ``ValueError`` (one line)
    for inputs the kernels cannot take (``check_inputs``)."""
    problem = check_inputs(q, k, v, mask)
    if problem is not None:
        raise ValueError(f"one_query_attention: {problem}")
    if (block_l is not None and (block_l < 1 or block_l & (block_l - 1))) or (split_tiles is not None
                                                                             and split_tiles < 1):
        raise ValueError(f"one_query_attention: block_l must be a power of two and split_tiles >= 1, got "
                         f"{block_l} and {split_tiles}")
    return _launch(q, k, v, mask, block_l, split_tiles)


def one_query_attention_append(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
                               v_cache: torch.Tensor, pos: torch.Tensor, *, block_l: Optional[int] = None,
                               split_tiles: Optional[int] = None, cache_settled: bool = False) -> torch.Tensor:
    """A token step's cache write and attention in one launch: writes ``k_new, v_new [B, H, 1, hd]`` into
    ``k_cache, v_cache [B, H, L, hd]`` at position ``p = pos`` (a 0-d int64 device tensor: a static cache's,
    which a CUDA graph replays with the position it holds then) and returns ``q [B, H, 1, hd]``'s attention over
    keys ``0 .. p`` -- bit for bit ``one_query_attention`` after ``k_cache[:, :, p] = k_new`` (and v) under the mask
    ``key position <= p``: the same tiles and sums, the new row taken from registers. ``0 <= p < L`` is the
    caller's invariant (``attention.StaticKVCache`` holds it on the host); a ``p`` past the cache writes nothing.
    ``cache_settled``: the caller promises that the kernel launched just before this one wrote neither
    ``k_cache``, ``v_cache`` nor ``pos``; on sm_90+ the kernel then reads the position and its first tile of the
    caches before it waits for that kernel (``_split_kernel``'s ``EARLY``; the same bits). ``ValueError`` (one
    line) for inputs the kernel cannot take (``check_append_inputs``)."""
    problem = check_append_inputs(q, k_new, v_new, k_cache, v_cache, pos)
    if problem is not None:
        raise ValueError(f"one_query_attention_append: {problem}")
    return _launch(q, k_cache, v_cache, None, block_l, split_tiles, (k_new, v_new, pos), cache_settled)


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
            block_l: Optional[int] = None, split_tiles: Optional[int] = None,
            append: Optional[tuple] = None, cache_settled: bool = False) -> torch.Tensor:
    """``one_query_attention`` on inputs ``check_inputs`` has taken; with ``append = (k_new, v_new, pos)`` (and no
    mask) ``one_query_attention_append`` on inputs ``check_append_inputs`` has taken, ``cache_settled`` as there."""
    B, H, _, hd = q.shape
    L = k.shape[2]
    cfg = launch_config(B, H, L, hd, n_sm(q.device), block_l, split_tiles)
    splits = cfg["splits"]
    # a view (no copy): the kernel reads bytes; appending, the mask is not read (q stands in for it)
    mask_u8 = mask.reshape(-1).view(torch.uint8) if mask is not None else q
    kn, vn, pos = append if append is not None else (q, q, q)
    out = torch.empty((B, H, 1, hd), dtype=q.dtype, device=q.device)
    # one split: no partials (the one program a head stores its output); the buffers keep their dtypes, so both
    # cases run the same compiled kernel
    parts = B * H * splits if splits > 1 else 1
    acc = torch.empty((parts, hd), dtype=torch.float32, device=q.device)
    ml = torch.empty((2, parts), dtype=torch.float32, device=q.device)
    cnt = arrival_counters(q.device, B * H)
    pdl = pdl_ok(q.device)
    _split_kernel[(B * H, splits)](
        q, k, v, mask_u8, kn, vn, pos, acc, ml, cnt, out, H, L, splits, B * H, hd ** -0.5 * _LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        mask_u8.stride(0) if mask is not None else 0, kn.stride(0), kn.stride(1), vn.stride(0), vn.stride(1),
        out.stride(0), out.stride(1), HD=hd, BLOCK_L=cfg["BLOCK_L"], SPLIT_TILES=cfg["SPLIT_TILES"],
        SPLIT_BLOCK=min(16, triton.next_power_of_2(splits)), APPEND=append is not None, PDL=pdl,
        EARLY=append is not None and cache_settled, num_warps=cfg["num_warps"], launch_pdl=pdl)
    return out


@torch.library.custom_op("arbitor::one_query_attention", mutates_args=())
def one_query_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``one_query_attention`` as an op ``torch.compile`` keeps opaque (one node; Inductor calls the launcher),
    for inputs the caller has checked: ``attention._one_query_attention`` asks ``check_inputs`` first (a token
    step checks once) and falls back where it does not take them."""
    return _launch(q, k, v, mask)


@one_query_attention_op.register_fake
def _(q, k, v, mask):
    torch._check(q.dim() == 4 and q.shape[2] == 1, lambda: "q must be [B, H, 1, hd]")
    torch._check(k.dim() == 4 and k.shape[0] == q.shape[0] and k.shape[1] == q.shape[1]
                 and k.shape[3] == q.shape[3], lambda: "k must be [B, H, L, hd]")
    torch._check(v.shape == k.shape, lambda: "v must have k's shape")
    torch._check(mask.shape[-1] == k.shape[2], lambda: "mask must be [L] or [1, L]")
    return q.new_empty(q.shape[0], q.shape[1], 1, q.shape[3])


@torch.library.custom_op("arbitor::one_query_attention_append", mutates_args=("k_cache", "v_cache"))
def one_query_attention_append_op(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
                                  v_cache: torch.Tensor, pos: torch.Tensor,
                                  cache_settled: bool = False) -> torch.Tensor:
    """``one_query_attention_append`` as an op ``torch.compile`` keeps opaque and knows to write the caches in
    place, for inputs the caller has checked (``attention.StaticKVCache.attend``)."""
    return _launch(q, k_cache, v_cache, None, append=(k_new, v_new, pos), cache_settled=cache_settled)


@one_query_attention_append_op.register_fake
def _(q, k_new, v_new, k_cache, v_cache, pos, cache_settled=False):
    torch._check(q.dim() == 4 and q.shape[2] == 1, lambda: "q must be [B, H, 1, hd]")
    torch._check(k_new.shape == q.shape and v_new.shape == q.shape, lambda: "k_new, v_new must have q's shape")
    torch._check(k_cache.dim() == 4 and v_cache.shape == k_cache.shape,
                 lambda: "k_cache, v_cache must be [B, H, L, hd]")
    return q.new_empty(q.shape[0], q.shape[1], 1, q.shape[3])
