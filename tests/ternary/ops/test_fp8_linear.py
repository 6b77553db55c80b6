"""fp8 forward and grad-x (``ops/fp8_linear.py``, the row and weight quantisers of ``ops/fp8_triton.py``, the
``matmul_fp8`` dispatch of both backends' linear ops): the Triton quantisers byte-equal to the torch references
(CPU interpreter, odd shapes), the ops equal to the products of the dequantised operands, the dispatch rule, the
layer and config setting; GPU tests with ``-m gpu``."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from arbitor.ternary.config import TernaryConfig  # noqa: E402
from arbitor.ternary.format import pack_ternary  # noqa: E402
from arbitor.ternary.layer import TernaryScaleTensor  # noqa: E402
from arbitor.ternary.ops.fp8 import FP8_DTYPE, FP8_MAX, scaled_mm_nt  # noqa: E402
from arbitor.ternary.ops.fp8_linear import (FP8_MIN_ROWS, expand_fp8_torch, fp8_forward_torch,  # noqa: E402
                                            fp8_grad_x_torch, fp8_matmul_applies, quantize_rows_torch,
                                            weight_exponent_torch)
from arbitor.ternary.ops.fp8_triton import expand_fp8_triton, quantize_rows_triton  # noqa: E402
from arbitor.ternary.ops.linear import expand_weight, linear_forward_torch, linear_grad_x_torch  # noqa: E402
from arbitor.ternary.ops.linear_triton import FUSED_MAX_M, ternary_forward, ternary_grad_x  # noqa: E402
from arbitor.ternary.ops.triton_common import INTERPRETED  # noqa: E402
from arbitor.ternary.scale import bigint_scale  # noqa: E402

interp = pytest.mark.skipif(not INTERPRETED, reason="CPU interpreter tests need TRITON_INTERPRET=1")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED, reason="needs CUDA")
STRENGTH = 4.0


def _state(N, K, gs, seed, device="cpu", spread=6):
    """A layer's state with group scales spread over ``spread`` binades and some votes counted."""
    g = torch.Generator().manual_seed(seed)
    T = torch.randint(-1, 2, (N, K), generator=g, dtype=torch.int8)
    E = torch.randint(-8 - spread, -8, (N, K // gs), generator=g, dtype=torch.int8)
    corr = torch.randint(-gs * 3, gs * 3 + 1, (N, K // gs), generator=g, dtype=torch.int64)
    step = torch.tensor(3, dtype=torch.int64)
    pending = torch.tensor(1, dtype=torch.int64)
    return [t.to(device) for t in (pack_ternary(T), E, corr, step, pending)]


def _scale(E, corr, step, pending, gs):
    return bigint_scale(E, corr, step + pending, gs, STRENGTH)


# ----------------------------------------------------------------------------------------- the format
@pytest.mark.parametrize("M,C,dtype", [(1, 3, torch.float32), (17, 70, torch.bfloat16), (33, 1500, torch.float16)])
def test_reference_row_quantiser_layout_and_bounds(M, C, dtype):
    g = torch.Generator().manual_seed(M * C)
    t = (torch.randn(M, C, generator=g) * torch.logspace(-3, 3, M)[:, None]).to(dtype)
    t[0] = 0                                           # an all-zero row
    q, scale = quantize_rows_torch(t)
    assert q.dtype == FP8_DTYPE and q.shape == (M, C) and scale.shape == (M,)
    assert torch.all(torch.frexp(scale)[0] == 0.5)     # powers of two
    qa = q.float().abs().amax(dim=1)
    assert torch.all(qa[1:] >= FP8_MAX / 2) and torch.all(qa <= FP8_MAX)     # each row uses its top binade
    back = q.float() * scale[:, None]
    tf = t.float()
    big = tf.abs() >= scale[:, None] * 2.0 ** -6                               # e4m3 normals after scaling
    assert torch.all((back - tf).abs()[big] <= tf.abs()[big] * 2.0 ** -4)


def test_reference_row_quantiser_marks_non_finite_rows():
    t = torch.randn(4, 32)
    t[1, 3] = float("nan")
    t[2, 0] = float("inf")
    q, scale = quantize_rows_torch(t)
    assert torch.isnan(scale[1]) and torch.isnan(scale[2]) and torch.isfinite(scale[[0, 3]]).all()
    assert not q[1:3].float().any()


def test_weight_exponent_and_expansion_are_exact_for_power_of_two_scales():
    T_packed, E, corr, step, pending = _state(32, 128, 16, 1)
    corr.zero_()                                       # S = 2**E: exact in e4m3 while E spans < 15 binades
    S = _scale(E, corr, step, pending, 16)
    ew = int(weight_exponent_torch(S))
    assert S.max() * 2.0 ** -ew <= FP8_MAX < S.max() * 2.0 ** -(ew - 1)
    wq, sw = expand_fp8_torch(T_packed, S, 128, 16)
    assert wq.shape == (32, 128) and torch.all(sw == 2.0 ** ew)
    assert torch.equal(wq.float() * sw[:, None], expand_weight(T_packed, S, 128, 16))
    wqt, swt = expand_fp8_torch(T_packed, S, 128, 16, transpose=True)
    assert wqt.shape == (128, 32) and torch.equal(wqt, wq.t()) and swt.shape == (128,)


def test_weight_rounding_keeps_four_significant_bits():
    T_packed, E, corr, step, pending = _state(48, 256, 32, 2)
    S = _scale(E, corr, step, pending, 32)
    wq, sw = expand_fp8_torch(T_packed, S, 256, 32)
    w = expand_weight(T_packed, S, 256, 32)
    back = wq.float() * sw[:, None]
    assert torch.equal(back != 0, w != 0)              # a trit is exact: zeros stay zeros, signs stay signs
    assert torch.equal(torch.sign(back), torch.sign(w))
    assert torch.all((back - w).abs() <= w.abs() * 2.0 ** -4)


def test_scaled_mm_nt_is_the_dequantized_product():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(20, 48, generator=g), torch.randn(32, 48, generator=g)
    aq, sa = quantize_rows_torch(a)
    bq, sb = quantize_rows_torch(b)
    want = (aq.float() * sa[:, None]) @ (bq.float() * sb[:, None]).t()
    got = scaled_mm_nt(aq, sa, bq, sb)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2 ** -7, atol=1e-5)
    assert scaled_mm_nt(aq[:0], sa[:0], bq, sb).shape == (0, 32)


def test_fp8_matmul_rule():
    assert FP8_MIN_ROWS == FUSED_MAX_M + 1             # decode shapes keep the fused kernels
    assert fp8_matmul_applies(True, FP8_MIN_ROWS, 32, 48)
    assert not fp8_matmul_applies(True, FP8_MIN_ROWS - 1, 32, 48)
    assert not fp8_matmul_applies(True, 64, 40, 48) and not fp8_matmul_applies(True, 64, 32, 40)
    assert not fp8_matmul_applies(False, 64, 32, 48)


# ----------------------------------------------------------------------------------------- Triton against torch
@interp
@pytest.mark.parametrize("M,C,dtype", [(1, 1, torch.float32), (19, 70, torch.bfloat16), (5, 2100, torch.float16),
                                       (3, 1024, torch.float32)])
def test_triton_row_quantiser_equals_reference(M, C, dtype):
    g = torch.Generator().manual_seed(M + C)
    t = (torch.randn(M, C, generator=g) * torch.logspace(-20, 20, M)[:, None]).to(dtype)
    if M > 2:
        t[1] = 0
        t[2, C // 2] = float("nan")
    q, scale = quantize_rows_triton(t)
    rq, rscale = quantize_rows_torch(t)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8))
    assert torch.allclose(scale, rscale, rtol=0, atol=0, equal_nan=True)


@interp
def test_triton_row_quantiser_long_rows_read_twice(monkeypatch):
    from arbitor.ternary.ops import fp8_triton
    monkeypatch.setattr(fp8_triton, "ROWS_ONE_READ", 64)
    monkeypatch.setattr(fp8_triton, "ROWS_BLOCK", 32)
    g = torch.Generator().manual_seed(4)
    t = torch.randn(6, 201, generator=g) * torch.logspace(-5, 5, 6)[:, None]
    t[2, 150] = float("-inf")
    q, scale = quantize_rows_triton(t)
    rq, rscale = quantize_rows_torch(t)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8))
    assert torch.allclose(scale, rscale, rtol=0, atol=0, equal_nan=True) and torch.isnan(scale[2])


