"""The ``counter`` update rule: ladder math, one ballot against an independent computation, resume, audit."""
import pytest
import torch

from arbitor.ternary.audit import ternary_audit
from arbitor.ternary.layer import TernaryScaleTensor
from arbitor.ternary.step import ternary_step
from arbitor.ternary.format import unpack_counters
from arbitor.ternary.ops.counter import counter_block
from arbitor.ternary.ops.hashing import counter_uniform
from arbitor.ternary.rules.counter import AUTO_RATE_PASSES, auto_counter_rate


def int_data(*shape, seed):
    return torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(seed)).float()


def _steps(layers, xs):
    """One ballot + ``ternary_step`` per input, for each layer in turn."""
    for x in xs:
        for m in layers:
            m(x).pow(2).sum().backward()
            ternary_step(m)


def _assert_resume_is_exact(a, b, xs):
    """Train ``a`` on ``xs[:3]``, load its state into ``b``, train both on ``xs[3:]``: every buffer equal."""
    _steps([a], xs[:3])
    b.load_state_dict(a.state_dict())
    _steps([a, b], xs[3:])
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_counter_uniform_is_a_pure_function_and_uniform():
    a = counter_uniform(7, 3, 0, 40, 96, torch.device("cpu"))
    assert torch.equal(a, counter_uniform(7, 3, 0, 40, 96, torch.device("cpu")))
    assert torch.equal(a[10:13], counter_uniform(7, 3, 10, 13, 96, torch.device("cpu")))
    assert not torch.equal(a, counter_uniform(7, 4, 0, 40, 96, torch.device("cpu")))
    assert not torch.equal(a, counter_uniform(8, 3, 0, 40, 96, torch.device("cpu")))
    assert 0 <= a.min() and a.max() < 1
    hist = torch.histc(a, bins=10, min=0, max=1) / a.numel()
    assert torch.all((hist - 0.1).abs() < 0.02)


def test_bad_update_arguments():
    with pytest.raises(ValueError, match="update_rule must be one of"):
        TernaryScaleTensor(32, 4, group_size=8, update_rule="adam")
    for removed in ("legacy", "flip"):
        with pytest.raises(ValueError, match="was removed"):
            TernaryScaleTensor(32, 4, group_size=8, update_rule=removed)
    with pytest.raises(ValueError, match="takes no setting counter_bits"):
        TernaryScaleTensor(32, 4, group_size=8, update_rule="bigint", counter_bits=4)


# --------------------------------------------------------------------------- the counter rule


def _expected_counter_step(t, c, gw, u, rate, bits):
    """Element by element in float64/Python ints, independent of counter_block's tensor code."""
    L = 1 << bits
    t2, c2 = t.clone().long(), c.clone().long()
    for n in range(gw.shape[0]):
        rms = max(float(gw[n].double().pow(2).mean().sqrt()), 1e-30)
        for k in range(gw.shape[1]):
            g = float(gw[n, k])
            a = rate * abs(g) / rms
            steps = min(int(a + float(u[n, k])), 3 * L - 1)
            sgn = (g > 0) - (g < 0)
            p = min(max((int(t[n, k]) + 1) * L + int(c[n, k]) - sgn * steps, 0), 3 * L - 1)
            t2[n, k], c2[n, k] = p // L - 1, p % L
    return t2, c2


@pytest.mark.parametrize("bits,rate", [(1, 0.7), (2, 1.0), (4, 3.0), (5, 6.0), (8, 20.0)])
def test_counter_block_matches_elementwise_reference(bits, rate):
    g = torch.Generator().manual_seed(bits)
    t = torch.randint(-1, 2, (5, 24), generator=g)
    c = torch.randint(0, 1 << bits, (5, 24), generator=g)
    gw = torch.randn(5, 24, generator=g) * torch.rand(5, 1, generator=g)
    gw[0, :3] = 0.0                                          # zero gradient: never moves
    u = torch.rand(5, 24, generator=g)
    t_new, c_new = counter_block(t, c, gw, u, rate, bits)
    et, ec = _expected_counter_step(t, c, gw, u, rate, bits)
    assert torch.equal(t_new.long(), et) and torch.equal(c_new.long(), ec)
    assert torch.equal(t_new[0, :3].long(), t[0, :3]) and torch.equal(c_new[0, :3].long(), c[0, :3])


def test_counter_step_is_unbiased_stochastic_rounding():
    # one weight in the middle of the ladder, many independent uniforms: mean move == rate*|g|/rms
    n = 20000
    gw = torch.tensor([[0.3, -1.0]]).repeat(n, 1)           # rms per row = sqrt((0.09 + 1) / 2)
    rms = ((0.09 + 1.0) / 2) ** 0.5
    t = torch.zeros(n, 2, dtype=torch.int64)
    c = torch.full((n, 2), 8)
    u = torch.rand(n, 2, generator=torch.Generator().manual_seed(0))
    t_new, c_new = counter_block(t, c, gw, u, 2.0, 4)
    move = (t_new.long() + 1) * 16 + c_new.long() - (16 + 8)
    torch.testing.assert_close(move.double().mean(0), torch.tensor([-2.0 * 0.3 / rms, 2.0 / rms], dtype=torch.float64),
                               atol=0.02, rtol=0)


