"""The step-boundary mode (rules/base.py, ops/gather.py): gathered ballots, applied at ternary_step.

Split-invariance is the point: K ballots gathered in one module, or spread over several modules whose
``reduce_tensors`` are summed (what the data-parallel all-reduce does), give the same state bit for bit.
"""
import pytest
import torch

from arbitor.ternary.embedding import SparseTernaryEmbedding
from arbitor.ternary.layer import TernaryScaleTensor
from arbitor.ternary.ops.gather import move_cap
from arbitor.ternary.step import ternary_step

RULES = {"bigint": {}, "counter": {"counter_bits": 2, "counter_rate": 2.0},
         "counter-b5": {"counter_bits": 5, "counter_rate": 4.0}}    # two counter planes (format.py)


def _layer(rule, **kw):
    return TernaryScaleTensor(36, 7, 4, update_rule=rule.split("-")[0], seed=5, ballot_prior=2, **RULES[rule], **kw)


def _data(k):
    g = torch.Generator().manual_seed(k)
    return torch.randn(3, 5, 36, generator=g), torch.randn(3, 5, 7, generator=g)


@pytest.mark.parametrize("rule", list(RULES))
def test_one_gathered_ballot_equals_one_online_ballot(rule):
    x, c = _data(0)
    online, boundary = _layer(rule), _layer(rule)
    boundary.set_step_mode(1)
    for m in (online, boundary):
        (m(x) * c).sum().backward()
        ternary_step(m)
    a, b = online.state_dict(), boundary.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert int(b["step_counter"]) == 3 and b["corr_accum"].abs().sum() > 0


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("procs", [2, 4])
def test_gathered_ballots_do_not_depend_on_the_split(rule, procs):
    K, steps = 4, 3
    single = _layer(rule)
    single.set_step_mode(K)
    ranks = [_layer(rule) for _ in range(procs)]
    for r, m in enumerate(ranks):
        m.set_step_mode(K)
        m.set_slot_base(r * (K // procs))
    for step in range(steps):
        for g in range(K):
            x, c = _data(100 * step + g)
            (single(x) * c).sum().backward()
            m = ranks[g // (K // procs)]
            (m(x) * c).sum().backward()
        summed = [sum(ts) for ts in zip(*[[t for t, _ in m.reduce_tensors()] for m in ranks])]
        for m in ranks:
            m.load_reduced(summed)
        ternary_step(single)
        for m in ranks:
            ternary_step(m)
        # within a step every micro-batch saw the step-start state: the forward ignores the gathered ballots
    a = single.state_dict()
    for m in ranks:
        b = m.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert int(a["step_counter"]) == 2 + K * steps


def test_forward_sees_the_step_start_state():
    m = _layer("bigint")
    m.set_step_mode(2)
    x, c = _data(1)
    y0 = m(x)
    (y0 * c).sum().backward()
    assert torch.equal(m(x), y0.detach())          # the gathered ballot is not applied yet
    ternary_step(m)
    assert not torch.equal(m(x), y0.detach())


def test_counter_moves_are_capped_to_fit_int8():
    assert move_cap(4, 1) == 47 and move_cap(4, 8) == 15 and move_cap(2, 127) == 1
    with pytest.raises(ValueError, match=r"max_ballots must be in \[1, 127\]"):
        move_cap(4, 128)
    m = _layer("counter")
    with pytest.raises(ValueError, match="max_ballots must be in"):
        m.set_step_mode(200)
    m = TernaryScaleTensor(36, 7, 4, update_rule="counter", counter_rate=64.0, seed=1)   # large moves
    m.set_step_mode(8)
    for k in range(8):
        x, c = _data(k)
        (m(x) * 1e3 * c).sum().backward()
    assert int(m.gathered()["move_sum"].abs().max()) <= 8 * 15


def test_more_ballots_than_declared_is_refused():
    m = _layer("bigint")
    m.set_step_mode(1)
    x, c = _data(0)
    (m(x) * c).sum().backward()
    with pytest.raises(RuntimeError, match="more than max_ballots=1 ballots in one step"):
        (m(x) * c).sum().backward()


def test_wire_bound_is_checked():
    m = TernaryScaleTensor(2 ** 12, 2, 2 ** 12, seed=0)
    with pytest.raises(ValueError, match="vote_sum may reach .* beyond torch.int32"):
        m.set_step_mode(2 ** 20)


def test_mode_switch_refused_with_pending_ballots_and_buffers_not_in_state_dict():
    m = _layer("counter")
    m.set_step_mode(2)
    assert "gather_move_sum" not in m.state_dict()
    x, c = _data(0)
    (m(x) * c).sum().backward()
    with pytest.raises(RuntimeError, match="ballots are pending"):
        m.set_step_mode(None)
    ternary_step(m)
    m.set_step_mode(None)
    assert m.gathered() == {} and m.step_mode is None


@pytest.mark.parametrize("rule", ["bigint", "legacy"])
def test_embedding_gathered_ballots_do_not_depend_on_the_split(rule):
    K = 4

    def table():
        return SparseTernaryEmbedding(20, 8, 4, update_rule=rule, seed=3, t_threshold=2, e_threshold=4)
    single, ranks = table(), [table(), table()]
    for m in (single, *ranks):
        m.set_step_mode(K)
    for step in range(3):
        for g in range(K):
            gen = torch.Generator().manual_seed(10 * step + g)
            idx, c = torch.randint(0, 20, (2, 6), generator=gen), torch.randn(2, 6, 8, generator=gen)
            (single(idx) * c).sum().backward()
            (ranks[g // 2](idx) * c).sum().backward()
        summed = [sum(ts) for ts in zip(*[[t for t, _ in m.reduce_tensors()] for m in ranks])]
        for m in ranks:
            m.load_reduced(summed)
        for m in (single, *ranks):
            m.ternary_step()
    a = single.state_dict()
    for m in ranks:
        assert all(torch.equal(a[k], m.state_dict()[k]) for k in a)
    changed = a["corr_accum"].abs().sum() if rule == "bigint" else a["T_accum"].abs().sum() + a["E_accum"].abs().sum()
    assert changed > 0


def test_second_ballot_of_a_pass_takes_the_next_slot_and_overflow_is_refused():
    """A loss chunked in two casts two ballots per pass: they take slots s and s + 1 (``set_ballot_slot`` names s);
    a slot at or past ``max_ballots`` is refused (it would collide with another rank's)."""
    a, b = _layer("counter"), _layer("counter")
    a.set_step_mode(4)
    b.set_step_mode(4)
    x, c = _data(7)
    x2, c2 = _data(8)
    a.set_ballot_slot(2)
    (a(x) * c).sum().backward()
    (a(x2) * c2).sum().backward()          # slot 3
    b.set_ballot_slot(3)
    (b(x2) * c2).sum().backward()
    b.set_ballot_slot(2)
    (b(x) * c).sum().backward()
    assert all(torch.equal(ta, tb) for (ta, _), (tb, _) in zip(a.reduce_tensors(), b.reduce_tensors()))
    with pytest.raises(RuntimeError, match="ballot slot 4 >= max_ballots=4"):
        (a(x) * c).sum().backward()