@interp
def test_triton_row_quantiser_takes_row_strides_and_every_tie():
    # every e4m3 tie and subnormal step, in a row whose maximum is exactly 448 (scale 1)
    v = torch.arange(0, 2 ** 14, dtype=torch.float32) / 2 ** 14 * 448
    v[-1] = FP8_MAX
    mids = torch.arange(0, 2 ** 9, dtype=torch.float32) * 2.0 ** -10           # subnormal steps and their halves
    row = torch.cat([v, -v, mids, -mids])
    wide = torch.zeros(3, row.numel() + 7)
    wide[:, :row.numel()] = row
    t = wide[:, :row.numel()]                                                   # row stride > columns
    q, scale = quantize_rows_triton(t)
    rq, rscale = quantize_rows_torch(t)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(scale, rscale)
    assert torch.all(scale == 1.0)


@interp
@pytest.mark.parametrize("N,K,gs,transpose", [(32, 128, 16, False), (48, 256, 64, True), (17, 96, 32, False),
                                              (5, 160, 32, True)])
def test_triton_weight_expansion_equals_reference(N, K, gs, transpose, monkeypatch):
    from arbitor.ternary.ops import fp8_triton
    monkeypatch.setattr(fp8_triton, "SCALE_BLOCK", 16)      # several partial maxima, the largest in any of them
    T_packed, E, corr, step, pending = _state(N, K, gs, N + K)
    wq, sw = expand_fp8_triton(T_packed, E, corr, step, pending, K, gs, STRENGTH, transpose=transpose)
    rq, rs = expand_fp8_torch(T_packed, _scale(E, corr, step, pending, gs), K, gs, transpose=transpose)
    assert wq.shape == rq.shape and torch.equal(wq.view(torch.uint8), rq.view(torch.uint8))
    assert torch.equal(sw, rs)


