"""The decode step's fused one-query attention (``arbitor/model/decode_attention.py``) against its float32 torch
reference (``one_query_attention_torch``), and its use by ``attention._one_query_attention``.

CPU: Triton's interpreter (``TRITON_INTERPRET=1`` before triton is imported; ``tests/conftest.py`` sets it too).
Odd cache lengths (1, 37, 130, 577), hd 16 / 64 / 128, (B, H) = (1, 1) and (2, 3), bf16 and fp16; masks that
allow a prefix (the decode step's), with holes, with whole tiles masked, or one key; k/v that are views of
longer static-cache buffers (read at a shorter length) or of the ``[B, L, H, hd]`` projection layout; the
default launch and explicit tilings (several tiles a program, more splits than the combine reads at once).
Outputs are compared in float32 with the 16-bit output rounding as tolerance (Triton 3.6's interpreter rounds
float32 to bf16 toward zero, so bf16 gets a whole ulp), and two calls are bit-equal. The tolerance is shown to
catch a wrong scale, a missing mask and a prefix one key too long. GPU (``tests/test_gpu.py``): the ``3b``
shapes, 50 calls bit-equal, a CUDA-graph replay.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

triton = pytest.importorskip("triton")

from arbitor.model import attention, decode_attention  # noqa: E402
from arbitor.model.decode_attention import (INTERPRETED, launch_config, one_query_attention,  # noqa: E402
                                            one_query_attention_op, one_query_attention_torch)
from arbitor.ternary.ops.triton_common import COUNTERS  # noqa: E402

interp = pytest.mark.skipif(not INTERPRETED, reason="CPU interpreter tests need TRITON_INTERPRET=1")
BF16, FP16 = torch.bfloat16, torch.float16
#: relative tolerance: one bf16 ulp (the interpreter truncates), two fp16 half-ulps (round to nearest)
RTOL = {BF16: 2.0 ** -7, FP16: 2.0 ** -10}


def qkv(B, H, L, hd, dtype, seed=0, max_len=None, layout="cache"):
    """``q [B, H, 1, hd]`` and ``k, v [B, H, L, hd]``: ``layout="cache"`` slices ``[B, H, max_len, hd]`` buffers
    at ``L`` (non-contiguous when ``max_len > L``), ``"heads"`` transposes ``[B, L, H, hd]`` (the projection's
    layout, as ``ContextAttention._heads`` makes it)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, 1, H, hd, generator=g).to(dtype).transpose(1, 2)      # q's strides in the model
    if layout == "heads":
        k, v = (torch.randn(B, L, H, hd, generator=g).to(dtype).transpose(1, 2) for _ in range(2))
    else:
        n = max_len or L
        k, v = (torch.randn(B, H, n, hd, generator=g).to(dtype)[:, :, :L] for _ in range(2))
    return q, k, v


