"""TernaryScaleTensor against independent dense computations (torch reference backend)."""
import math

import pytest
import torch

from arbitor.ternary import scale as bs
from arbitor.ternary.format import unpack_ternary
from arbitor.ternary.layer import TernaryScaleTensor
from arbitor.ternary.step import ternary_layers, ternary_step


def independent_S(layer):
    """S from the formula, element by element in Python floats (no shared code with the layer)."""
    n = int(layer.step_counter) + layer.pending_ballots
    out = torch.empty(layer.out_features, layer.n_groups, dtype=torch.float64)
    for i in range(layer.out_features):
        for g in range(layer.n_groups):
            mean = int(layer.corr_accum[i, g]) / (n * layer.group_size) if n else 0.0
            out[i, g] = 2.0 ** (int(layer.E[i, g]) + layer.strength * mean)
    return out


def dense_weight(layer):
    t = unpack_ternary(layer.T_packed, layer.in_features, torch.float64)
    return (t.view(layer.out_features, -1, layer.group_size) * independent_S(layer).unsqueeze(-1)).view(
        layer.out_features, layer.in_features)


def int_data(*shape, seed=0, lo=-3, hi=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=g).to(torch.float32)


def make_layer(K=96, N=40, gs=16, seed=3, **kw):
    layer = TernaryScaleTensor(K, N, group_size=gs, seed=seed, backend="torch", **kw)
    # give the state a non-trivial history so S differs per group
    g = torch.Generator().manual_seed(seed + 1)
    layer.step_counter.fill_(5)
    layer.corr_accum.copy_(torch.randint(-5 * gs, 5 * gs + 1, layer.corr_accum.shape, generator=g))
    return layer


def test_buffers_dtypes_and_no_parameters():
    layer = TernaryScaleTensor(128, 24, group_size=32, seed=0)
    assert list(layer.parameters()) == []
    bufs = dict(layer.state_dict())
    assert {k: v.dtype for k, v in bufs.items()} == {
        "T_packed": torch.uint8, "E": torch.int8, "corr_accum": torch.int64, "step_counter": torch.int64}
    # the step's device counters and the rule's step size are buffers (they follow .to()) but not state: never in
    # a checkpoint
    assert {k for k, _ in layer.named_buffers()} - set(bufs) == {"pending", "nonfinite", "rate"}
    assert layer.rate.dtype == torch.float32 and layer.setting_buffers == ("rate",)
    counter = TernaryScaleTensor(64, 8, group_size=32, update_rule="counter", counter_rate=0.3, seed=0)
    counter.set_rate_factor(0.7)
    counter.half()                       # a float cast moves the step size but keeps it float32 (no rounding)
    assert counter.rate.dtype == torch.float32 and float(counter.rate) == float(torch.tensor(0.3 * 0.7))
    assert tuple(bufs["T_packed"].shape) == (24, 32)
    assert tuple(bufs["E"].shape) == tuple(bufs["corr_accum"].shape) == (24, 4)
    assert bufs["step_counter"].shape == ()


@pytest.mark.parametrize("lead", [(7,), (2, 5), (1, 3, 2)])
def test_forward_matches_dense(lead):
    layer = make_layer()
    x = torch.randn(*lead, layer.in_features)
    y = layer(x)
    ref = (x.double() @ dense_weight(layer).T).float()
    assert y.shape == (*lead, layer.out_features) and y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_forward_low_precision_inputs(dtype):
    layer = make_layer()
    x = torch.randn(9, layer.in_features).to(dtype)
    y = layer(x)
    assert y.dtype == dtype
    ref = x.double() @ dense_weight(layer).T
    assert ((y.double() - ref).norm() / ref.norm()) < 1e-2


@pytest.mark.parametrize("block_elems", [None, "100"])  # 100 elements -> one output row per block
def test_grad_x_and_votes_match_dense_autograd(monkeypatch, block_elems):
    if block_elems:
        monkeypatch.setenv("ARB_TORCH_BLOCK_ELEMS", block_elems)
    layer = make_layer()
    x = int_data(3, 11, layer.in_features, seed=1).requires_grad_()
    grad_y = int_data(3, 11, layer.out_features, seed=2)
    corr_before = layer.corr_accum.clone()
    W = dense_weight(layer).float().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    (x_ref @ W.T).backward(grad_y)

    layer(x).backward(grad_y)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-4)
    # explicit correlation: grad_W = grad_y.T @ x over all leading dims; vote = -sum sign(grad_W) * T
    gW = grad_y.reshape(-1, layer.out_features).double().T @ x.detach().reshape(-1, layer.in_features).double()
    torch.testing.assert_close(W.grad.double(), gW)
    T = unpack_ternary(layer.T_packed, layer.in_features, torch.int64)
    expected = -(torch.sign(gW).to(torch.int64) * T).view(layer.out_features, -1, layer.group_size).sum(-1)
    assert torch.equal(layer.corr_accum - corr_before, expected)
    assert layer.pending_ballots == 1
    assert expected.abs().max() <= layer.group_size


