"""Polarity validation: accumulating the votes moves each scale the way that lowers the loss."""
import torch

from arbitor.ternary.ops.linear import expand_weight
from arbitor.ternary.layer import TernaryScaleTensor
from arbitor.ternary.step import ternary_step


def test_votes_move_scales_toward_lower_loss():
    torch.manual_seed(0)
    layer = TernaryScaleTensor(64, 2, group_size=16, seed=5)
    S0 = layer.scale().clone()
    # A teacher that differs in two known groups: row 0 group 1 wants a 2x larger scale,
    # row 1 group 2 wants a 2x smaller one; every other group is already right.
    S_target = S0.clone()
    S_target[0, 1] *= 2
    S_target[1, 2] /= 2
    W_teacher = expand_weight(layer.T_packed, S_target, 64, 16)
    gen = torch.Generator().manual_seed(1)
    losses, first_vote = [], None
    for step in range(40):
        x = torch.randn(256, 64, generator=gen)
        loss = (layer(x) - x @ W_teacher.T).pow(2).mean()
        loss.backward()
        if first_vote is None:
            first_vote = layer.corr_accum.clone()
        ternary_step(layer)
        losses.append(loss.item())
    nnz = (layer.ternary() != 0).view(2, 4, 16).sum(-1)
    # the first ballot is unanimous in the two mis-scaled groups
    assert first_vote[0, 1] == nnz[0, 1] and first_vote[1, 2] == -nnz[1, 2]
    assert layer.corr_accum[0, 1] > 0 and layer.corr_accum[1, 2] < 0
    ratio = layer.scale() / S0
    assert 1.7 < ratio[0, 1] < 2.3 and 0.43 < ratio[1, 2] < 0.6
    others = torch.ones_like(ratio, dtype=torch.bool)
    others[0, 1] = others[1, 2] = False
    assert torch.all((ratio[others] - 1).abs() < 0.1)
    assert sum(losses[-5:]) / 5 < losses[0] / 20
