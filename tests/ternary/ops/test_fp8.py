"""fp8 ``grad_W`` (``ops/fp8.py``, ``ops/fp8_triton.py``, ``ops/gradw.py``): the format, the Triton quantiser
against the torch reference (CPU interpreter, odd shapes), both rules' ballots with ``gradw_fp8`` on both
implementations, the layer and config setting; GPU tests with ``-m gpu``."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from arbitor.ternary.config import TernaryConfig  # noqa: E402
from arbitor.ternary.format import counter_packed_shape, pack_counters, pack_ternary, unpack_ternary  # noqa: E402
from arbitor.ternary.layer import TernaryScaleTensor  # noqa: E402
from arbitor.ternary.ops import fp8  # noqa: E402
from arbitor.ternary.ops.counter import counter_ballot_  # noqa: E402
from arbitor.ternary.ops.fp8 import (FP8_DTYPE, FP8_MAX, check_fp8_device, dequantized_operands,  # noqa: E402
                                     fp8_exponents, padded_tokens, quantize_t_torch, scaled_gradw)
from arbitor.ternary.ops.fp8_triton import quantize_t_triton  # noqa: E402
from arbitor.ternary.ops.gradw import gradw_chunks, use_fp8  # noqa: E402
from arbitor.ternary.ops.triton_common import INTERPRETED  # noqa: E402
from arbitor.ternary.ops.votes import bigint_ballot_torch_, group_votes  # noqa: E402
from arbitor.ternary.ops.votes_triton import bigint_ballot_triton_  # noqa: E402

interp = pytest.mark.skipif(not INTERPRETED, reason="CPU interpreter tests need TRITON_INTERPRET=1")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED, reason="needs CUDA")


def _i64(v, device="cpu"):
    return torch.tensor(v, dtype=torch.int64, device=device)


def _flag(device="cpu"):
    return torch.zeros((), dtype=torch.int32, device=device)


# ----------------------------------------------------------------------------------------- the format
@pytest.mark.parametrize("amax,e", [(FP8_MAX, 0), (448.0001, 1), (1.75, -8), (1.7500001, -7), (1.0, -8),
                                   (2.0 ** 20, 12), (0.0, -126), (1e-42, -126), (3.0e38, 120)])
def test_exponent_is_the_smallest_that_fits_448(amax, e):
    got = int(fp8_exponents(torch.tensor([amax], dtype=torch.float32)))
    assert got == e
    if amax > 1e-37:
        assert amax * 2.0 ** -got <= FP8_MAX < amax * 2.0 ** -(got - 1)


@pytest.mark.parametrize("M,C,dtype", [(1, 3, torch.float32), (17, 5, torch.bfloat16), (33, 70, torch.float16),
                                       (64, 16, torch.float32)])
def test_reference_quantiser_layout_and_bounds(M, C, dtype):
    g = torch.Generator().manual_seed(M * C)
    t = (torch.randn(M, C, generator=g) * torch.logspace(-3, 3, C)).to(dtype)
    t[:, 0] = 0                                        # an all-zero feature
    q, scale = quantize_t_torch(t)
    assert q.dtype == FP8_DTYPE and q.shape == (C, padded_tokens(M)) and scale.shape == (C,)
    assert padded_tokens(M) % 16 == 0 and padded_tokens(M) >= M
    assert not q[:, M:].float().any()                  # padding tokens are 0
    mant, _ = torch.frexp(scale)
    assert torch.all(mant == 0.5)                      # powers of two
    back = q.float() * scale[:, None]
    qa = q.float().abs().amax(dim=1)
    assert torch.all(qa[1:] >= FP8_MAX / 2) and torch.all(qa <= FP8_MAX)     # each feature uses its top binade
    rel = (back[:, :M].t() - t.float()).abs() / t.float().abs().amax(dim=0).clamp_min(1e-30)
    assert rel.max() <= 2.0 ** -4                      # half an e4m3 step of the top binade (16 of 256..448)


# ----------------------------------------------------------------------------------------- Triton quantiser
@interp
@pytest.mark.parametrize("M,C,dtype", [(1, 1, torch.float32), (37, 5, torch.float32), (100, 70, torch.bfloat16),
                                       (16, 16, torch.float16), (3, 130, torch.float32), (65, 64, torch.bfloat16)])
def test_triton_quantiser_equals_reference(M, C, dtype):
    g = torch.Generator().manual_seed(7 * M + C)
    t = (torch.randn(M, C, generator=g) * torch.logspace(-4, 4, C)).to(dtype)
    t[0, 0] = 0
    bad = _flag()
    q1, s1 = quantize_t_torch(t)
    q2, s2 = quantize_t_triton(t, bad)
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8))
    assert torch.equal(s1, s2) and int(bad) == 0


@interp
@pytest.mark.parametrize("partials", [16, 2, 1])
def test_triton_quantiser_over_many_tiles(monkeypatch, partials):
    """Small tiles: a feature's maximum merges across row tiles -- one partial a tile (7 tiles, 16 partials at
    most), a slice of 4 and of 3 tiles (2), all 7 in one program (1) -- and the cast's tiles cover ``Mp``."""
    from arbitor.ternary.ops import fp8_triton
    monkeypatch.setattr(fp8_triton, "AMAX_TILE", (16, 16))
    monkeypatch.setattr(fp8_triton, "CAST_TILE", (16, 32))
    monkeypatch.setattr(fp8_triton, "AMAX_PARTIALS", partials)
    t = torch.randn(101, 70) * torch.logspace(-2, 2, 70)
    t[100, 5] = 1e4                                                    # the maximum in the last row tile
    t[40, 6] = 1e4                                                     # ... and in a middle one
    q1, s1 = quantize_t_torch(t)
    bad = _flag()
    q2, s2 = quantize_t_triton(t, bad)
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s1, s2) and int(bad) == 0
    t[50, 60] = float("nan")                                           # a non-finite entry in any slice is seen
    quantize_t_triton(t, bad)
    assert int(bad) == 1