def test_votes_without_input_grad_and_frozen_layer():
    layer = make_layer()
    before = layer.corr_accum.clone()
    x = torch.randn(4, layer.in_features)  # no requires_grad: the anchor still routes backward to cast votes
    layer(x).sum().backward()
    assert layer.pending_ballots == 1 and not torch.equal(layer.corr_accum, before)
    layer.set_voting(False)
    ternary_step(layer)
    before = layer.corr_accum.clone()
    x = torch.randn(4, layer.in_features, requires_grad=True)
    layer(x).sum().backward()
    assert torch.equal(layer.corr_accum, before) and layer.pending_ballots == 0 and x.grad is not None
    layer.eval()
    with torch.no_grad():
        layer(x)


def test_mean_corr_stays_in_unit_interval_with_accumulation():
    torch.manual_seed(0)
    layer = TernaryScaleTensor(64, 8, group_size=16, seed=1)
    for step in range(4):
        for micro in range(3):  # gradient accumulation: 3 ballots per step
            layer(torch.randn(5, 64)).pow(2).sum().backward()
            assert layer.mean_corr().abs().max() <= 1.0
        assert ternary_step(layer) == 1
    assert int(layer.step_counter) == 12 and layer.pending_ballots == 0
    S = layer.scale()
    assert torch.all(S <= torch.exp2(layer.E.double() + layer.strength).float())


def test_S_formula_and_zero_counter():
    layer = TernaryScaleTensor(32, 4, group_size=8, seed=0, strength=2.0)
    torch.testing.assert_close(layer.scale(), torch.exp2(layer.E.float()))  # step_counter == 0 -> mean_corr = 0
    layer.step_counter.fill_(3)
    layer.corr_accum[0, 0] = 24   # mean_corr = 24 / (3 * 8) = 1
    layer.corr_accum[1, 2] = -6   # -0.25
    S = layer.scale()
    assert S[0, 0] == 2.0 ** (int(layer.E[0, 0]) + 2.0)
    assert S[1, 2] == 2.0 ** (int(layer.E[1, 2]) - 0.5)


def test_huge_counts_keep_precision():
    layer = TernaryScaleTensor(32, 2, group_size=8, seed=0)
    n = 2 ** 55  # beyond float32 and float64 integer precision of the product
    layer.step_counter.fill_(n)
    layer.corr_accum[0, 0] = n * 8 // 3
    S = layer.scale()[0, 0].item()
    expected = 2.0 ** (int(layer.E[0, 0]) + 4.0 * (1 / 3))
    assert math.isclose(S, expected, rel_tol=1e-6)


def test_strength_from_environment(monkeypatch):
    monkeypatch.setenv("ARB_BIGINT_CORR_STRENGTH", "2.5")
    assert TernaryScaleTensor(32, 2, group_size=8, seed=0).strength == 2.5
    assert TernaryScaleTensor(32, 2, group_size=8, seed=0, strength=1.0).strength == 1.0
    monkeypatch.setenv("ARB_BIGINT_CORR_STRENGTH", "strong")
    with pytest.raises(ValueError, match="ARB_BIGINT_CORR_STRENGTH"):
        TernaryScaleTensor(32, 2, group_size=8, seed=0)
    monkeypatch.delenv("ARB_BIGINT_CORR_STRENGTH")
    assert TernaryScaleTensor(32, 2, group_size=8, seed=0).strength == bs.DEFAULT_STRENGTH == 4.0
    with pytest.raises(ValueError, match="strength"):
        TernaryScaleTensor(32, 2, group_size=8, seed=0, strength=-1.0)


