"""Sibling projections (``arbitor/ternary/sibling.py``): stacked layers give the layers' own outputs, grad-x and
ballots (torch references bit for bit; the Triton group ops under the CPU interpreter to rounding), the fp8 rule of
a stack, the fallbacks, and the attention block using it."""
from __future__ import annotations

import pytest
import torch

from arbitor.ternary.layer import TernaryScaleTensor
from arbitor.ternary.ops.fp8_linear import fp8_forward_torch
from arbitor.ternary.ops.linear import linear_group_forward_torch, linear_group_grad_x_torch
from arbitor.ternary.scale import bigint_scale
from arbitor.ternary.sibling import sibling_forward, stack_uses_matmul_fp8, stackable


def _layers(rule="bigint", n=3, K=64, N=32, gs=16, backend="torch", **kw):
    layers = [TernaryScaleTensor(K, N + 16 * (i % 2), gs, seed=10 + i, update_rule=rule, backend=backend, **kw)
              for i in range(n)]
    for i, m in enumerate(layers):     # some votes and ballots counted, so the scales differ between layers
        g = torch.Generator().manual_seed(i)
        m.step_counter.fill_(5)
        m.corr_accum.copy_(torch.randint(-5 * gs, 5 * gs + 1, m.corr_accum.shape, generator=g))
    return layers


def _clones(layers):
    out = []
    for m in layers:
        c = TernaryScaleTensor(m.in_features, m.out_features, m.group_size, seed=0, update_rule=m.rule.name,
                               backend=m.backend, matmul_fp8=m.matmul_fp8, gradw_fp8=m.gradw_fp8)
        c.load_state_dict(m.state_dict())
        out.append(c)
    return out


@pytest.mark.parametrize("rule", ["bigint", "counter"])
@pytest.mark.parametrize("x_grad", [True, False])
def test_stack_equals_the_layers_one_by_one(rule, x_grad):
    layers = _layers(rule)
    alone = _clones(layers)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 11, 64, generator=g)
    x1, x2 = x.clone().requires_grad_(x_grad), x.clone().requires_grad_(x_grad)
    y = sibling_forward(layers, x1)
    y_alone = torch.cat([m(x2) for m in alone], dim=-1)
    assert y.shape == (2, 11, 32 + 48 + 32) and torch.equal(y, y_alone)
    gy = torch.randn(y.shape, generator=g)
    (y * gy).sum().backward()
    (y_alone * gy).sum().backward()
    if x_grad:
        assert torch.equal(x1.grad, x2.grad)          # summed in autograd's order
    for a, b in zip(layers, alone):
        assert a._dirty and b._dirty
        for name in ("corr_accum", "pending", "T_packed") + (("C_packed",) if rule == "counter" else ()):
            assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_stack_takes_a_ballot_only_from_voting_layers():
    layers = _layers()
    layers[1].set_voting(False)
    x = torch.randn(20, 64)
    sibling_forward(layers, x).sum().backward()      # x needs no grad: the anchor carries the ballots
    assert [int(m.pending) for m in layers] == [1, 0, 1]


def test_stack_in_eval_or_no_grad_casts_nothing():
    layers = _layers()
    with torch.no_grad():
        y = sibling_forward(layers, torch.randn(20, 64))
    assert not y.requires_grad and not any(m._dirty for m in layers)


def test_what_cannot_be_stacked_runs_alone():
    a, b = _layers(n=2)
    assert stackable([a, b]) and not stackable([a])
    assert not stackable([a, TernaryScaleTensor(32, 32, 16, seed=1)])           # other input width
    assert not stackable([a, TernaryScaleTensor(64, 32, 32, seed=1)])           # other group size
    assert not stackable([a, torch.nn.Linear(64, 32)])
    lin = torch.nn.Linear(64, 16, bias=False)
    x = torch.randn(5, 64)
    torch.testing.assert_close(sibling_forward([a, lin], x), torch.cat([a(x), lin(x)], -1))
    h = b.register_forward_hook(lambda *args: None)
    assert not stackable([a, b])
    h.remove()


def test_fp8_rule_of_a_stack(fp8_for_small_layers):
    layers = _layers(matmul_fp8=True)
    assert stack_uses_matmul_fp8(layers)
    layers[0].matmul_fp8 = False
    assert not stack_uses_matmul_fp8(layers)


def test_reference_group_ops_with_fp8_are_the_stacked_layer():
    layers = _layers()
    x = torch.randn(40, 64)
    st = [list(v) for v in zip(*(m._scale_state() for m in layers))]
    y = linear_group_forward_torch(x, *st, 64, 16, [m.strength for m in layers], matmul_fp8=True)
    S = torch.cat([bigint_scale(m.E, m.corr_accum, m.step_counter, 16, m.strength) for m in layers])
    T = torch.cat([m.T_packed for m in layers])
    assert torch.equal(y, fp8_forward_torch(x, T, S, 64, 16))
    exact = linear_group_forward_torch(x, *st, 64, 16, [m.strength for m in layers])
    assert torch.equal(exact, torch.cat([m(x) for m in layers], -1)) and not torch.equal(exact, y)
    gy = torch.randn(40, y.shape[1])
    g8 = linear_group_grad_x_torch(gy, *st, 64, 16, [m.strength for m in layers], matmul_fp8=True)
    gx = linear_group_grad_x_torch(gy, *st, 64, 16, [m.strength for m in layers])
    assert g8.shape == gx.shape == (40, 64) and not torch.equal(g8, gx)


