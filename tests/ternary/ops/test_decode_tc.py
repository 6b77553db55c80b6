"""``decode_tc``: the tensor-core decode GEMV of frozen layers.

* Its inline PTX (``tc_gemv_asm``) runs for one whole warp in a small interpreter of the instructions it uses
  (``tests/ptxsim.py``; ``mma.sync.m16n8k16`` from the PTX ISA's fragment layouts), fed the operands the kernel passes:
  every output of the warp equals ``x @ (T * S).T``. This is the GPU-only code path checked on the CPU.
* Under ``TRITON_INTERPRET`` the kernel (its plain-load form) matches the reference at odd shapes, every
  token count, group size and K split.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from ptxsim import Memory, f32, run  # noqa: E402  (tests/ is on sys.path: conftest.py)

from arbitor.ternary.format import pack_ternary, tc_tiles  # noqa: E402
from arbitor.ternary.ops.decode_tc import TABLE, tc_gemv_asm  # noqa: E402


def _warp_outputs(M, N, K, gs, R, tokens, f16, seed=0, x_ahead=True, ahead=1, group_columns=False, l2_prefetch=0,
                  ring=0, pdl=False, tiled=False, early_trigger=False):
    """One warp (program 0, warp 0, the whole K) through the PTX: ``(y [M, N] from the warp's accumulators,
    mask of the outputs it owns, reference)``; the operands as ``decode_tc_kernel`` passes them. ``tiled``: the
    weights and scales in memory in the ``tc`` layout (``format.tc_tiles``), the pointers at the lanes' units."""
    g_ = torch.Generator().manual_seed(seed)
    t = torch.randint(-1, 2, (N, K), generator=g_).to(torch.int8)
    t[0, :16] = torch.tensor([1, -1, 0, 1] * 4)
    S = torch.rand(N, K // gs, generator=g_) + 0.5
    dtype = torch.float16 if f16 else torch.bfloat16
    x = torch.randn(M, K, generator=g_).to(dtype)
    packed = pack_ternary(t)
    mem = Memory()
    tiles = tc_tiles(packed, S, K, gs) if tiled else (packed, S)
    wbase = mem.add(tiles[0].numpy().tobytes())
    sbase = mem.add(tiles[1].numpy().tobytes())
    xbase = mem.add(x.view(torch.int16).numpy().tobytes())
    tbase = mem.add(np.array([TABLE], dtype=np.int32).tobytes())
    KW, G = K // 16, K // gs
    na = {1: 2, 8: 4, 16: 8}[tokens]
    asm = tc_gemv_asm(R, gs, tokens, f16, x_ahead, ahead, group_columns, l2_prefetch, ring, pdl=pdl, tiled=tiled,
                      early_trigger=early_trigger)
    # group_columns: lane tq's words 4tq.., its first scale group and x columns 64tq..
    wq, xq = (4, 64) if group_columns else (1, 16)
    sq = {64: 2, 128: 1, 256: 0}[gs] if group_columns else 0
    operands = []
    for lane in range(32):
        g, tq = lane // 4, lane % 4
        ops = {}
        k = na * R
        for r in range(R):
            for h in range(2):
                row = min(16 * r + g + 8 * h, N - 1)
                # tiled: unit (block r, chunk 0, h, lane), 16 bytes; the row layout: the lane's first word
                ops[k] = wbase + (16 * ((r * (K // 256) * 2 + h) * 32 + lane) if tiled
                                  else 4 * (row * KW + wq * tq))
                k += 1
        for r in range(R):
            for h in range(2):
                row = min(16 * r + g + 8 * h, N - 1)
                ops[k] = sbase + (4 * (((r * (K // 256) * 2 + h) * 8 + g) * (256 // gs)) if tiled
                                  else 4 * (row * G + sq * (tq % 2)))
                k += 1
        ops[k] = xbase + 2 * (min(g, M - 1) * K + xq * tq)
        ops[k + 1] = xbase + 2 * (min(g + 8, M - 1) * K + xq * tq)
        ops[k + 2] = K // 256
        ops[k + 3] = tbase
        ops[k + 4] = int(g == tq)
        operands.append(ops)
    outs = run(asm, operands, mem, f16)
    y = torch.zeros(M, N, dtype=torch.float64)
    owned = torch.zeros(M, N, dtype=torch.bool)
    for lane in range(32):
        g, tq = lane // 4, lane % 4
        for r in range(R):
            for a in range(na):
                i = 2 * a if tokens == 1 else a
                m, n = 2 * tq + i % 2 + 8 * (i // 4), 16 * r + g + 8 * ((i % 4) // 2)
                if m < M and n < N:
                    y[m, n] = 0.5 * f32(outs[lane][na * r + a])
                    owned[m, n] = True
    ref = x.double() @ (t.double() * S.double().repeat_interleave(gs, 1)).T
    return y, owned, ref


@pytest.mark.parametrize("M,tokens", [(1, 1), (5, 8), (8, 8), (11, 16), (16, 16)])
@pytest.mark.parametrize("gs,K,x_ahead,ahead", [(64, 512, True, 1), (256, 768, True, 1), (64, 768, False, 1),
                                                (128, 1280, False, 2), (64, 256, False, 3), (64, 1024, False, 3)])
def test_ptx_warp_matches_reference(M, tokens, gs, K, x_ahead, ahead):
    """Every output the warp owns (2 blocks of 16 features, 37 features: the last block's rows past N clamped),
    from the PTX run lane by lane, equals ``x @ (T * S).T`` to fp32 accumulation error -- with 2 and 3 chunks
    (the software-pipelined loop leaves from any of its unrolled copies), x loaded a chunk ahead or not, 1-3 chunks of
    weights in flight."""
    y, owned, ref = _warp_outputs(M, 37 if M > 1 else 29, K, gs, 2, tokens, f16=False, x_ahead=x_ahead, ahead=ahead)
    want = torch.zeros_like(owned)
    want[:M, :min(32, ref.shape[1])] = True
    assert torch.equal(owned, want)
    err = (y - ref)[owned].abs().max().item()
    assert err <= 1e-5 * ref.abs().max().item(), err


@pytest.mark.parametrize("M,tokens", [(1, 1), (6, 8), (13, 16)])
@pytest.mark.parametrize("gs,K,x_ahead,ahead,ring", [(64, 512, True, 1, 0), (128, 768, False, 2, 0),
                                                     (256, 1024, False, 3, 0), (64, 768, True, 1, 2),
                                                     (128, 1024, False, 1, 3)])
def test_ptx_tiled_layout_gives_the_row_layouts_bits(M, tokens, gs, K, x_ahead, ahead, ring):
    """The ``tc`` layout (``format.tc_tiles``; a warp of 2 blocks, 32 features) feeds every lane's registers exactly
    what the row layout's loads do: every output is the same fp32 bits, at every group size, with 1-3 chunks in
    flight, x a chunk ahead or not, and through the shared-memory ring."""
    N = 32
    rows = _warp_outputs(M, N, K, gs, 2, tokens, f16=False, x_ahead=x_ahead, ahead=ahead, ring=ring, seed=5)
    tiled = _warp_outputs(M, N, K, gs, 2, tokens, f16=False, x_ahead=x_ahead, ahead=ahead, ring=ring, seed=5,
                          tiled=True)
    assert torch.equal(rows[1], tiled[1]) and rows[1].any()
    assert torch.equal(rows[0], tiled[0])
    err = (tiled[0] - tiled[2])[tiled[1]].abs().max().item()
    assert err <= 1e-5 * tiled[2].abs().max().item(), err


def test_ptx_tiled_loads_are_16_byte_vectors():
    """In the ``tc`` layout a lane's words of a chunk come in one 16-byte load a feature (``ld...v4.b32``), never a
    4-byte word load, and the pointers step 1 KB of words and ``64 * 256 / gs`` bytes of scales a chunk."""
    for gs in (64, 128, 256):
        asm = tc_gemv_asm(1, gs, 1, False, True, 1, tiled=True)
        loads = [ln for ln in asm.splitlines() if "ld.global" in ln and "{tw" in ln]
        assert loads and all(".v4.b32" in ln for ln in loads)
        assert "add.s64 twp0, twp0, 1024;" in asm and f"add.s64 tsp0, tsp0, {64 * 256 // gs};" in asm
    with pytest.raises(ValueError, match="exclude"):
        tc_gemv_asm(1, 64, 1, False, True, 1, True, tiled=True)


@pytest.mark.parametrize("gs,K,x_ahead,ahead", [(64, 512, True, 1), (128, 768, True, 1), (256, 512, True, 1),
                                                (64, 768, False, 1), (64, 1024, False, 3)])
def test_ptx_group_columns_matches_reference(gs, K, x_ahead, ahead):
    """One row with ``group_columns`` (each lane's 64 contiguous columns, the groups apart in the mma's token
    columns, the lanes' sums added by ``shfl.bfly``): every output equals ``x @ (T * S).T``, at every group size
    (a lane's columns in one group of 64, 128 or 256), pipelined or not."""
    y, owned, ref = _warp_outputs(1, 29, K, gs, 2, 1, f16=False, x_ahead=x_ahead, ahead=ahead, group_columns=True)
    want = torch.zeros_like(owned)
    want[:1, :29] = True
    assert torch.equal(owned, want)
    err = (y - ref)[owned].abs().max().item()
    assert err <= 1e-5 * ref.abs().max().item(), err


@pytest.mark.parametrize("group_columns", [False, True])
def test_ptx_l2_prefetch_changes_only_the_load_hints(group_columns):
    """``l2_prefetch``: the weight and scale loads carry ``.L2::256B`` (x's do not) and the sums are the same
    bits as without it."""
    asm = tc_gemv_asm(1, 64, 1, False, True, 1, group_columns, 256)
    loads = [line for line in asm.splitlines() if "ld.global" in line]
    assert all(("L2::256B" in line) == ("[tw" in line or "[ts" in line) for line in loads)
    y0, owned, _ = _warp_outputs(1, 29, 512, 64, 2, 1, f16=False, group_columns=group_columns)
    y1, _, _ = _warp_outputs(1, 29, 512, 64, 2, 1, f16=False, group_columns=group_columns, l2_prefetch=256)
    assert torch.equal(y0[owned], y1[owned])


@pytest.mark.parametrize("ring,x_ahead", [(2, False), (3, False), (5, False), (2, True), (3, True), (4, True)])
@pytest.mark.parametrize("M,tokens,gs,K,group_columns", [(1, 1, 64, 1024, False), (1, 1, 64, 1280, True),
                                                         (1, 1, 128, 768, True), (1, 1, 256, 512, False),
                                                         (6, 8, 64, 768, False), (13, 16, 128, 512, False),
                                                         (1, 1, 64, 2048, True)])
def test_ptx_ring_matches_reference(ring, x_ahead, M, tokens, gs, K, group_columns):
    """``ring``: words and scales staged by ``cp.async`` through shared memory, ``ring - 1`` chunks ahead, x loaded
    at each chunk or a chunk ahead in registers: every output equals ``x @ (T * S).T``, with fewer chunks than
    slots, as many and more (1-8 chunks: the loop leaves from any of its unrolled copies); the simulator stops the
    test if a chunk is read before its copy has landed (a missing or too-loose ``cp.async.wait_group``)."""
    N = 29 if M == 1 else 37
    y, owned, ref = _warp_outputs(M, N, K, gs, 2, tokens, f16=False, x_ahead=x_ahead, group_columns=group_columns,
                                  ring=ring)
    want = torch.zeros_like(owned)
    want[:M, :min(32, N)] = True
    assert torch.equal(owned, want)
    err = (y - ref)[owned].abs().max().item()
    assert err <= 1e-5 * ref.abs().max().item(), err


def test_ptx_ring_wait_is_checked(monkeypatch):
    """The simulator's check has teeth: the same PTX with its wait one group looser reads a copy in flight."""
    real = run
    monkeypatch.setattr(sys.modules[__name__], "run", lambda asm, *a, **k: real(
        asm.replace("cp.async.wait_group 2;", "cp.async.wait_group 3;"), *a, **k))
    with pytest.raises(AssertionError, match="in flight"):
        _warp_outputs(1, 29, 1024, 64, 2, 1, f16=False, x_ahead=False, ring=3)


PDL_FORMS = [(1, 1, True, 1, False, 0), (2, 8, True, 1, False, 0), (1, 16, False, 2, False, 0),
             (1, 1, True, 1, True, 0), (1, 1, True, 1, True, 2), (1, 1, False, 1, True, 3), (2, 16, True, 1, False, 2)]


@pytest.mark.parametrize("R,tokens,x_ahead,ahead,group_columns,ring", PDL_FORMS)
def test_ptx_pdl_waits_before_any_load_and_loads_coherently(R, tokens, x_ahead, ahead, group_columns, ring):
    """``pdl`` (a launch as a programmatic dependent): ``griddepcontrol.wait`` comes before the block's first load or
    copy, and no load takes the non-coherent path (``ld.global.nc`` may serve lines older than the kernel the launch
    overlaps: x, or weights written in place just before); nothing else changes."""
    plain = tc_gemv_asm(R, 64, tokens, False, x_ahead, ahead, group_columns, 0, ring)
    pdl = tc_gemv_asm(R, 64, tokens, False, x_ahead, ahead, group_columns, 0, ring, pdl=True)
    lines = [line.strip() for line in pdl.splitlines()]
    memory = [i for i, line in enumerate(lines) if "ld." in line or "cp.async." in line]
    assert lines.count("griddepcontrol.wait;") == 1 and lines.index("griddepcontrol.wait;") < memory[0]
    assert ".nc" not in pdl and "ld.global.nc" in plain
    assert any("[txp" in line and "ld.global.v4.b32" in line for line in lines)      # x, plainly
    assert pdl.replace("griddepcontrol.wait;\n", "").replace("ld.global", "ld.global.nc") == plain


@pytest.mark.parametrize("R,tokens,x_ahead,ahead,group_columns,ring", PDL_FORMS[::2])
def test_ptx_pdl_sums_are_the_same_bits(R, tokens, x_ahead, ahead, group_columns, ring):
    """The same warp's outputs with and without ``pdl``, bit for bit (the simulator runs one kernel: its wait
    returns at once)."""
    M = {1: 1, 8: 6, 16: 13}[tokens]
    args = (M, 29, 768, 64, R, tokens)
    kw = dict(f16=False, x_ahead=x_ahead, ahead=ahead, group_columns=group_columns, ring=ring)
    y0, owned, ref = _warp_outputs(*args, **kw)
    y1, _, _ = _warp_outputs(*args, **kw, pdl=True)
    assert owned.any() and torch.equal(y0[owned], y1[owned])
    assert (y1 - ref)[owned].abs().max().item() <= 1e-5 * ref.abs().max().item()


@pytest.mark.parametrize("R,tokens,x_ahead,ahead,group_columns,ring", PDL_FORMS[:5])
def test_ptx_early_trigger_comes_right_after_the_wait_and_changes_nothing_else(R, tokens, x_ahead, ahead,
                                                                               group_columns, ring):
    """``early_trigger`` (``TcTile.EARLY_TRIGGER``): with ``pdl`` one ``griddepcontrol.launch_dependents`` right after
    the wait, before any load, and otherwise the PTX of ``pdl`` alone; without ``pdl`` it adds nothing. The same
    warp's outputs, bit for bit."""
    args = (R, 64, tokens, False, x_ahead, ahead, group_columns, 0, ring)
    pdl = tc_gemv_asm(*args, pdl=True)
    early = tc_gemv_asm(*args, pdl=True, early_trigger=True)
    lines = [line.strip() for line in early.splitlines()]
    wait = lines.index("griddepcontrol.wait;")
    assert lines[wait + 1] == "griddepcontrol.launch_dependents;" and lines.count(lines[wait + 1]) == 1
    assert not any("ld." in line or "cp.async." in line for line in lines[:wait + 2])
    assert early.replace("griddepcontrol.launch_dependents;\n", "") == pdl
    assert tc_gemv_asm(*args, early_trigger=True) == tc_gemv_asm(*args)
    M = {1: 1, 8: 6, 16: 13}[tokens]
    kw = dict(f16=False, x_ahead=x_ahead, ahead=ahead, group_columns=group_columns, ring=ring, pdl=True)
    y0, owned, _ = _warp_outputs(M, 29, 768, 64, R, tokens, **kw)
    y1, _, _ = _warp_outputs(M, 29, 768, 64, R, tokens, **kw, early_trigger=True)
    assert owned.any() and torch.equal(y0[owned], y1[owned])


def test_pdl_is_a_tile_field_and_needs_sm90_cuda(monkeypatch):
    """``TcTile.PDL`` is on in every default tile and a config can turn it off; it takes effect only where
    ``pdl_ok`` (a CUDA device of compute capability 9.0+, kernels not interpreted): never on the CPU or under the
    interpreter, not on an sm_80 device."""
    from arbitor.ternary.ops import triton_common
    from arbitor.ternary.ops.decode_tc import TC_TILE_ONE_WAVE, TC_TILE_SHORT_K, TC_TILES, tc_tile
    assert all(t.PDL for t in (*TC_TILES.values(), TC_TILE_SHORT_K[1], TC_TILE_ONE_WAVE[1]))
    assert tc_tile(1, 4096, {"PDL": False}).PDL is False
    assert not triton_common.pdl_ok(torch.device("cpu"))
    monkeypatch.setattr(triton_common, "_capability", lambda index: {0: (8, 0), 1: (9, 0)}[index])
    monkeypatch.setattr(triton_common, "INTERPRETED", False)
    assert [triton_common.pdl_ok(torch.device("cuda", i)) for i in (0, 1)] == [False, True]
    monkeypatch.setattr(triton_common, "INTERPRETED", True)
    assert not triton_common.pdl_ok(torch.device("cuda", 1))


def test_ptx_warp_fp16_and_group_128():
    y, owned, ref = _warp_outputs(3, 16, 512, 128, 1, 8, f16=True, seed=3)
    assert owned[:3, :16].all()
    assert (y - ref)[owned].abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_ptx_bad_arguments():
    with pytest.raises(ValueError, match="group_size"):
        tc_gemv_asm(1, 32, 1, False)
    with pytest.raises(ValueError, match="tokens"):
        tc_gemv_asm(1, 64, 4, False)
    with pytest.raises(ValueError, match="ahead"):
        tc_gemv_asm(1, 64, 1, False, True, 2)
    with pytest.raises(ValueError, match="group_columns"):
        tc_gemv_asm(1, 64, 8, False, True, 1, True)
    with pytest.raises(ValueError, match="l2_prefetch"):
        tc_gemv_asm(1, 64, 1, False, True, 1, False, 32)
    with pytest.raises(ValueError, match="ring"):
        tc_gemv_asm(1, 64, 1, False, False, 1, False, 0, 1)
