"""The update-rule protocol: one rule object per layer, settings checked by the rule, the schedule's one door,
and a rule written outside arbitor plugging into the layer."""
import pytest
import torch

from arbitor import set_rate_factor, ternary_step
from arbitor.ternary import TernaryConfig, TernaryScaleTensor
from arbitor.ternary.rules import RULE_SETTINGS, RULES, BigIntRule, CounterRule, TernaryState, UpdateRule, make_rule


def test_the_two_rules_and_their_settings():
    assert set(RULES) == {"bigint", "counter"}
    assert RULE_SETTINGS == {"bigint": (), "counter": ("counter_bits", "counter_rate")}
    assert isinstance(make_rule("bigint"), BigIntRule)
    rule = make_rule("counter", counter_bits=2, counter_rate=1.5)
    assert isinstance(rule, CounterRule) and rule.settings() == {"counter_bits": 2, "counter_rate": 1.5}
    with pytest.raises(ValueError, match="takes no setting counter_rate"):
        make_rule("bigint", counter_rate=1.0)
    with pytest.raises(ValueError, match="counter_bits must be one of"):
        make_rule("counter", counter_bits=3)
    with pytest.raises(ValueError, match=r"counter_rate must be in \[0, 64\]"):
        make_rule("counter", counter_rate=float("nan"))


def test_each_layer_holds_its_own_rule_object():
    a = TernaryScaleTensor(32, 8, 8, update_rule="counter", seed=0)
    b = TernaryScaleTensor(32, 8, 8, update_rule="counter", seed=1)
    assert a.rule is not b.rule and a.update_rule == "counter"
    assert "update_rule='counter'" in repr(a) and "counter_bits=5" in repr(a)


def test_set_rate_factor_scales_only_the_next_ballots_step():
    model = torch.nn.Sequential(TernaryScaleTensor(32, 8, 8, update_rule="counter", counter_rate=0.5, seed=0),
                                TernaryScaleTensor(8, 8, 4, seed=1))
    set_rate_factor(model, 0.25)
    assert model[0].rule.rate == 0.5 * 0.25 and model[0].rule.counter_rate == 0.5   # the base setting stays
    assert model[1].rule.rate_factor == 0.25                                        # bigint: no step size to scale
    frozen = TernaryScaleTensor(32, 8, 8, update_rule="counter", seed=0)
    frozen.set_rate_factor(0.0)                                   # rate 0: the trits stay, the scale votes still count
    t0, c0 = frozen.T_packed.clone(), frozen.C_packed.clone()
    frozen(torch.randn(6, 32)).pow(2).sum().backward()
    ternary_step(frozen)
    assert torch.equal(frozen.T_packed, t0) and torch.equal(frozen.C_packed, c0)
    assert frozen.corr_accum.abs().sum() > 0


def _counter_stack() -> torch.nn.Sequential:
    return torch.nn.Sequential(TernaryScaleTensor(32, 24, 8, update_rule="counter", counter_rate=1.0, seed=3),
                               TernaryScaleTensor(24, 16, 8, update_rule="counter", counter_rate=2.0, seed=4))


def test_a_schedule_reaches_a_compiled_counter_step_without_a_recompile():
    """The step size lives on the device (the layer's ``rate`` buffer): a compiled step sees a new rate factor
    without a recompile (torch.compile guarded the float by value: one recompile per schedule block, and on a GPU
    a recompile inside a CUDA-graph capture failed), and moves the state exactly as eager does."""
    torch._dynamo.reset()                       # no cache entries of earlier tests' compiles of the same forward
    eager, src = _counter_stack(), _counter_stack()
    compiled = torch.compile(src, backend="aot_eager")
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)  # as both layers see it
    with torch._dynamo.config.patch(error_on_recompile=True):
        for factor in (1.0, 0.5, 0.125, 0.0, 0.75):
            for model, run in ((eager, eager), (src, compiled)):
                set_rate_factor(model, factor)
                run(x).pow(2).sum().backward()
                ternary_step(model)
    for a, b in zip(eager, src):
        assert float(b.rate) == b.rule.rate == b.rule.counter_rate * 0.75
        for name in ("T_packed", "C_packed", "corr_accum", "E", "step_counter"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert "rate" not in src.state_dict() and "0.rate" not in src.state_dict()   # not state: a checkpoint is unchanged


def test_from_config_builds_the_configured_layer():
    cfg = TernaryConfig(group_size=16, strength=8.0, update_rule="counter", counter_bits=2, counter_rate=1.0,
                        ballot_prior=3, backend="torch")
    layer = TernaryScaleTensor.from_config(64, 24, cfg, seed=4)
    assert (layer.group_size, layer.strength, layer.backend, int(layer.step_counter)) == (16, 8.0, "torch", 3)
    assert layer.rule.settings() == {"counter_bits": 2, "counter_rate": 1.0}
    assert TernaryConfig(update_rule="bigint", counter_bits=8).rule_settings() == {}
    for bad, match in ((dict(group_size=12), "group_size"), (dict(update_rule="flip"), "update_rule"),
                       (dict(strength=21.0), "strength"), (dict(ballot_prior=-1), "ballot_prior"),
                       (dict(backend="cuda"), "ARB_TERNARY_BACKEND")):
        with pytest.raises(ValueError, match=match):
            TernaryConfig(**bad)


class _SignCountRule(UpdateRule):
    """A rule written outside arbitor: counts, per layer, how many ballots had a positive summed gradient."""

    name = "signcount"
    buffer_dtypes = {"positive_ballots": torch.int64}

    def buffers(self, out_features, in_features, seed, device):
        return {"positive_ballots": torch.zeros((), dtype=torch.int64, device=device)}

    def ballot(self, state: TernaryState, grad_y, x, ops):
        state.extra["positive_ballots"] += (grad_y.sum() > 0).to(torch.int64)
        state.count_ballot(torch.isfinite(grad_y).all())

    def validate(self, state):
        return "negative count" if int(state.extra["positive_ballots"]) < 0 else None


def test_a_new_rule_plugs_in_without_touching_the_layer():
    layer = TernaryScaleTensor(16, 4, 4, update_rule=_SignCountRule(), seed=0)
    assert "positive_ballots" in dict(layer.named_buffers())
    for sign in (1.0, -1.0, 1.0):
        (sign * layer(torch.randn(3, 16)).sum()).backward()
        ternary_step(layer)
    assert int(layer.positive_ballots) == 2 and int(layer.step_counter) == 3
    assert layer.validate_state() is None
    sd = layer.state_dict()
    sd["positive_ballots"] = torch.tensor(-1)
    with pytest.raises(RuntimeError, match="negative count"):
        TernaryScaleTensor(16, 4, 4, update_rule=_SignCountRule(), seed=0).load_state_dict(sd)
    with pytest.raises(ValueError, match="to the UpdateRule object"):
        TernaryScaleTensor(16, 4, 4, update_rule=_SignCountRule(), counter_bits=2)


def test_a_rule_without_gather_refuses_the_step_boundary_mode():
    layer = TernaryScaleTensor(16, 4, 4, update_rule=_SignCountRule(), seed=0)
    with pytest.raises(ValueError, match="'signcount' has no step-boundary mode"):
        layer.set_step_mode(2)