@pytest.mark.parametrize("M", [9, 40])
@pytest.mark.parametrize("fp8", [False, True])
def test_triton_group_ops_agree_with_the_references(M, fp8):
    pytest.importorskip("triton")
    from arbitor.ternary.ops.linear_triton import ternary_group_forward, ternary_group_grad_x
    from arbitor.ternary.ops.triton_common import INTERPRETED
    if not INTERPRETED:
        pytest.skip("CPU interpreter test")
    layers = _layers()
    st = [list(v) for v in zip(*(m._scale_state() for m in layers))]
    s = [m.strength for m in layers]
    g = torch.Generator().manual_seed(M)
    x, gy = torch.randn(M, 64, generator=g), torch.randn(M, 112, generator=g)
    for op, ref, act in ((ternary_group_forward, linear_group_forward_torch, x),
                         (ternary_group_grad_x, linear_group_grad_x_torch, gy)):
        want = ref(act, *st, 64, 16, s, matmul_fp8=fp8)
        got = op(act, *st, 64, 16, s, matmul_fp8=fp8)
        torch.testing.assert_close(got, want, rtol=2 ** -7 if fp8 and M > 16 else 1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_group_ops_use_fp8_only_as_the_stack(backend, fp8_for_small_layers):
    """A stack whose summed height is no multiple of 16 takes no fp8, though one of its layers alone could: the torch
    reference decides as the Triton op does."""
    from arbitor.ternary.ops.triton_common import INTERPRETED
    if backend == "triton":
        pytest.importorskip("triton")
        if not INTERPRETED:
            pytest.skip("CPU interpreter test")
        from arbitor.ternary.ops.linear_triton import ternary_group_forward as fwd, ternary_group_grad_x as gx
    else:
        fwd, gx = linear_group_forward_torch, linear_group_grad_x_torch
    layers = [TernaryScaleTensor(64, n, 16, seed=20 + n) for n in (16, 8)]     # 16 alone may take fp8; 24 may not
    st = [list(v) for v in zip(*(m._scale_state() for m in layers))]
    s = [m.strength for m in layers]
    g = torch.Generator().manual_seed(3)
    x, gy = torch.randn(40, 64, generator=g), torch.randn(40, 24, generator=g)
    assert torch.equal(fwd(x, *st, 64, 16, s, matmul_fp8=True), fwd(x, *st, 64, 16, s))
    assert torch.equal(gx(gy, *st, 64, 16, s, matmul_fp8=True), gx(gy, *st, 64, 16, s))


def test_attention_stacks_its_ternary_projections():
    from arbitor.model.attention import ContextAttention
    from arbitor.model.config import preset
    cfg = preset("small", d_model=64, n_heads=4, n_layers=1, vocab_size=32, max_ctx=16)
    attn = ContextAttention(cfg, seed=3)
    calls = []
    for m in (attn.q, attn.k, attn.v, attn.gate):
        m.forward = lambda x, m=m: calls.append(m) or TernaryScaleTensor.forward(m, x)
    x = torch.randn(2, 7, 64)
    q, k, v, g = attn._project(x)
    assert calls == []                    # no projection ran alone
    torch.testing.assert_close(torch.cat([q, k, v, g], -1), torch.cat(
        [TernaryScaleTensor.forward(m, x) for m in (attn.q, attn.k, attn.v, attn.gate)], -1), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fp8", [False, True])
def test_gpu_stack_matches_the_references_and_repeats(fp8):
    from arbitor.ternary.ops.linear_triton import expand_weight_triton, ternary_group_forward, ternary_group_grad_x
    layers = [m.cuda() for m in _layers(K=3072, N=3072, gs=64, backend="triton", n=4)]
    st = [list(v) for v in zip(*(m._scale_state() for m in layers))]
    s = [m.strength for m in layers]
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4096, 3072, device="cuda", generator=g).bfloat16()
    gy = torch.randn(4096, sum(m.out_features for m in layers), device="cuda", generator=g).bfloat16()
    # the exact path multiplies bf16 W_eff (expand_weight_triton, bit-equal to effective_weight(bf16)) in fp32:
    # against that product only the output's rounding and the summation order differ
    W16 = torch.cat([expand_weight_triton(*st_i, 3072, 64, m.strength, torch.bfloat16)
                     for st_i, m in zip(zip(*st), layers)]).float()
    refs = ((lambda a: a.float() @ W16.t()), (lambda a: a.float() @ W16)) if not fp8 else (
        lambda a: linear_group_forward_torch(a, *st, 3072, 64, s, matmul_fp8=True).float(),
        lambda a: linear_group_grad_x_torch(a, *st, 3072, 64, s, matmul_fp8=True).float())
    for op, ref, act in ((ternary_group_forward, refs[0], x), (ternary_group_grad_x, refs[1], gy)):
        got = op(act, *st, 3072, 64, s, matmul_fp8=fp8)
        assert torch.equal(got, op(act, *st, 3072, 64, s, matmul_fp8=fp8))
        want = ref(act)
        err = (got.float() - want).abs().max() / want.abs().max()
        # fp8: the fp8 GEMM's accumulation is not exact float32 (measured 0.0047 of the largest output)
        assert err < (2 ** -6 if fp8 else 2 ** -8), float(err)