def test_initialisation_statistics_and_seeding():
    layer = TernaryScaleTensor(512, 256, group_size=64, seed=7)
    t = layer.ternary()
    zero_share = (t == 0).float().mean().item()
    assert abs(zero_share - 1 / 3) < 0.01
    assert abs((t == 1).float().mean().item() - (t == -1).float().mean().item()) < 0.01
    var = layer.effective_weight().var().item()
    assert abs(var * 512 - 1.0) < 0.1, var * 512
    assert torch.equal(TernaryScaleTensor(512, 256, group_size=64, seed=7).T_packed, layer.T_packed)
    assert not torch.equal(TernaryScaleTensor(512, 256, group_size=64, seed=8).T_packed, layer.T_packed)
    torch.manual_seed(1)
    a = TernaryScaleTensor(64, 8, group_size=16)
    torch.manual_seed(1)
    b = TernaryScaleTensor(64, 8, group_size=16)
    assert torch.equal(a.T_packed, b.T_packed) and torch.equal(a.E, b.E)
    sparse = TernaryScaleTensor(512, 64, group_size=64, seed=1, zero_fraction=0.9)
    assert abs((sparse.ternary() == 0).float().mean().item() - 0.9) < 0.02


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    a = make_layer()
    xs = [torch.randn(6, a.in_features) for _ in range(4)]
    for x in xs[:2]:
        a(x).pow(2).sum().backward()
        ternary_step(a)
    sd = {k: v.clone() for k, v in a.state_dict().items()}
    b = TernaryScaleTensor(a.in_features, a.out_features, group_size=a.group_size, seed=999)
    b.load_state_dict(sd)
    assert torch.equal(a(xs[0]), b(xs[0]))
    for x in xs[2:]:
        for layer in (a, b):
            layer(x).pow(2).sum().backward()
            ternary_step(layer)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_state_dict_refuses_pending_ballots():
    layer = make_layer()
    layer(torch.randn(2, layer.in_features)).sum().backward()
    with pytest.raises(RuntimeError, match="ternary_step"):
        layer.state_dict()
    ternary_step(layer)
    layer.state_dict()


def test_load_rejects_bad_state():
    layer = make_layer()
    good = layer.state_dict()
    fresh = lambda: TernaryScaleTensor(layer.in_features, layer.out_features, group_size=layer.group_size, seed=1)
    bad = dict(good, corr_accum=good["corr_accum"].double())
    with pytest.raises(RuntimeError, match="corr_accum: expected dtype torch.int64"):
        fresh().load_state_dict(bad)
    bad = dict(good, T_packed=torch.full_like(good["T_packed"], 0xFF))
    with pytest.raises(RuntimeError, match="0b11"):
        fresh().load_state_dict(bad)
    over = good["corr_accum"].clone()
    over[0, 0] = int(good["step_counter"]) * layer.group_size + 1
    with pytest.raises(RuntimeError, match="corrupt or mismatched"):
        fresh().load_state_dict(dict(good, corr_accum=over))
    with pytest.raises(RuntimeError, match="size mismatch"):
        TernaryScaleTensor(layer.in_features, layer.out_features + 1, group_size=layer.group_size).load_state_dict(good)