@interp
def test_triton_rounding_at_every_e4m3_tie_and_subnormal():
    """Each e4m3 value, the midpoints between neighbours (ties to even) and one float32 ulp either side, with a
    448 in the column so that its scale is 1: the bytes equal torch's cast."""
    codes = torch.arange(0, 127, dtype=torch.uint8)                 # +0 .. 448 (0x7F is NaN)
    vals = codes.view(FP8_DTYPE).float()
    mids = (vals[1:] + vals[:-1]) / 2
    below, above = torch.nextafter(mids, torch.zeros(())), torch.nextafter(mids, torch.full((), 500.0))
    probes = torch.cat([vals, mids, below, above])
    probes = torch.cat([probes, -probes, torch.tensor([FP8_MAX, 1e-30, 2.0 ** -10, 3 * 2.0 ** -11])])
    t = probes[:, None]
    q1, s1 = quantize_t_torch(t)
    q2, s2 = quantize_t_triton(t, _flag())
    assert float(s1) == 1.0
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8))


@interp
def test_triton_quantiser_strides_and_non_finite_flag():
    base = torch.randn(30, 50)
    t = base[:, 3:40]                                                   # row stride 50
    q1, s1 = quantize_t_torch(t)
    q2, s2 = quantize_t_triton(t, _flag())
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s1, s2)
    for bad_value in (float("nan"), float("inf"), float("-inf")):
        t = torch.randn(20, 9)
        t[13, 4] = bad_value
        flag = _flag()
        quantize_t_triton(t, flag)
        assert int(flag) == 1
    with pytest.raises(ValueError, match="unit stride"):
        quantize_t_triton(torch.randn(8, 6).t(), _flag())


# ----------------------------------------------------------------------------------------- the GEMM
def test_scaled_gradw_is_the_dequantized_product():
    g = torch.Generator().manual_seed(3)
    gy, x = torch.randn(40, 32, generator=g), torch.randn(40, 48, generator=g)
    gyq, sgy = quantize_t_torch(gy)
    xq, sx = quantize_t_torch(x)
    got = scaled_gradw(gyq, sgy, xq, sx)
    gyd, xd = dequantized_operands(gy, x)
    ref = gyd.t() @ xd
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=2 ** -8, atol=1e-6)
    # and within fp8 rounding of the exact product: a few per cent of its scale, not the same numbers
    exact = gy.t() @ x
    err = (ref - exact).norm() / exact.norm()
    assert 1e-3 < err < 0.08


