"""The counter ballot op: the fused Triton step (``counter_triton.py``) against the torch reference
(``counter.py``).

CPU: Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is imported, as in
``test_linear_votes.py``); the results must be identical integers. GPU (``-m gpu``): the compiled
kernel on realistic shapes, where an FMA may move a weight sitting on a rounding boundary.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton")

from arbitor.ternary.format import counter_packed_shape, pack_counters, pack_ternary  # noqa: E402
from arbitor.ternary.ops.counter import counter_ballot_, counter_block_torch_, counter_step_scale  # noqa: E402
from arbitor.ternary.ops.hashing import hash_base  # noqa: E402
from arbitor.ternary.ops.counter_triton import counter_block_triton_, row_scale_triton  # noqa: E402
from arbitor.ternary.ops.triton_common import INTERPRETED  # noqa: E402

interp = pytest.mark.skipif(not INTERPRETED, reason="needs TRITON_INTERPRET=1 (CPU interpreter)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED, reason="needs CUDA")


def _state(N, K, gs, bits, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    T = pack_ternary(torch.randint(-1, 2, (N, K), generator=g))
    C = pack_counters(torch.randint(0, 1 << bits, (N, K), generator=g), bits)
    corr = torch.randint(-50, 50, (N, K // gs), generator=g)
    gw = torch.randn(N, K, generator=g) * torch.rand(N, 1, generator=g)
    gw[0, : min(K, 5)] = 0.0  # exact zeros never move and never vote
    return [t.to(device) for t in (gw, T, C, corr)]


def _hash(key, ballot, device="cpu", bad=0):
    """``(hash_key, step_counter, pending, bad)`` device scalars as the layer hands them to the block step (the
    ballot index ``step_counter + pending``)."""
    t = lambda v, dt=torch.int64: torch.tensor(v, dtype=dt, device=device)  # noqa: E731
    return t(key), t(ballot - 1), t(1), t(bad, torch.int32)


def _counters(device="cpu", step=4):
    return (torch.tensor(step, device=device), torch.zeros((), dtype=torch.int64, device=device),
            torch.zeros((), dtype=torch.int64, device=device))


@interp
@pytest.mark.parametrize("N,K,gs,bits,rate", [
    (5, 36, 4, 1, 0.7),       # K not a multiple of 8: padding counters/codes in the last bytes
    (3, 36, 4, 2, 1.0),
    (7, 96, 32, 4, 0.5),
    (2, 256, 256, 8, 20.0),   # one group wider than 128 columns: BLOCK_K grows to the group
    (9, 200, 8, 4, 3.0),      # several programs along K, a ragged last tile
    (5, 36, 4, 5, 1.3),       # 5-bit counters: two planes, both with padding (36 = 18 nibbles, 4.5 bit-bytes)
    (6, 264, 8, 5, 2.0),      # 5-bit counters over several programs along K, a ragged last tile
    (4, 64, 16, 5, 1e12),     # steps far past 2**31 rungs: clamped to the ladder (no int32 saturation)
])
def test_triton_counter_block_matches_reference(N, K, gs, bits, rate):
    _check_block_matches_reference(N, K, gs, bits, rate, row0=3)


@interp
def test_triton_counter_block_hash_index_crosses_2_to_the_32():
    """The kernel forms the int64 hash index ``(row0 + r) * K + k`` from 32-bit words with a carry: rows whose
    index crosses 2**32 mid-row (row0 * 200 = 2**32 - 96) draw the reference's uniforms."""
    _check_block_matches_reference(4, 200, 8, 5, 1.0, row0=2 ** 32 // 200)


@interp
def test_triton_counter_block_hash_carry_inside_an_octet():
    """K not a multiple of 8: an octet's indices can cross 2**32 between two of its weights (row0 * 36 = 2**32 - 4:
    the first octet's weights 4-7 carry into the high word)."""
    _check_block_matches_reference(3, 36, 4, 5, 1.0, row0=2 ** 32 // 36)


@interp
@pytest.mark.parametrize("octets,warps", [(16, 1), (64, 2), (512, 4)])
def test_triton_counter_block_tiles(monkeypatch, octets, warps):
    """Other tiles of the step kernel (rows and columns ragged against the tile) give the reference's integers."""
    from arbitor.ternary.ops import counter_triton
    monkeypatch.setattr(counter_triton, "STEP_OCTETS", octets)
    monkeypatch.setattr(counter_triton, "STEP_WARPS", warps)
    for gs in (4, 16, 64):
        _check_block_matches_reference(13, 320, gs, 5, 1.5, row0=1)


def _check_block_matches_reference(N, K, gs, bits, rate, row0):
    gw, T, C, corr = _state(N, K, gs, bits, seed=N * K + bits)
    scale = counter_step_scale(gw, rate)
    ref = [t.clone() for t in (T, C, corr)]
    hk = _hash(12345, 7)
    assert int(hash_base(hk[0], hk[1] + hk[2])) == hash_base(12345, 7)   # the tensor hash == the host hash
    counter_block_torch_(gw, scale, *ref, *hk, row0=row0, in_features=K, group_size=gs, bits=bits)
    out = [t.clone() for t in (T, C, corr)]
    counter_block_triton_(gw, scale, *out, *hk, row0=row0, in_features=K, group_size=gs, bits=bits)
    for name, a, b in zip(("T_packed", "C_packed", "corr_accum"), ref, out):
        assert torch.equal(a, b), name
    assert not torch.equal(ref[0], T) and not torch.equal(ref[2], corr)   # the step did move something
    if bits == 4:   # a 16-bit grad_W is read as is (the GPU path skips the fp32 copy): same integers for its values
        gw16 = gw.to(torch.bfloat16)
        ref16, out16 = [t.clone() for t in (T, C, corr)], [t.clone() for t in (T, C, corr)]
        counter_block_torch_(gw16.float(), scale, *ref16, *hk, row0, K, gs, bits)
        counter_block_triton_(gw16, scale, *out16, *hk, row0, K, gs, bits)
        assert all(torch.equal(a, b) for a, b in zip(ref16, out16))
        sc16 = row_scale_triton(gw16, rate, bad := torch.zeros((), dtype=torch.int32))   # the fused row scale
        torch.testing.assert_close(sc16, counter_step_scale(gw16.float(), rate), rtol=1e-6, atol=0)
        assert int(bad) == 0
        gw16[1, 2] = float("nan")
        row_scale_triton(gw16, rate, bad)
        assert int(bad) == 1
    for fn in (counter_block_torch_, counter_block_triton_):     # a skipped ballot writes nothing
        skip = [t.clone() for t in (T, C, corr)]
        fn(gw, scale, *skip, *_hash(12345, 7, bad=1), row0, K, gs, bits)
        assert all(torch.equal(a, b) for a, b in zip(skip, (T, C, corr)))


@interp
@pytest.mark.parametrize("bits", [4, 5])
def test_counter_ballot_impls_agree_over_row_blocks(monkeypatch, bits):
    monkeypatch.setenv("ARB_TORCH_BLOCK_ELEMS", str(3 * 64))  # 3 rows per block: several blocks, row0 > 0
    g = torch.Generator().manual_seed(0)
    x, gy = torch.randn(11, 64, generator=g), torch.randn(11, 10, generator=g)
    _, T, C, corr = _state(10, 64, 16, bits, seed=1)
    states = {}
    for impl in ("torch", "triton"):       # 5 bits: row blocks of a two-plane C_packed are still row slices
        s = [t.clone() for t in (T, C, corr)] + list(_counters())
        counter_ballot_(gy, x, *s, hash_key=torch.tensor(99), in_features=64, group_size=16, bits=bits, rate=0.8,
                        impl=impl)
        states[impl] = s
    for a, b in zip(states["torch"], states["triton"]):
        assert torch.equal(a, b)
    assert int(states["torch"][4]) == 1 and int(states["torch"][5]) == 0        # pending +1, nonfinite +0
    with pytest.raises(ValueError, match="impl"):
        counter_ballot_(gy, x, T, C, corr, *_counters(), torch.tensor(1), 64, 16, 4, 0.5, impl="tilelang")


def test_triton_counter_block_rejects_bad_operands():
    gw, T, C, corr = _state(4, 32, 8, 2, seed=0)
    scale = counter_step_scale(gw, 1.0)
    hk = _hash(1, 1)
    with pytest.raises(TypeError, match="float32"):
        counter_block_triton_(gw, scale.double(), T, C, corr, *hk, 0, 32, 8, 2)
    with pytest.raises(ValueError, match="contiguous"):
        counter_block_triton_(gw.t().contiguous().t(), scale, T, C, corr, *hk, 0, 32, 8, 2)
    assert counter_packed_shape(4, 32, 2) == tuple(C.shape)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("N,K,gs,bits", [(1536, 384, 128, 4), (384, 1536, 64, 2), (1000, 520, 8, 1),
                                         (1000, 520, 8, 5), (1000, 520, 4, 5), (96, 1024, 256, 4),
                                         (300, 4096, 64, 5)])   # groups of 4, wider than a tile, many tiles
def test_triton_counter_block_on_cuda(N, K, gs, bits):
    gw, T, C, corr = _state(N, K, gs, bits, seed=1, device="cuda")
    scale = counter_step_scale(gw, 0.5)
    ref = [t.clone() for t in (T, C, corr)]
    hk = _hash(5, 11, "cuda")
    counter_block_torch_(gw, scale, *ref, *hk, row0=0, in_features=K, group_size=gs, bits=bits)
    out = [t.clone() for t in (T, C, corr)]
    counter_block_triton_(gw, scale, *out, *hk, row0=0, in_features=K, group_size=gs, bits=bits)
    torch.cuda.synchronize()
    assert torch.equal(ref[2], out[2])                          # votes: integer, exact
    for a, b in zip(ref[:2], out[:2]):
        assert (a != b).float().mean().item() < 1e-4            # an FMA may flip a boundary case