def test_overflow_is_refused_when_it_would_happen():
    """The bound is asserted on the device at the fold (on the CPU the assertion raises at once); a checkpoint
    past it is refused on load."""
    layer = TernaryScaleTensor(32, 2, group_size=8, seed=0)
    layer.step_counter.fill_(bs.MAX_VOTE_TOTAL // 8)
    layer(torch.randn(1, 32, requires_grad=True)).sum().backward()
    with pytest.raises(RuntimeError, match="2\\*\\*62"):
        ternary_step(layer)
    over = TernaryScaleTensor(32, 2, group_size=8, seed=0)
    over.step_counter.fill_(bs.MAX_VOTE_TOTAL // 8 + 1)
    assert "exceeds the bound" in over.validate_state()


def _model_of_layers(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(TernaryScaleTensor(32, 16, group_size=8, seed=1),
                                TernaryScaleTensor(16, 16, group_size=16, seed=2, update_rule="counter"),
                                TernaryScaleTensor(16, 8, group_size=8, seed=3),
                                TernaryScaleTensor(8, 8, group_size=8, seed=4))
    model[3].set_step_mode(2)                                # one layer in step-boundary mode
    return model


def test_folding_a_model_at_once_equals_layer_by_layer():
    """``ternary_step(model)`` folds the layers of one group size with multi-tensor launches
    (``ternary_step_many``); the state equals each layer's own ``ternary_step()``, step-boundary layers included,
    over several steps."""
    a, b = _model_of_layers(0), _model_of_layers(0)
    start = [int(layer.step_counter) for layer in a]
    for step in range(3):
        x = torch.randn(5, 32, generator=torch.Generator().manual_seed(step))
        for m in (a, b):
            m(x).square().sum().backward()
        assert ternary_step(a) == 4
        assert sum(layer.ternary_step() for layer in b) == 4
        assert ternary_step(a) == 0                         # nothing dirty: nothing folds
        for (name, x_a), x_b in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x_a, x_b), (step, name)
        for layer, s0 in zip(a, start):                     # one ballot a backward, folded; nothing left pending
            assert (int(layer.step_counter), int(layer.pending)) == (s0 + step + 1, 0)


def test_folding_a_model_at_once_checks_every_layers_bound():
    model = _model_of_layers(0)
    model[2].step_counter.fill_(bs.MAX_VOTE_TOTAL // 8)     # the second layer of its group size
    model(torch.randn(2, 32)).sum().backward()
    with pytest.raises(RuntimeError, match="2\\*\\*62"):
        ternary_step(model)


def test_bad_input_errors():
    layer = TernaryScaleTensor(64, 8, group_size=16, seed=0)
    with pytest.raises(ValueError, match="last dimension must be 64"):
        layer(torch.randn(3, 63))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.ones(3, 64, dtype=torch.int32))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.ones(3, 64, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer([1.0] * 64)
    meta = TernaryScaleTensor(64, 8, group_size=16, seed=0, device="meta")
    with pytest.raises(RuntimeError, match="is on cpu but the layer's buffers are on meta"):
        meta(torch.randn(2, 64))
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        TernaryScaleTensor(100, 8, group_size=64)
    with pytest.raises(ValueError, match="power of two"):
        TernaryScaleTensor(96, 8, group_size=48)
    with pytest.raises(ValueError, match="power of two"):
        TernaryScaleTensor(96, 8, group_size=2)
    with pytest.raises(ValueError, match="positive"):
        TernaryScaleTensor(0, 8)
    with pytest.raises(ValueError, match="zero_fraction"):
        TernaryScaleTensor(64, 8, group_size=16, zero_fraction=1.0)


@pytest.mark.parametrize("where", ["grad_y", "x"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_ballot_casts_nothing_and_is_counted(bad, where):
    """A NaN or inf in the upstream gradient or in the layer's input (which a .sum() loss turns into a finite
    grad_y but a non-finite grad_W) casts no vote; the ballot is counted in ``nonfinite``, not ``pending``."""
    layer = make_layer()
    before, steps = layer.corr_accum.clone(), int(layer.step_counter)
    x = torch.randn(2, layer.in_features)
    g = torch.ones(2, layer.out_features)
    (g if where == "grad_y" else x)[1, 3] = bad
    layer(x).backward(g)
    assert int(layer.nonfinite) == 1 and int(layer.pending) == 0
    assert torch.equal(layer.corr_accum, before)
    assert layer.pending_ballots == 0 and layer.dirty       # the layer knows a ballot may have been cast
    ternary_step(layer)
    assert int(layer.step_counter) == steps and torch.equal(layer.corr_accum, before)
    layer(torch.randn(2, layer.in_features)).backward(torch.ones(2, layer.out_features))  # a finite one counts
    assert int(layer.pending) == 1 and not torch.equal(layer.corr_accum, before)


def test_ternary_step_walks_nested_modules():
    model = torch.nn.Sequential(TernaryScaleTensor(32, 16, group_size=8, seed=0), torch.nn.ReLU(),
                                TernaryScaleTensor(16, 4, group_size=8, seed=1))
    assert len(ternary_layers(model)) == 2
    model(torch.randn(3, 32)).sum().backward()
    assert ternary_step(model) == 2
    assert [int(m.step_counter) for m in ternary_layers(model)] == [1, 1]


def test_expect_ballots_marks_what_a_voting_forward_would():
    """``expect_ballots`` (called before a checkpointed region) sets the dirty flag exactly where a forward would:
    training, voting, grad enabled -- and a marked layer's forward then leaves it set."""
    from arbitor.ternary.step import expect_ballots
    model = torch.nn.Sequential(TernaryScaleTensor(16, 8, 8, seed=0), TernaryScaleTensor(8, 4, 4, seed=1))
    model.eval()
    expect_ballots(model)
    assert [m.dirty for m in model] == [False, False]
    model.train()
    with torch.no_grad():
        expect_ballots(model)
    model[1].set_voting(False)
    assert [m.dirty for m in model] == [False, False]
    expect_ballots(model)
    assert [m.dirty for m in model] == [True, False]
    model(torch.randn(3, 16)).sum().backward()
    assert [m.dirty for m in model] == [True, False] and ternary_step(model) == 1