def test_gradw_chunks_fp8_rows_are_multiples_of_16():
    g = torch.Generator().manual_seed(4)
    gy, x = torch.randn(20, 80, generator=g).to(torch.bfloat16), torch.randn(20, 32, generator=g).to(torch.bfloat16)
    whole = torch.cat([c for _, c in gradw_chunks(gy, x, 80, True, _flag())])
    parts = list(gradw_chunks(gy, x, 37, True, _flag()))               # 37 -> 32 rows a chunk
    assert [n0 for n0, _ in parts] == [0, 32, 64] and [c.shape[0] for _, c in parts] == [32, 32, 16]
    assert torch.equal(torch.cat([c for _, c in parts]), whole)


@interp
def test_gradw_chunks_fp8_takes_any_strides():
    """An upstream gradient may be expanded (``y.sum()``: stride 0) or transposed: the same chunks as contiguous."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(24, 32, generator=g)
    for gy in (torch.full((), 0.5).expand(24, 16), torch.randn(16, 24, generator=g).t()):
        got = torch.cat([c for _, c in gradw_chunks(gy, x, 16, True, _flag())])
        want = torch.cat([c for _, c in gradw_chunks(gy.contiguous(), x, 16, True, _flag())])
        assert torch.equal(got, want)


def test_use_fp8_needs_the_setting_and_a_16_multiple_shape():
    cpu = torch.device("cpu")
    assert use_fp8(True, 32, 64, cpu) and not use_fp8(False, 32, 64, cpu)
    assert not use_fp8(True, 65, 64, cpu) and not use_fp8(True, 32, 72, cpu)
    with pytest.raises(ValueError, match="gradw_fp8 runs on CUDA"):
        check_fp8_device(torch.device("meta"))


def test_an_old_gpu_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(ValueError, match=r"^gradw_fp8 needs fp8 tensor cores \(CUDA sm_89 or later\); cuda:0 is sm_80"):
        check_fp8_device(torch.device("cuda:0"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_fp8_device(torch.device("cuda:0"))


# ----------------------------------------------------------------------------------------- ballots
def _exact_data(M, N, K, seed):
    """Operands whose fp8 rounding is exact and whose products sum exactly in bf16: small integers times a power
    of two per feature (so the reference and the fp8 GEMM give the very same ``grad_W``)."""
    g = torch.Generator().manual_seed(seed)
    gy = torch.randint(-1, 2, (M, N), generator=g).float() * 2.0 ** -10
    x = torch.randint(-1, 2, (M, K), generator=g).float() * 4.0
    return gy, x


def _flip_data():
    """One ``grad_W`` entry whose sign fp8 rounding flips: 1 + 1 - 2.0625 is -0.0625, but 2.0625 rounds to 2 in
    e4m3 (steps of 0.25 there) and the fp8 product is +0 -- and another, 1.0625 - 1, which rounds to 0."""
    gy = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-2.0625, 1.0625], [0.0, -1.0]] + [[0.0, 0.0]] * 12)
    x = torch.ones(16, 1)
    return gy, x


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=interp)])
def test_bigint_fp8_votes_are_the_fp8_products_signs(impl):
    gy, x = _flip_data()
    gy = torch.cat([gy, torch.zeros(16, 14)], dim=1)                    # N = 16
    x = torch.cat([x, torch.zeros(16, 15)], dim=1)                      # K = 16
    T = pack_ternary(torch.ones(16, 16, dtype=torch.int8))
    fn = bigint_ballot_torch_ if impl == "torch" else bigint_ballot_triton_
    votes = {}
    for use in (False, True):
        corr = torch.zeros(16, 4, dtype=torch.int64)
        fn(gy, x, T, corr, _i64(0), _i64(0), 16, 4, gradw_fp8=use)
        votes[use] = corr
    # grad_W[0, 0] = 1 + 1 - 2.0625 = -0.0625 (vote +1); in fp8: 1 + 1 - 2 = 0 (no vote)
    assert int(votes[False][0, 0]) == 1 and int(votes[True][0, 0]) == 0
    # grad_W[1, 0] = 1 + 1.0625 - 1 > 0 (vote -1); in fp8 1.0625 -> 1 (ties to even): 1 + 1 - 1 = 1 > 0, the same
    assert int(votes[False][1, 0]) == -1 and int(votes[True][1, 0]) == -1
    gyd, xd = dequantized_operands(gy, x)
    assert torch.equal(votes[True], group_votes(gyd.t() @ xd, unpack_ternary(T, 16), 4))


@interp
@pytest.mark.parametrize("M,N,K,gs", [(24, 32, 48, 16), (7, 16, 64, 8), (40, 48, 32, 32)])
def test_bigint_fp8_ballot_impls_agree(M, N, K, gs):
    gy, x = _exact_data(M, N, K, seed=M + N)
    g = torch.Generator().manual_seed(K)
    T = pack_ternary(torch.randint(-1, 2, (N, K), generator=g, dtype=torch.int8))
    out = {}
    for impl, fn in (("torch", bigint_ballot_torch_), ("triton", bigint_ballot_triton_)):
        corr = torch.zeros(N, K // gs, dtype=torch.int64)
        pending, nonfinite = _i64(0), _i64(0)
        fn(gy.to(torch.bfloat16), x.to(torch.bfloat16), T, corr, pending, nonfinite, K, gs, gradw_fp8=True)
        out[impl] = (corr, int(pending), int(nonfinite))
    assert torch.equal(out["torch"][0], out["triton"][0]) and out["torch"][0].abs().sum() > 0
    assert out["torch"][1:] == out["triton"][1:] == (1, 0)


@interp
@pytest.mark.parametrize("where", ["grad_y", "x"])
def test_fp8_ballot_with_a_non_finite_input_casts_nothing(where):
    gy, x = _exact_data(16, 16, 32, seed=1)
    (gy if where == "grad_y" else x)[5, 3] = float("nan")
    T = pack_ternary(torch.ones(16, 32, dtype=torch.int8))
    for fn in (bigint_ballot_torch_, bigint_ballot_triton_):
        corr, pending, nonfinite = torch.zeros(16, 2, dtype=torch.int64), _i64(0), _i64(0)
        fn(gy.to(torch.bfloat16), x.to(torch.bfloat16), T, corr, pending, nonfinite, 32, 16, gradw_fp8=True)
        assert not corr.any() and (int(pending), int(nonfinite)) == (0, 1)


def _counter_state(N, K, bits, seed):
    g = torch.Generator().manual_seed(seed)
    T = pack_ternary(torch.randint(-1, 2, (N, K), generator=g, dtype=torch.int8))
    C = pack_counters(torch.randint(0, 1 << bits, (N, K), generator=g, dtype=torch.uint8), bits)
    assert tuple(C.shape) == counter_packed_shape(N, K, bits)
    return [T, C, torch.zeros(N, K // 16, dtype=torch.int64), _i64(4), _i64(0), _i64(0)]


@interp
@pytest.mark.parametrize("bits", [4, 5])
def test_counter_fp8_ballot_impls_agree(bits):
    gy, x = _exact_data(24, 32, 64, seed=bits)
    out = {}
    for impl in ("torch", "triton"):
        s = _counter_state(32, 64, bits, seed=9)
        counter_ballot_(gy.to(torch.bfloat16), x.to(torch.bfloat16), *s, hash_key=_i64(99), in_features=64,
                        group_size=16, bits=bits, rate=2.0, impl=impl, gradw_fp8=True)
        out[impl] = s
    start = _counter_state(32, 64, bits, seed=9)
    assert not torch.equal(out["torch"][1], start[1])                   # the ladder moved
    for a, b in zip(out["torch"], out["triton"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=interp)])
def test_counter_fp8_moves_follow_the_fp8_grad_w(impl):
    """The ``counter`` ballot with ``gradw_fp8`` equals the ballot of the dequantized operands without it: the fp8
    setting changes only ``grad_W``'s operands. (Their values are exact in bf16, which the Triton path's GEMM takes;
    the torch reference takes them in float32, as it forms its fp8 ``grad_W``.)"""
    g = torch.Generator().manual_seed(5)
    gy, x = torch.randn(20, 32, generator=g).to(torch.bfloat16), torch.randn(20, 48, generator=g).to(torch.bfloat16)
    dtype = torch.float32 if impl == "torch" else torch.bfloat16
    gyd, xd = (t.to(dtype) for t in dequantized_operands(gy, x))
    out = []
    for args in ((gy, x, True), (gyd, xd, False)):
        s = _counter_state(32, 48, 5, seed=2)
        counter_ballot_(args[0], args[1], *s, hash_key=_i64(7), in_features=48, group_size=16, bits=5, rate=1.5,
                        impl=impl, gradw_fp8=args[2])
        out.append(s)
    assert not torch.equal(out[0][1], _counter_state(32, 48, 5, seed=2)[1])      # the ladder moved
    for a, b in zip(*out):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------- layer and config
def test_fp8_pays_only_for_big_layers():
    assert fp8.fp8_pays(4096, 4096) and fp8.fp8_pays(12288, 3072) and fp8.fp8_pays(3072, 12288)
    assert not fp8.fp8_pays(3072, 3072) and not fp8.fp8_pays(8192, 2048) and not fp8.fp8_pays(1536, 384)
    assert not fp8.fp8_pays(4104, 4100)                                  # not multiples of 16


def test_fp8_matmul_pays_from_3072_a_side():
    """The forward / grad-x GEMMs take fp8 from 3072 x 3072 up, where a ballot's grad_W does not."""
    assert fp8.fp8_matmul_pays(3072, 3072) and not fp8.fp8_pays(3072, 3072)
    assert fp8.fp8_matmul_pays(12288, 3072) and fp8.fp8_matmul_pays(3072, 12288)
    assert not fp8.fp8_matmul_pays(8192, 2048) and not fp8.fp8_matmul_pays(2048, 2048)
    assert not fp8.fp8_matmul_pays(3080, 3076)                           # not multiples of 16