@interp
@pytest.mark.parametrize("transpose", [False, True])
def test_triton_group_expansion_equals_reference_of_the_stack(transpose, monkeypatch):
    """Six layers (two launches of ``GROUP_LAUNCH``), other heights, strengths and ballot counts: one exponent,
    the stacked layer's bytes; the largest scale sits in the last launch's layer."""
    from arbitor.ternary.ops import fp8_triton
    monkeypatch.setattr(fp8_triton, "SCALE_BLOCK", 16)
    K, gs = 96, 32
    states = [_state(N, K, gs, 40 + i) for i, N in enumerate((16, 40, 7, 24, 33, 8))]
    states[4][1][5, 1] = -4                                                 # the stack's largest scale
    for i, st in enumerate(states):
        st[3].fill_(2 + i)
        st[4].fill_(i % 2)
    strengths = [STRENGTH * (1 + i % 3) / 2 for i in range(6)]
    wq, sw = fp8_triton.expand_fp8_group_triton(states, K, gs, strengths, transpose=transpose)
    S = torch.cat([bigint_scale(st[1], st[2], st[3] + st[4], gs, s) for st, s in zip(states, strengths)])
    rq, rs = expand_fp8_torch(torch.cat([st[0] for st in states]), S, K, gs, transpose=transpose)
    assert wq.shape == rq.shape and torch.equal(wq.view(torch.uint8), rq.view(torch.uint8))
    assert torch.equal(sw, rs)


# ----------------------------------------------------------------------------------------- the ops
def _operands(M, N, K, gs, seed, dtype=torch.bfloat16):
    T_packed, E, corr, step, pending = _state(N, K, gs, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = (torch.randn(M, K, generator=g) * torch.logspace(-2, 2, M)[:, None]).to(dtype)
    gy = (torch.randn(M, N, generator=g) * torch.logspace(-4, 1, M)[:, None]).to(dtype)
    return x, gy, (T_packed, E, corr, step, pending)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=interp)])
def test_fp8_ops_are_the_products_of_the_dequantized_operands(impl):
    M, N, K, gs = 37, 48, 128, 32
    x, gy, state = _operands(M, N, K, gs, 5)
    S = _scale(*state[1:], gs)
    xq, sx = quantize_rows_torch(x)
    gq, sg = quantize_rows_torch(gy)
    wq, sw = expand_fp8_torch(state[0], S, K, gs)
    wf = wq.float() * sw[:, None]
    want_y = (xq.float() * sx[:, None]) @ wf.t()
    want_gx = (gq.float() * sg[:, None]) @ wf
    fwd, gx = (linear_forward_torch, linear_grad_x_torch) if impl == "torch" else (ternary_forward, ternary_grad_x)
    y = fwd(x, *state, K, gs, STRENGTH, matmul_fp8=True)
    g = gx(gy, *state, K, gs, STRENGTH, matmul_fp8=True)
    assert y.dtype == x.dtype and g.dtype == gy.dtype
    tol = dict(rtol=2 ** -7, atol=1e-6) if impl == "triton" else dict(rtol=2 ** -8, atol=0)
    torch.testing.assert_close(y.float(), want_y, **tol)
    torch.testing.assert_close(g.float(), want_gx, **tol)
    # and they are not the exact ops: the setting is used
    exact = fwd(x, *state, K, gs, STRENGTH)
    assert not torch.equal(exact, y)