def test_counter_ladder_saturates_at_both_ends():
    bits = 2
    t = torch.tensor([[1, -1, 1, 0]])
    c = torch.tensor([[3, 0, 0, 3]])
    gw = torch.tensor([[-5.0, 5.0, 5.0, -5.0]])              # push +1/3 up, -1/0 down, +1/0 down, 0/3 up
    t_new, c_new = counter_block(t, c, gw, torch.zeros(1, 4), 1.0, bits)  # rms = 5: one rung each
    assert t_new.tolist() == [[1, -1, 0, 1]] and c_new.tolist() == [[3, 0, 3, 0]]


def _counter_layer(seed=3, **kw):
    kw = dict(dict(counter_bits=2, counter_rate=1.5), **kw)
    return TernaryScaleTensor(36, 16, group_size=4, seed=seed, update_rule="counter", **kw)


def test_counter_layer_one_ballot_matches_independent_computation():
    layer = _counter_layer()
    assert set(layer.state_dict()) == {"T_packed", "E", "corr_accum", "step_counter", "hash_key", "C_packed"}
    T0 = layer.ternary().long()
    C0 = unpack_counters(layer.C_packed, 36, 2).long()
    assert torch.all(C0 == 2)                                # mid-ladder start: L // 2
    x = torch.randn(20, 36, generator=torch.Generator().manual_seed(5))
    gy = torch.randn(20, 16, generator=torch.Generator().manual_seed(6))
    ballot, key = int(layer.step_counter), int(layer.hash_key)
    corr0 = layer.corr_accum.clone()
    layer(x).backward(gy)
    ternary_step(layer)
    gw = gy.T.double() @ x.double()
    sgn = torch.sign(gw).long()
    assert torch.equal(layer.corr_accum - corr0, -(sgn * T0).view(16, 9, 4).sum(-1))  # votes use the pre-step T
    u = counter_uniform(key, ballot, 0, 16, 36, torch.device("cpu"))
    et, ec = _expected_counter_step(T0, C0, gw.float(), u, 1.5, 2)
    T1, C1 = layer.ternary().long(), unpack_counters(layer.C_packed, 36, 2).long()
    assert torch.equal(T1, et) and torch.equal(C1, ec)
    assert 0.05 < (T1 != T0).float().mean() < 0.6
    assert layer.validate_state() is None


def test_counter_rule_is_reproducible_and_resumes_bit_exactly():
    xs = [torch.randn(8, 36, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    a, c = _counter_layer(), _counter_layer()
    _steps([a, c], xs[:3])
    assert all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    _assert_resume_is_exact(_counter_layer(), _counter_layer(seed=11), xs)
    frozen = _counter_layer(counter_rate=0.0)
    t0, c0 = frozen.T_packed.clone(), frozen.C_packed.clone()
    frozen(xs[0]).sum().backward()
    assert torch.equal(frozen.T_packed, t0) and torch.equal(frozen.C_packed, c0)


def test_counter_audit_and_state_checks():
    layer = TernaryScaleTensor(64, 16, group_size=32, seed=0, update_rule="counter", counter_bits=4)
    rep = ternary_audit(layer)
    assert rep["state_bytes"]["C_packed"] == 64 * 16 // 2
    assert rep["training_state_bytes"] == 64 * 16 // 4 + 64 * 16 // 2 + 9 * 2 * 16 + 8 + 8
    assert rep["trainable_float_params"] == 0
    one = TernaryScaleTensor(36, 2, group_size=4, seed=0, update_rule="counter", counter_bits=1)
    assert one.validate_state() is None                       # 36 1-bit counters = 4 bytes + 4 bits of padding
    assert int(one.C_packed[0, -1]) == 0x0F                   # every counter starts at 1 (L // 2), padding 0
    one.C_packed[1, -1] |= 0x80
    assert "padding" in one.validate_state()
    sd = one.state_dict()
    sd["C_packed"] = sd["C_packed"][:, :-1].clone()
    with pytest.raises(RuntimeError, match="C_packed"):
        TernaryScaleTensor(36, 2, group_size=4, seed=0, update_rule="counter", counter_bits=1).load_state_dict(sd)
    five = TernaryScaleTensor(36, 2, group_size=4, seed=0, update_rule="counter", counter_bits=5)
    assert ternary_audit(five)["state_bytes"]["C_packed"] == 2 * (18 + 5)    # 0.625 bytes per weight + padding
    assert five.validate_state() is None and int(five.C_packed[0, -1]) == 0x0F    # 16 = L // 2: bit 4 set, 4 pad bits 0
    five.C_packed[0, -1] |= 0x10                               # a padding high bit
    assert "padding" in five.validate_state()
    with pytest.raises(ValueError, match="counter_bits"):
        TernaryScaleTensor(32, 4, group_size=8, update_rule="counter", counter_bits=3)
    with pytest.raises(ValueError, match="counter_rate"):
        TernaryScaleTensor(32, 4, group_size=8, update_rule="counter", counter_rate=-1.0)


def test_auto_counter_rate_threshold():
    assert AUTO_RATE_PASSES == 30.0
    assert [auto_counter_rate(p) for p in (0.2, 8.0, 23.0, 30.0)] == [1.0] * 4        # few passes: rate 1
    assert [auto_counter_rate(p) for p in (30.01, 76.0, 82.0, 1e6)] == [0.5] * 4      # many: rate 0.5
    assert auto_counter_rate(None) == auto_counter_rate(float("nan")) == 1.0          # unknown (multimodal)