def test_layers_use_the_matmul_rule_and_the_ballot_rule_apart():
    from arbitor.ternary.layer import TernaryScaleTensor
    m = TernaryScaleTensor(3072, 3072, 64, device="meta", gradw_fp8=True, matmul_fp8=True)
    assert m.uses_matmul_fp8 and not m.uses_gradw_fp8
    m = TernaryScaleTensor(3072, 12288, 64, device="meta", gradw_fp8=True, matmul_fp8=True)
    assert m.uses_matmul_fp8 and m.uses_gradw_fp8
    assert not TernaryScaleTensor(2048, 8192, 64, device="meta", matmul_fp8=True).uses_matmul_fp8
    layer = TernaryScaleTensor(64, 32, 16, gradw_fp8=True)
    assert layer.gradw_fp8 and not layer.uses_gradw_fp8 and "used: False" in repr(layer)


@pytest.mark.parametrize("rule", ["bigint", "counter"])
def test_layer_setting_reaches_its_ballots(rule, fp8_for_small_layers):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 20, 64, generator=g)
    up = torch.randn(3, 20, 32, generator=g)
    states = {}
    for use in (False, True):
        layer = TernaryScaleTensor(64, 32, 16, update_rule=rule, seed=1, backend="torch", gradw_fp8=use)
        layer(x).backward(up)
        states[use] = {k: v.clone() for k, v in layer.named_buffers()}
    assert not torch.equal(states[False]["corr_accum"], states[True]["corr_accum"])
    layer = TernaryScaleTensor(64, 32, 16, update_rule=rule, seed=1, backend="torch")
    gyd, xd = dequantized_operands(up.reshape(-1, 32), x.reshape(-1, 64))
    layer(xd).backward(gyd)                       # the fp8 operands' values, in float32: the same ballot
    assert torch.equal(layer.corr_accum, states[True]["corr_accum"])
    assert "gradw_fp8=True (used: True)" in repr(TernaryScaleTensor(64, 32, 16, gradw_fp8=True))