def make_mask(kind, L, block=16, seed=0):
    """``prefix``: ``[1, L]``, keys ``<= 2L/3`` (the decode step's); ``holes``: ``[L]``, random with key 0 kept;
    ``tiles``: ``[1, L]``, every other tile of ``block`` keys masked whole; ``one``: ``[L]``, the last key only."""
    pos = torch.arange(L)
    if kind == "prefix":
        return (pos <= 2 * L // 3).view(1, -1)
    if kind == "holes":
        m = torch.rand(L, generator=torch.Generator().manual_seed(seed)) < 0.6
        m[0] = True
        return m
    if kind == "tiles":
        return ((pos // block) % 2 == 1).view(1, -1) if L > block else (pos == L - 1).view(1, -1)
    assert kind == "one"
    return pos == L - 1


def assert_matches(out, ref, dtype):
    """``out`` (16-bit) against the float32 reference, within the output's rounding."""
    torch.testing.assert_close(out.float(), ref, rtol=RTOL[dtype], atol=1e-4)


def reference32(q, k, v, mask):
    return one_query_attention_torch(q.float(), k.float(), v.float(), mask)


# (B, H, L, hd, dtype, mask, k/v layout, max_len, block_l, split_tiles)
CASES = [
    (1, 1, 1, 64, BF16, "prefix", "cache", None, None, None),        # one key
    (1, 1, 1, 128, FP16, "one", "cache", 8, None, None),             # one key of a longer buffer
    (2, 3, 37, 128, FP16, "prefix", "cache", 64, None, None),        # a static buffer read at 37 (padded tile)
    (2, 3, 37, 64, BF16, "holes", "heads", None, 16, 1),             # projection layout, 3 splits
    (1, 1, 130, 64, BF16, "tiles", "cache", 160, 16, 1),             # 9 splits, 4 of them wholly masked
    (2, 3, 130, 128, FP16, "tiles", "cache", None, 16, 3),           # 3 tiles a program, masked tiles inside
    (1, 1, 577, 64, FP16, "prefix", "cache", 600, 16, 1),            # 37 splits: the combine reads 16, 16, 5
    (2, 3, 577, 128, BF16, "holes", "cache", None, None, None),      # the default launch (128-key tiles)
    (1, 1, 577, 16, BF16, "one", "heads", None, None, 2),            # hd 16 (the tiny preset), one key of 577
]


@interp
@pytest.mark.parametrize("B,H,L,hd,dtype,mask_kind,layout,max_len,block_l,split_tiles", CASES)
def test_kernel_matches_reference_and_repeats_bit_for_bit(B, H, L, hd, dtype, mask_kind, layout, max_len, block_l,
                                                          split_tiles):
    q, k, v = qkv(B, H, L, hd, dtype, seed=L + hd, max_len=max_len, layout=layout)
    mask = make_mask(mask_kind, L, block=block_l or 64, seed=L)
    out = one_query_attention(q, k, v, mask, block_l=block_l, split_tiles=split_tiles)
    assert out.shape == (B, H, 1, hd) and out.dtype == dtype and out.is_contiguous()
    assert torch.isfinite(out).all()
    assert_matches(out, reference32(q, k, v, mask), dtype)
    assert torch.equal(one_query_attention(q, k, v, mask, block_l=block_l, split_tiles=split_tiles), out)
    # the heads' arrival counters are left at 0 for the next call (a captured graph replays with them)
    assert all(int(c.abs().sum()) == 0 for c in COUNTERS.get(q.device, []))


@interp
def test_tolerance_catches_a_wrong_scale_a_missing_mask_and_an_extra_key():
    """The comparison above can fail: the kernel's output is outside the tolerance of each wrong reference."""
    B, H, L, hd, dtype = 2, 3, 37, 64, FP16
    q, k, v = qkv(B, H, L, hd, dtype, seed=5, max_len=48)
    mask = make_mask("prefix", L)
    out = one_query_attention(q, k, v, mask)
    assert_matches(out, reference32(q, k, v, mask), dtype)
    q32, k32, v32 = q.float(), k.float(), v.float()
    wrong = {
        "scale 1": torch.softmax(torch.where(mask, q32 @ k32.transpose(-1, -2), float("-inf")), -1) @ v32,
        "no mask": reference32(q, k, v, torch.ones_like(mask)),
        "one key more": reference32(q, k, v, make_mask("prefix", L) | (torch.arange(L) == 2 * L // 3 + 1)),
    }
    for name, ref in wrong.items():
        with pytest.raises(AssertionError):
            assert_matches(out, ref, dtype)


@interp
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")   # numpy's 0 / 0
def test_a_row_with_no_allowed_key_gives_nan_like_the_reference():
    """Documented behaviour: no allowed key at all is 0 / 0 (NaN), as ``torch.softmax`` over all ``-inf`` gives;
    a mask that allows keys in one tile only leaves every other split at ``m = -inf`` without NaN."""
    q, k, v = qkv(1, 2, 40, 64, BF16, seed=3)
    none = torch.zeros(1, 40, dtype=torch.bool)
    assert torch.isnan(one_query_attention(q, k, v, none, block_l=16)).all()
    assert torch.isnan(reference32(q, k, v, none)).all()
    late = torch.arange(40).view(1, -1) >= 36
    out = one_query_attention(q, k, v, late, block_l=16)
    assert torch.isfinite(out).all()
    assert_matches(out, reference32(q, k, v, late), BF16)


def test_launch_config_takes_one_tile_of_128_keys_a_program_until_64_programs_a_multiprocessor():
    """The ``3b`` token step on 132 SMs: one 128-key tile a program at batch 1 (24 x 5 = 120 programs) and at
    batch 16 (1,920); past 64 programs a multiprocessor (8,448) tiles merge: batch 128 (15,360 tiles) still one a
    program, batch 256 (30,720) three; hd 256 takes 64-key tiles and 8 warps."""
    b1 = launch_config(1, 24, 576, 128, 132)
    assert (b1["BLOCK_L"], b1["SPLIT_TILES"], b1["splits"], b1["num_warps"]) == (128, 1, 5, 4)
    b16 = launch_config(16, 24, 576, 128, 132)
    assert (b16["BLOCK_L"], b16["SPLIT_TILES"], b16["splits"]) == (128, 1, 5)
    assert launch_config(128, 24, 576, 128, 132)["SPLIT_TILES"] == 1
    assert launch_config(256, 24, 576, 128, 132)["SPLIT_TILES"] == 3
    wide = launch_config(1, 1, 577, 256, 132)
    assert (wide["BLOCK_L"], wide["num_warps"]) == (64, 8)
    assert launch_config(1, 1, 1, 64, 132)["splits"] == 1


def _good():
    q, k, v = qkv(1, 2, 9, 16, FP16)
    return q, k, v, make_mask("prefix", 9)


def _bad(which):
    q, k, v, mask = _good()
    bad = {
        "q3d": (q[:, :, 0], k, v, mask),
        "q2": (torch.cat([q, q], 2), k, v, mask),
        "khd": (q, k[..., :8], v, mask),
        "vshape": (q, k, v[:, :, :5], mask),
        "fp32": (q.float(), k.float(), v.float(), mask),
        "kdtype": (q, k.to(BF16), v, mask),
        "hd48": (q[..., :12].repeat(1, 1, 1, 4), k[..., :12].repeat(1, 1, 1, 4),
                 v[..., :12].repeat(1, 1, 1, 4), mask),
        "maskdtype": (q, k, v, mask.float()),
        "maskshape": (q, k, v, mask.expand(2, 9)),
        "masklen": (q, k, v, mask[:, :5]),
        "stride": (q, k.transpose(2, 3).contiguous().transpose(2, 3), v, mask),
        "device": (q, k, v, mask.to("meta")),
    }
    return bad[which]


@interp
@pytest.mark.parametrize("which,match", [
    ("q3d", "q must be"), ("q2", "q must be"), ("khd", "k must be"), ("vshape", "v must have"),
    ("fp32", "bfloat16 or float16"), ("kdtype", "k and v must be"), ("hd48", "power of two"),
    ("maskdtype", "mask must be bool"), ("maskshape", r"mask must be \[L\]"), ("masklen", r"mask must be \[L\]"),
    ("stride", "unit stride"), ("device", "one device"),
])
def test_bad_inputs_raise_one_line_value_errors(which, match):
    with pytest.raises(ValueError, match=match) as err:
        one_query_attention(*_bad(which))
    assert "\n" not in str(err.value) and str(err.value).startswith("one_query_attention: ")
    q, k, v, mask = _good()
    with pytest.raises(ValueError, match="power of two"):
        one_query_attention(q, k, v, mask, block_l=24)
    with pytest.raises(ValueError, match="split_tiles >= 1"):
        one_query_attention(q, k, v, mask, split_tiles=0)


@interp
def test_one_query_attention_takes_the_kernel_and_falls_back_to_cublas(monkeypatch):
    """``attention._one_query_attention`` (what ``cached_attention`` calls for a 16-bit token step on CUDA) runs
    the registered op on inputs the kernel takes, and the ``bmm`` fallback on the others or without Triton."""
    kernel, bmm = [], []
    real = decode_attention.one_query_attention_op
    monkeypatch.setattr(decode_attention, "one_query_attention_op", lambda *a: kernel.append(a) or real(*a))
    monkeypatch.setattr(attention, "_one_query_bmm", lambda *a: bmm.append(a) or "bmm")
    q, k, v, mask = _good()
    out = attention._one_query_attention(q, k, v, mask)
    assert len(kernel) == 1 and not bmm and torch.equal(out, one_query_attention(q, k, v, mask))
    assert attention._one_query_attention(*_bad("hd48")) == "bmm" and len(kernel) == 1
    monkeypatch.setattr(attention, "_decode_attention", lambda: None)   # as when triton cannot be imported
    assert attention._one_query_attention(q, k, v, mask) == "bmm" and len(kernel) == 1 and len(bmm) == 2


def test_cached_attention_keeps_sdpa_off_cuda(monkeypatch):
    """On the CPU (the prompt and every test here) ``cached_attention`` stays on SDPA; the CUDA dispatch to the
    kernel is checked in ``tests/test_gpu.py``."""
    monkeypatch.setattr(attention, "_one_query_attention", lambda *a: pytest.fail("one-query path on the CPU"))
    q, k, v = qkv(1, 2, 9, 16, BF16)
    out = attention.cached_attention(q, k, v, make_mask("prefix", 9))
    assert_matches(out, reference32(q, k, v, make_mask("prefix", 9)), BF16)


@interp
def test_registered_op_checks_and_compiles_to_one_node():
    """``torch.library.opcheck`` (schema, fake impl, dynamic shapes) passes, and ``torch.compile(fullgraph=True)``
    of ``_one_query_attention`` keeps ``arbitor::one_query_attention`` as one node (the lazy import of the kernel
    module and ``check_inputs`` trace without a graph break)."""
    q, k, v, mask = _good()
    torch.library.opcheck(one_query_attention_op, (q, k, v, mask))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    compiled = torch.compile(attention._one_query_attention, fullgraph=True, backend=backend)
    assert torch.equal(compiled(q, k, v, mask), one_query_attention(q, k, v, mask))
    calls = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert calls == [torch.ops.arbitor.one_query_attention.default]


def _append_case(B, H, L, hd, dtype, p, seed=0):
    """``q``, the step's ``k_new, v_new [B, H, 1, hd]`` (views of a ``[B, 1, H, hd]`` projection, as the model
    passes them), caches whose rows past ``p`` hold NaN (never to be read), and the 0-d position tensor."""
    g = torch.Generator().manual_seed(seed)
    q, k_new, v_new = (torch.randn(B, 1, H, hd, generator=g).to(dtype).transpose(1, 2) for _ in range(3))
    k_cache, v_cache = (torch.randn(B, H, L, hd, generator=g).to(dtype) for _ in range(2))
    for c in (k_cache, v_cache):
        c[:, :, p + 1:] = float("nan")
    return q, k_new, v_new, k_cache, v_cache, torch.tensor(p)


@interp
@pytest.mark.parametrize("B,H,L,hd,dtype,p,block_l,split_tiles", [
    (1, 1, 1, 16, BF16, 0, None, None),          # the only position
    (2, 3, 37, 64, FP16, 20, 16, 1),             # the middle of a 16-key tile, 3 splits
    (1, 2, 130, 128, BF16, 63, 64, 1),           # the last row of a tile
    (1, 2, 130, 128, BF16, 64, 64, 1),           # the first row of the next one
    (2, 3, 130, 64, FP16, 129, 16, 3),           # the cache's last row, 3 tiles a program
    (1, 1, 577, 16, BF16, 300, None, None),      # the default launch
])
def test_append_is_write_then_attend_bit_for_bit(B, H, L, hd, dtype, p, block_l, split_tiles):
    """``one_query_attention_append``: the caches after the call are the caches with the step's row written at
    ``p`` (nothing else changes; the NaN rows past ``p`` are never read), and the output is bit for bit
    ``one_query_attention`` of the written caches under ``key position <= p``."""
    q, k_new, v_new, k_cache, v_cache, pos = _append_case(B, H, L, hd, dtype, p, seed=L + p)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    k_ref[:, :, p], v_ref[:, :, p] = k_new[:, :, 0], v_new[:, :, 0]
    mask = (torch.arange(L) <= p).view(1, L)
    kw = dict(block_l=block_l, split_tiles=split_tiles)
    ref = one_query_attention(q, k_ref, v_ref, mask, **kw)
    out = decode_attention.one_query_attention_append(q, k_new, v_new, k_cache, v_cache, pos, **kw)
    assert torch.equal(out, ref) and torch.isfinite(out).all()
    torch.testing.assert_close(k_cache, k_ref, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(v_cache, v_ref, rtol=0, atol=0, equal_nan=True)
    assert all(int(c.abs().sum()) == 0 for c in COUNTERS.get(q.device, []))


@interp
@pytest.mark.parametrize("B,H,L,hd,dtype,p,block_l,split_tiles", [
    (1, 2, 130, 128, BF16, 64, 64, 1),           # the first row of the second tile
    (2, 3, 130, 64, FP16, 129, 16, 3),           # 3 tiles a program: the first read early, two in the loop
    (1, 1, 577, 16, BF16, 300, None, None),      # the default launch
    (1, 2, 100, 16, FP16, 99, 4, 1),             # 25 splits: more than one block of the merge (SPLIT_BLOCK 16)
])
def test_append_into_a_settled_cache_reads_early_and_gives_the_same_bits(B, H, L, hd, dtype, p, block_l, split_tiles):
    """``cache_settled=True`` (the kernel's ``EARLY``: the position and the first tile of each program read before
    the dependent-launch wait) computes exactly what the plain launch does: the same output bits and caches, and
    the output within float32 rounding of the reference, also where the head's partials take more than one block of
    the merge."""
    kw = dict(block_l=block_l, split_tiles=split_tiles)
    plain = _append_case(B, H, L, hd, dtype, p, seed=L + p)
    early = tuple(t.clone() for t in plain)
    out = decode_attention.one_query_attention_append(*plain, **kw)
    out_early = decode_attention.one_query_attention_append(*early, **kw, cache_settled=True)
    assert torch.equal(out_early, out) and torch.isfinite(out).all()
    for a, b in zip(plain[3:5], early[3:5]):
        torch.testing.assert_close(b, a, rtol=0, atol=0, equal_nan=True)
    mask = (torch.arange(L) <= p).view(1, L)
    k_ref, v_ref = (c.clone() for c in plain[3:5])
    k_ref[:, :, p + 1:], v_ref[:, :, p + 1:] = 0, 0      # the NaN rows: masked, but the reference multiplies them
    ref = one_query_attention_torch(plain[0].float(), k_ref.float(), v_ref.float(), mask)
    torch.testing.assert_close(out_early.float(), ref.float(), rtol=2e-2, atol=2e-2)


@interp
@pytest.mark.parametrize("which,match", [
    ("kshape", "k_new must be"), ("vdtype", "v_new must be"), ("posdtype", "pos must be a 0-d int64"),
    ("posshape", "pos must be a 0-d int64"), ("posdevice", "one device"), ("cache", "k must be"),
])
def test_append_refuses_bad_inputs_in_one_line(which, match):
    q, k_new, v_new, k_cache, v_cache, pos = _append_case(1, 2, 9, 16, FP16, 4)
    args = {"kshape": (q, k_new[:, :1], v_new, k_cache, v_cache, pos),
            "vdtype": (q, k_new, v_new.to(BF16), k_cache, v_cache, pos),
            "posdtype": (q, k_new, v_new, k_cache, v_cache, pos.int()),
            "posshape": (q, k_new, v_new, k_cache, v_cache, pos.view(1)),
            "posdevice": (q, k_new, v_new, k_cache, v_cache, pos.to("meta")),
            "cache": (q, k_new, v_new, k_cache[:1, :1], v_cache, pos)}[which]
    with pytest.raises(ValueError, match=match) as err:
        decode_attention.one_query_attention_append(*args)
    assert "\n" not in str(err.value) and str(err.value).startswith("one_query_attention_append: ")


@interp
def test_static_cache_token_step_appends_in_the_kernel_and_compiles_in_place(monkeypatch):
    """``StaticKVCache.attend`` on a token step the fused kernel takes (on CUDA; here the interpreter, by letting
    ``_fused_append`` accept CPU tensors): one ``arbitor::one_query_attention_append`` call, the same output and
    caches as ``update`` + the kernel under ``update``'s mask; compiled, Inductor calls the op on the cache buffers
    themselves (no copy of a cache in the generated code) and the cache holds the step's row afterwards."""
    from arbitor.model.attention import StaticKVCache
    fused = lambda q, *a: decode_attention if decode_attention.check_append_inputs(q, *a) is None else None  # noqa
    # the unfused path's attention on the CPU: the same kernel (on CUDA ``cached_attention`` takes it)
    monkeypatch.setattr(attention, "cached_attention", lambda q, k, v, mask: one_query_attention(q, k, v, mask))

    def cache_at(p):
        c = StaticKVCache(1, 1, 2, 16, 40, BF16, "cpu")
        g = torch.Generator().manual_seed(1)
        c.k[0].copy_(torch.randn(1, 2, 40, 16, generator=g))
        c.v[0].copy_(torch.randn(1, 2, 40, 16, generator=g))
        c.pos.fill_(p)
        c.length = p
        return c

    q, k, v = (t.transpose(1, 2) for t in torch.randn(3, 1, 1, 2, 16).to(BF16))
    plain, appended = cache_at(7), cache_at(7)
    ref = plain.attend(0, q, k, v)                      # CPU: update + cached_attention
    monkeypatch.setattr(attention, "_fused_append", fused)
    calls = []
    real = decode_attention.one_query_attention_append_op
    monkeypatch.setattr(decode_attention, "one_query_attention_append_op",
                        lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    out = appended.attend(0, q, k, v)
    assert calls == [{"cache_settled": True}] and torch.equal(out, ref)
    assert torch.equal(appended.k[0], plain.k[0]) and torch.equal(appended.v[0], plain.v[0])
    monkeypatch.setattr(decode_attention, "one_query_attention_append_op", real)

    compiled_cache = cache_at(9)
    code = []
    from torch._inductor.utils import run_and_get_code
    out, code = run_and_get_code(torch.compile(lambda q, k, v: compiled_cache.attend(0, q, k, v) * 2), q, k, v)
    eager_cache = cache_at(9)
    assert torch.equal(out, eager_cache.attend(0, q, k, v) * 2)
    assert torch.equal(compiled_cache.k[0], eager_cache.k[0]) and torch.equal(compiled_cache.v[0], eager_cache.v[0])
    text = "\n".join(code)
    assert "one_query_attention_append" in text and "clone" not in text and "copy_" not in text
