"""SparseTernaryEmbedding: both training modes, touched rows only, thresholds, audit."""
import pytest
import torch

from arbitor.ternary.embedding import SparseTernaryEmbedding
from arbitor.ternary.format import unpack_ternary
from arbitor.ternary.audit import ternary_audit


def _pull(emb, idx, direction):
    """One ballot of loss -sum(out * direction): its gradient is -direction, so votes push toward +direction."""
    out = emb(idx)
    (-(out * direction).sum()).backward()


@pytest.mark.parametrize("mode", ["bigint", "legacy"])
def test_forward_is_T_times_S(mode):
    emb = SparseTernaryEmbedding(10, 16, 4, update_rule=mode, seed=3)
    idx = torch.tensor([[1, 4, 1], [9, 0, 4]])
    out = emb(idx)
    assert out.shape == (2, 3, 16) and out.dtype == torch.float32
    T = unpack_ternary(emb.T_packed, 16, torch.float32)
    S = torch.exp2(emb.E.to(torch.float32)).repeat_interleave(4, dim=1)
    torch.testing.assert_close(out, (T * S)[idx])
    assert sum(p.numel() for p in emb.parameters()) == 0


@pytest.mark.parametrize("mode", ["bigint", "legacy"])
def test_only_touched_rows_change(mode):
    emb = SparseTernaryEmbedding(12, 8, 4, update_rule=mode, seed=1)
    before = {k: v.clone() for k, v in emb.state_dict().items()}
    direction = torch.ones(1, 3, 8)
    for _ in range(6):
        _pull(emb, torch.tensor([[2, 5, 2]]), direction)
        emb.ternary_step()
    after = emb.state_dict()
    untouched = [r for r in range(12) if r not in (2, 5)]
    changed_any = False
    for k in before:
        if before[k].dim() == 0:
            continue
        assert torch.equal(before[k][untouched], after[k][untouched]), k
        changed_any |= not torch.equal(before[k][[2, 5]], after[k][[2, 5]])
    assert changed_any


def test_bigint_votes_and_per_row_ballots():
    emb = SparseTernaryEmbedding(6, 8, 4, update_rule="bigint", seed=2)
    direction = torch.randn(1, 2, 8)
    idx = torch.tensor([[3, 3]])  # row 3 twice: its gradient is the sum of both positions
    _pull(emb, idx, direction)
    T = unpack_ternary(emb.T_packed, 8, torch.float32)[3]
    grad = -(direction[0, 0] + direction[0, 1])
    expected = (-(torch.sign(grad) * T).view(2, 4).sum(-1)).to(torch.int64)
    assert torch.equal(emb.corr_accum[3], expected)
    assert emb.step_counter.tolist() == [0, 0, 0, 1, 0, 0]
    # the scale moved in the voted direction by strength * mean_corr
    S = emb.rows_scale(torch.tensor([3]))[0]
    torch.testing.assert_close(S, torch.exp2(emb.E[3].float() + emb.strength * expected.float() / 4))
    assert emb.validate_state() is None


def test_legacy_trit_flips_exactly_at_threshold():
    emb = SparseTernaryEmbedding(4, 4, 4, update_rule="legacy", t_threshold=3, e_threshold=1000, seed=0)
    T0 = unpack_ternary(emb.T_packed, 4)[1].clone()
    direction = torch.ones(1, 1, 4)  # every entry of row 1 is pushed up
    for ballot in range(1, 4):
        _pull(emb, torch.tensor([[1]]), direction)
        emb.ternary_step()
        T = unpack_ternary(emb.T_packed, 4)[1]
        if ballot < 3:
            assert torch.equal(T, T0)
            assert emb.T_accum[1].tolist() == [ballot] * 4
    expected = (T0 + 1).clamp(max=1)
    assert torch.equal(T, expected)
    # accumulators of moved trits reset; saturated (+1) trits keep pushing
    for k in range(4):
        assert int(emb.T_accum[1, k]) == (0 if T0[k] < 1 else 3)


def test_legacy_exponent_steps_at_threshold():
    emb = SparseTernaryEmbedding(2, 4, 4, update_rule="legacy", t_threshold=127, e_threshold=4, seed=5)
    T = unpack_ternary(emb.T_packed, 4, torch.float32)[0]
    nnz = int(T.abs().sum())
    assert nnz > 0
    direction = T.view(1, 1, 4)  # grows |w| of every nonzero entry: each votes +1, group vote = nnz
    E0 = int(emb.E[0, 0])
    ballots = -(-4 // nnz)  # ceil(4 / nnz)
    for _ in range(ballots):
        _pull(emb, torch.tensor([[0]]), direction)
        emb.ternary_step()
    assert int(emb.E[0, 0]) == E0 + 1
    assert int(emb.E_accum[0, 0]) == 0


def test_audit_reports_bytes_of_each_mode():
    legacy = ternary_audit(SparseTernaryEmbedding(16, 8, 4, update_rule="legacy"))
    assert legacy["state_bytes"]["T_accum"] == 16 * 8 and legacy["state_bytes"]["E_accum"] == 16 * 2 * 2
    assert legacy["state_bytes"]["corr_accum"] == 0
    big = ternary_audit(SparseTernaryEmbedding(16, 8, 4, update_rule="bigint"))
    assert big["state_bytes"]["corr_accum"] == 16 * 2 * 8 and big["state_bytes"]["step_counter"] == 16 * 8
    assert big["state_bytes"]["T_accum"] == 0
    for rep in (legacy, big):
        assert rep["logical_ternary_weights"] == 16 * 8 and rep["trainable_float_params"] == 0


def test_bad_inputs():
    emb = SparseTernaryEmbedding(4, 8, 4)
    with pytest.raises(IndexError, match="out of range"):
        emb(torch.tensor([4]))
    with pytest.raises(TypeError):
        emb(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="update_rule"):
        SparseTernaryEmbedding(4, 8, 4, update_rule="float")


def test_corrupt_state_rejected():
    emb = SparseTernaryEmbedding(4, 8, 4, update_rule="bigint")
    sd = emb.state_dict()
    sd["corr_accum"] = torch.full_like(sd["corr_accum"], 5)  # votes without ballots
    with pytest.raises(RuntimeError, match="corr_accum"):
        SparseTernaryEmbedding(4, 8, 4, update_rule="bigint").load_state_dict(sd)