def test_layer_whose_shape_does_not_allow_fp8_keeps_the_exact_grad_w(fp8_for_small_layers):
    x, up = torch.randn(10, 40), torch.randn(10, 24)      # 40 is not a multiple of 16
    out = []
    for use in (False, True):
        layer = TernaryScaleTensor(40, 24, 8, seed=1, backend="torch", gradw_fp8=use)
        layer(x).backward(up)
        out.append(layer.corr_accum.clone())
    assert torch.equal(*out)


def test_config_and_layer_validate_the_setting():
    assert TernaryConfig(gradw_fp8=True).gradw_fp8 is True
    with pytest.raises(ValueError, match="gradw_fp8 must be a bool"):
        TernaryConfig(gradw_fp8="yes")
    with pytest.raises(ValueError, match="gradw_fp8 must be a bool"):
        TernaryScaleTensor(16, 16, 4, gradw_fp8=1)
    layer = TernaryScaleTensor.from_config(64, 16, TernaryConfig(gradw_fp8=True))
    assert layer.gradw_fp8 is True


# ----------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("M,C,dtype", [(4096, 3072, torch.bfloat16), (77, 1000, torch.float32), (5, 48, torch.float16)])
def test_gpu_quantiser_equals_reference(M, C, dtype):
    t = torch.randn(M, C, device="cuda", dtype=dtype) * 3
    q1, s1 = quantize_t_torch(t.cpu())
    q2, s2 = quantize_t_triton(t, _flag("cuda"))
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8).cpu()) and torch.equal(s1, s2.cpu())


