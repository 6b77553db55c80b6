"""The leaky-window BigInt variant (arbitor/kernel/gap_rules.py): integer-only, invariant-preserving."""
import torch

from arbitor.kernel.gap_rules import halve_state, leaky_window
from arbitor.kernel.ternary_scale import TernaryScaleTensor, ternary_step


def test_halve_state_scalar_counter():
    corr = torch.tensor([[7, -7, 0, 64]], dtype=torch.int64)
    sc = torch.tensor(2, dtype=torch.int64)
    assert halve_state(corr, sc, window=4) == 0 and int(sc) == 2
    sc.fill_(5)  # 5 ballots, group 32: |corr| <= 160
    assert halve_state(corr, sc, window=4) == 1
    assert corr.tolist() == [[3, -3, 0, 32]] and int(sc) == 3  # trunc toward zero, count rounded up
    assert corr.dtype == torch.int64 and sc.dtype == torch.int64


def test_halve_state_per_row_counter_keeps_invariant():
    g = 4
    sc = torch.tensor([1, 9, 33, 16], dtype=torch.int64)
    corr = torch.stack([sc * g, -sc * g, sc * g - 1, sc]).T.contiguous()  # extremes of |corr| <= sc*g
    before = corr.clone()
    halve_state(corr, sc, window=8)
    assert corr[0].tolist() == before[0].tolist() and int(sc[0]) == 1  # below window: untouched
    assert sc.tolist() == [1, 5, 17, 8]
    assert bool((corr.abs() <= sc.unsqueeze(1) * g).all())


def test_leaky_window_on_layer_training_loop():
    torch.manual_seed(0)
    layer = TernaryScaleTensor(32, 16, group_size=8, strength=4.0, seed=1)
    x = torch.randn(4, 32)
    target = torch.randn(4, 16)
    for _ in range(12):
        loss = (layer(x) - target).pow(2).mean()
        loss.backward()
        ternary_step(layer)
        leaky_window(layer, window=4)
        assert int(layer.step_counter) < 4 + 1
        assert layer.validate_state() is None
        assert bool((layer.corr_accum.abs() <= layer.step_counter * layer.group_size).all())
    # same scales as before the halving, up to rounding: S stays finite and positive
    assert bool(torch.isfinite(layer._get_S()).all())


def test_leaky_window_refuses_pending_ballots():
    layer = TernaryScaleTensor(32, 16, group_size=8, seed=1)
    layer(torch.randn(2, 32)).sum().backward()
    try:
        leaky_window(layer, window=2)
    except RuntimeError:
        pass
    else:
        raise AssertionError("pending ballots must be refused")
