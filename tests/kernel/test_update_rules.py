"""The legacy (T_accum/E_accum) and flip (stateless stochastic trit) update rules."""
import pytest
import torch

from arbitor.kernel.ternary_audit import ternary_audit
from arbitor.kernel.ternary_scale import TernaryScaleTensor, ternary_step
from arbitor.kernel.update_rules import counter_uniform


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
    xs = [torch.randn(8, 64, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    _assert_resume_is_exact(TernaryScaleTensor(64, 16, group_size=16, seed=3, update="flip", flip_rate=0.2),
                            TernaryScaleTensor(64, 16, group_size=16, seed=11, update="flip", flip_rate=0.2), xs)


def test_bad_update_arguments():
    with pytest.raises(ValueError, match="update must be one of"):
        TernaryScaleTensor(32, 4, group_size=8, update="adam")
    with pytest.raises(ValueError, match="flip_rate"):
        TernaryScaleTensor(32, 4, group_size=8, update="flip", flip_rate=2.0)
    with pytest.raises(ValueError, match="t_threshold"):
        TernaryScaleTensor(32, 4, group_size=8, update="legacy", t_threshold=0)


# --------------------------------------------------------------------------- the counter rule
from arbitor.kernel.packing import unpack_counters  # noqa: E402
from arbitor.kernel.update_rules import counter_block  # noqa: E402


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


@pytest.mark.parametrize("bits,rate", [(1, 0.7), (2, 1.0), (4, 3.0), (8, 20.0)])
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
    return TernaryScaleTensor(36, 16, group_size=4, seed=seed, update="counter", **kw)


def test_counter_layer_one_ballot_matches_independent_computation():
    layer = _counter_layer()
    assert set(dict(layer.named_buffers())) == {"T_packed", "E", "corr_accum", "step_counter", "flip_key", "C_packed"}
    T0 = layer.ternary().long()
    C0 = unpack_counters(layer.C_packed, 36, 2).long()
    assert torch.all(C0 == 2)                                # mid-ladder start: L // 2
    x = torch.randn(20, 36, generator=torch.Generator().manual_seed(5))
    gy = torch.randn(20, 16, generator=torch.Generator().manual_seed(6))
    ballot, key = int(layer.step_counter), int(layer.flip_key)
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
    layer = TernaryScaleTensor(64, 16, group_size=32, seed=0, update="counter", counter_bits=4)
    rep = ternary_audit(layer)
    assert rep["state_bytes"]["C_packed"] == 64 * 16 // 2
    assert rep["training_state_bytes"] == 64 * 16 // 4 + 64 * 16 // 2 + 9 * 2 * 16 + 8 + 8
    assert rep["trainable_float_params"] == 0
    one = TernaryScaleTensor(36, 2, group_size=4, seed=0, update="counter", counter_bits=1)
    assert one.validate_state() is None                       # 36 1-bit counters = 4 bytes + 4 bits of padding
    assert int(one.C_packed[0, -1]) == 0x0F                   # every counter starts at 1 (L // 2), padding 0
    one.C_packed[1, -1] |= 0x80
    assert "padding" in one.validate_state()
    sd = one.state_dict()
    sd["C_packed"] = sd["C_packed"][:, :-1].clone()
    with pytest.raises(RuntimeError, match="C_packed"):
        TernaryScaleTensor(36, 2, group_size=4, seed=0, update="counter", counter_bits=1).load_state_dict(sd)
    with pytest.raises(ValueError, match="counter_bits"):
        TernaryScaleTensor(32, 4, group_size=8, update="counter", counter_bits=3)
    with pytest.raises(ValueError, match="counter_rate"):
        TernaryScaleTensor(32, 4, group_size=8, update="counter", counter_rate=-1.0)