@pytest.mark.gpu
@needs_cuda
def test_gpu_quantiser_walks_its_slices_of_rows():
    """Past 16 tiles of rows (``AMAX_PARTIALS``) each partial covers a slice of several tiles: 20,011 tokens give
    16 slices of 5 tiles, the last one short. The maximum sits in a slice's last tile; a NaN in a late slice is
    flagged."""
    t = torch.randn(20011, 3072, device="cuda", dtype=torch.bfloat16)
    t[19999, 7] = 300.0                          # tile 78: the 16th slice's; and the 4th slice's last tile:
    t[4 * 5 * 256 - 1, 8] = -300.0
    bad = _flag("cuda")
    q1, s1 = quantize_t_torch(t.cpu())
    q2, s2 = quantize_t_triton(t, bad)
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8).cpu()) and torch.equal(s1, s2.cpu())
    assert int(bad) == 0
    t[18000, 3000] = float("nan")
    quantize_t_triton(t, bad)
    assert int(bad) == 1


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("rule", ["bigint", "counter"])
def test_gpu_fp8_ballot_matches_reference_and_repeats(rule):
    M, N, K, gs = 512, 256, 192, 64
    gy, x = _exact_data(M, N, K, seed=3)
    runs = []
    for device, impl in (("cpu", "torch"), ("cuda", "triton"), ("cuda", "triton")):
        s = [t.to(device) for t in _counter_state(N, K, 5, seed=4)]
        s[2] = torch.zeros(N, K // gs, dtype=torch.int64, device=device)
        a, b = gy.to(device, torch.bfloat16), x.to(device, torch.bfloat16)
        if rule == "bigint":
            fn = bigint_ballot_torch_ if impl == "torch" else bigint_ballot_triton_
            fn(a, b, s[0], s[2], s[4], s[5], K, gs, gradw_fp8=True)
        else:
            counter_ballot_(a, b, *s, hash_key=_i64(5, device), in_features=K, group_size=gs, bits=5,
                            rate=torch.tensor(1.0, device=device), impl=impl, gradw_fp8=True)
        runs.append([t.cpu() for t in s])
    for a, b in zip(runs[1], runs[2]):             # run to run on the GPU: bit for bit
        assert torch.equal(a, b)
    assert torch.equal(runs[0][2], runs[1][2])     # the votes of exact data equal the reference's


# ----------------------------------------------------------------------------------------- step-boundary gather
@interp
def test_counter_gather_fp8_impls_agree_and_follow_the_fp8_operands():
    """The step-boundary gather (``ops/gather.py``) with ``gradw_fp8``: torch and Triton give the same integers on
    exact data, and the torch gather equals the gather of the dequantized operands without the setting."""
    from arbitor.ternary.ops.gather import counter_gather_, move_cap
    N, K, gs = 32, 48, 16
    T = _counter_state(N, K, 5, seed=3)[0]

    def gather(gy, x, impl, use):
        votes, moves = torch.zeros(N, K // gs, dtype=torch.int64), torch.zeros(N, K, dtype=torch.int8)
        pending, nonfinite = _i64(0), _i64(0)
        counter_gather_(gy, x, T, votes, moves, _i64(7), pending, nonfinite, _i64(3), K, gs, 2.0, move_cap(5, 4),
                        impl=impl, gradw_fp8=use)
        assert (int(pending), int(nonfinite)) == (1, 0)
        return votes, moves

    gy, x = _exact_data(24, N, K, seed=8)
    a = gather(gy.to(torch.bfloat16), x.to(torch.bfloat16), "torch", True)
    b = gather(gy.to(torch.bfloat16), x.to(torch.bfloat16), "triton", True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[1].abs().sum() > 0
    g = torch.Generator().manual_seed(9)
    gy, x = torch.randn(20, N, generator=g).to(torch.bfloat16), torch.randn(20, K, generator=g).to(torch.bfloat16)
    gyd, xd = (t.to(torch.bfloat16) for t in dequantized_operands(gy, x))   # fp8 values: exact in bf16 too
    for impl in ("torch", "triton"):
        c, d = gather(gy, x, impl, True), gather(gyd, xd, impl, False)
        assert torch.equal(c[0], d[0]) and torch.equal(c[1], d[1])
