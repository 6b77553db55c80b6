"""The legacy (T_accum/E_accum) and flip (stateless stochastic trit) update rules."""
import pytest
import torch

from arbitor.kernel.ternary_audit import ternary_audit
from arbitor.kernel.ternary_scale import TernaryScaleTensor, ternary_step
from arbitor.kernel.update_rules import counter_uniform


def int_data(*shape, seed):
    return torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(seed)).float()


def test_legacy_accumulators_follow_the_sign_votes():
    layer = TernaryScaleTensor(32, 6, group_size=8, seed=0, update="legacy", t_threshold=2, e_threshold=8)
    assert set(dict(layer.named_buffers())) == {"T_packed", "E", "T_accum", "E_accum"}
    x, gy = int_data(10, 32, seed=1), int_data(10, 6, seed=2)
    T0 = layer.ternary().to(torch.int64)
    E0 = layer.E.clone()
    gW = gy.T.double() @ x.double()
    sgn = torch.sign(gW).to(torch.int64)
    layer(x).backward(gy)
    assert torch.equal(layer.T_accum.to(torch.int64), -sgn)
    vote = -(sgn * T0).view(6, 4, 8).sum(-1)
    assert torch.equal(layer.E_accum.to(torch.int64), vote)
    torch.testing.assert_close(layer._get_S(), torch.exp2(E0.float()))
    layer(x).backward(gy)             # second identical ballot: |T_accum| reaches the threshold 2
    ternary_step(layer)
    T1 = layer.ternary().to(torch.int64)
    expected = (T0 - sgn).clamp(-1, 1)  # every weight with a non-zero push moved one step (or was saturated)
    assert torch.equal(T1, expected)
    moved = T1 != T0
    assert torch.all(layer.T_accum[moved] == 0)
    saturated = (sgn != 0) & ~moved
    assert torch.all(layer.T_accum[saturated].abs() == 2)
    e_step = (2 * vote).abs() >= 8
    assert torch.equal((layer.E.to(torch.int64) - E0.to(torch.int64)).abs(), e_step.to(torch.int64))
    assert torch.all(layer.E_accum[e_step] == 0)


def test_legacy_audit_counts_accumulators():
    rep = ternary_audit(TernaryScaleTensor(64, 16, group_size=16, seed=0, update="legacy"))
    assert rep["state_bytes"]["T_accum"] == 64 * 16
    assert rep["state_bytes"]["E_accum"] == 2 * 16 * 4
    assert rep["state_bytes"]["corr_accum"] == 0 and rep["trainable_float_params"] == 0


def test_counter_uniform_is_a_pure_function_and_uniform():
    a = counter_uniform(7, 3, 0, 40, 96, torch.device("cpu"))
    assert torch.equal(a, counter_uniform(7, 3, 0, 40, 96, torch.device("cpu")))
    assert torch.equal(a[10:13], counter_uniform(7, 3, 10, 13, 96, torch.device("cpu")))
    assert not torch.equal(a, counter_uniform(7, 4, 0, 40, 96, torch.device("cpu")))
    assert not torch.equal(a, counter_uniform(8, 3, 0, 40, 96, torch.device("cpu")))
    assert 0 <= a.min() and a.max() < 1
    hist = torch.histc(a, bins=10, min=0, max=1) / a.numel()
    assert torch.all((hist - 0.1).abs() < 0.02)


def test_flip_moves_trits_against_the_gradient_and_is_reproducible():
    def run():
        layer = TernaryScaleTensor(64, 16, group_size=16, seed=3, update="flip", flip_rate=0.3)
        T0 = layer.ternary().to(torch.int64)
        x, gy = torch.randn(20, 64, generator=torch.Generator().manual_seed(5)), \
            torch.randn(20, 16, generator=torch.Generator().manual_seed(6))
        sgn = torch.sign(gy.T @ x).to(torch.int64)
        corr0 = layer.corr_accum.clone()
        layer(x).backward(gy)
        ternary_step(layer)
        T1 = layer.ternary().to(torch.int64)
        # the BigInt votes use the pre-flip T
        assert torch.equal(layer.corr_accum - corr0, -(sgn * T0).view(16, 4, 16).sum(-1))
        return layer, T0, T1, sgn

    layer, T0, T1, sgn = run()
    moved = T1 != T0
    assert 0.02 < moved.float().mean() < 0.5
    assert torch.all((T1 - T0)[moved] == -sgn[moved])
    _, _, T1b, _ = run()
    assert torch.equal(T1, T1b)  # counter-based draw: same state, same input -> same flips
    assert set(dict(layer.named_buffers())) == {"T_packed", "E", "corr_accum", "step_counter", "flip_key"}
    rep = ternary_audit(layer)
    assert rep["training_state_bytes"] == 64 * 16 // 4 + 9 * 64 + 8 + 8
    assert rep["state_bytes_per_weight"] < 1.0


def test_flip_rate_zero_never_moves_and_resume_is_exact():
    layer = TernaryScaleTensor(64, 16, group_size=16, seed=3, update="flip", flip_rate=0.0)
    T0 = layer.T_packed.clone()
    layer(torch.randn(4, 64)).sum().backward()
    ternary_step(layer)
    assert torch.equal(layer.T_packed, T0)
    a = TernaryScaleTensor(64, 16, group_size=16, seed=3, update="flip", flip_rate=0.2)
    xs = [torch.randn(8, 64, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    for x in xs[:3]:
        a(x).pow(2).sum().backward()
        ternary_step(a)
    b = TernaryScaleTensor(64, 16, group_size=16, seed=11, update="flip", flip_rate=0.2)
    b.load_state_dict(a.state_dict())
    for x in xs[3:]:
        for m in (a, b):
            m(x).pow(2).sum().backward()
            ternary_step(m)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_bad_update_arguments():
    with pytest.raises(ValueError, match="update must be one of"):
        TernaryScaleTensor(32, 4, group_size=8, update="adam")
    with pytest.raises(ValueError, match="flip_rate"):
        TernaryScaleTensor(32, 4, group_size=8, update="flip", flip_rate=2.0)
    with pytest.raises(ValueError, match="t_threshold"):
        TernaryScaleTensor(32, 4, group_size=8, update="legacy", t_threshold=0)