@interp
@pytest.mark.parametrize("M,N,K,gs", [(17, 32, 64, 16), (40, 80, 96, 32), (16, 32, 64, 16)])
def test_fp8_ops_impls_agree(M, N, K, gs):
    # float32 operands: the fused kernels that keep M <= 16 compute bf16 tiles wrongly under the CPU interpreter
    x, gy, state = _operands(M, N, K, gs, M * N, dtype=torch.float32)
    for torch_op, triton_op, act in ((linear_forward_torch, ternary_forward, x),
                                      (linear_grad_x_torch, ternary_grad_x, gy)):
        want = torch_op(act, *state, K, gs, STRENGTH, matmul_fp8=True)
        got = triton_op(act, *state, K, gs, STRENGTH, matmul_fp8=True)
        torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7, atol=1e-6)
        if M < FP8_MIN_ROWS:          # decode rows: the exact op
            torch.testing.assert_close(got.float(), torch_op(act, *state, K, gs, STRENGTH).float(),
                                       rtol=2 ** -7, atol=1e-6)


@interp
def test_fp8_forward_of_a_non_finite_row_is_nan():
    x, _, state = _operands(20, 32, 64, 16, 9, dtype=torch.float32)
    x[3, 5] = float("inf")
    for op in (linear_forward_torch, ternary_forward):
        y = op(x, *state, 64, 16, STRENGTH, matmul_fp8=True)
        assert torch.isnan(y[3]).all() and torch.isfinite(y[torch.arange(20) != 3]).all()


# ----------------------------------------------------------------------------------------- layer and config
def test_layer_setting_reaches_its_matmuls(fp8_for_small_layers):
    torch.manual_seed(0)
    layer = TernaryScaleTensor(64, 32, 16, seed=1, backend="torch", matmul_fp8=True)
    exact = TernaryScaleTensor(64, 32, 16, seed=1, backend="torch")
    assert layer.uses_matmul_fp8 and not exact.uses_matmul_fp8
    x = torch.randn(24, 64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = layer(x), exact(x2)
    S = _scale(layer.E, layer.corr_accum, layer.step_counter, layer.pending, 16)   # before this step's ballot
    torch.testing.assert_close(y, fp8_forward_torch(x.detach(), layer.T_packed, S, 64, 16))
    gy = torch.randn(24, 32)
    y.backward(gy)
    y2.backward(gy)
    torch.testing.assert_close(x.grad, fp8_grad_x_torch(gy, layer.T_packed, S, 64, 16))
    assert not torch.equal(x.grad, x2.grad)
    assert torch.equal(layer.corr_accum, exact.corr_accum)   # the ballot is gradw_fp8's business, not this one's


def test_layer_uses_fp8_matmuls_only_where_they_pay():
    assert not TernaryScaleTensor(64, 32, 16, seed=1, matmul_fp8=True).uses_matmul_fp8
    assert TernaryScaleTensor(4096, 4096, 64, seed=1, matmul_fp8=True, device="meta").uses_matmul_fp8


def test_config_and_layer_validate_the_setting():
    with pytest.raises(ValueError, match="matmul_fp8 must be a bool"):
        TernaryConfig(matmul_fp8=1)
    with pytest.raises(ValueError, match="matmul_fp8 must be a bool"):
        TernaryScaleTensor(64, 32, 16, matmul_fp8="yes")
    layer = TernaryScaleTensor.from_config(4096, 4096, TernaryConfig(matmul_fp8=True), device="meta")
    assert layer.matmul_fp8 and layer.uses_matmul_fp8 and "matmul_fp8=True" in repr(layer)


# ----------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("M,N,K,gs,dtype", [(4096, 3072, 3072, 64, torch.bfloat16), (77, 1040, 208, 16, torch.float16),
                                            (300, 48, 4096, 128, torch.float32)])
def test_gpu_fp8_ops_match_reference_and_repeat(M, N, K, gs, dtype):
    T_packed, E, corr, step, pending = _state(N, K, gs, 11, device="cuda")
    state = (T_packed, E, corr, step, pending)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, K, device="cuda", generator=g).to(dtype)
    gy = torch.randn(M, N, device="cuda", generator=g).to(dtype) * 1e-3
    S = _scale(E, corr, step, pending, gs)
    xq, sx = quantize_rows_triton(x)
    rq, rs = quantize_rows_torch(x)
    assert torch.equal(xq.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(sx, rs)
    for t in (False, True):
        wq, sw = expand_fp8_triton(*state, K, gs, STRENGTH, transpose=t)
        wr, swr = expand_fp8_torch(T_packed, S, K, gs, transpose=t)
        assert torch.equal(wq.view(torch.uint8), wr.view(torch.uint8)) and torch.equal(sw, swr)
    for op, ref, act in ((ternary_forward, fp8_forward_torch, x), (ternary_grad_x, fp8_grad_x_torch, gy)):
        got = op(act, *state, K, gs, STRENGTH, matmul_fp8=True)
        assert torch.equal(got, op(act, *state, K, gs, STRENGTH, matmul_fp8=True))      # run to run
        want = ref(act, T_packed, S, K, gs)
        torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -6, atol=1e-3 * want.abs().max().item())
