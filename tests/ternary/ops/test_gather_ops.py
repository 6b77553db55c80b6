"""The step-boundary counter gather (``ops/gather.py``): the Triton kernel against the torch reference, block
by block (the interpreter on the CPU: identical integers), and the whole op on both implementations."""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton")

from arbitor.ternary.format import pack_ternary  # noqa: E402
from arbitor.ternary.ops.counter import counter_step_scale  # noqa: E402
from arbitor.ternary.ops.counter_triton import counter_gather_block_triton_  # noqa: E402
from arbitor.ternary.ops.gather import counter_gather_, counter_gather_block_torch_, move_cap  # noqa: E402
from arbitor.ternary.ops.triton_common import INTERPRETED  # noqa: E402

interp = pytest.mark.skipif(not INTERPRETED, reason="needs TRITON_INTERPRET=1 (CPU interpreter)")


def _i64(v):
    return torch.tensor(v, dtype=torch.int64)


@interp
@pytest.mark.parametrize("N,K,gs,rate,cap", [
    (5, 36, 4, 0.7, 47),        # K not a multiple of the tile: a ragged tile
    (7, 96, 32, 5.0, 3),        # a small cap that binds
    (2, 256, 256, 20.0, 15),    # one group wider than 128 columns
    (9, 200, 8, 3.0, 1),
])
def test_triton_gather_block_matches_reference(N, K, gs, rate, cap):
    g = torch.Generator().manual_seed(N * K)
    T = pack_ternary(torch.randint(-1, 2, (N, K), generator=g))
    gw = torch.randn(N, K, generator=g) * torch.rand(N, 1, generator=g)
    gw[0, :5] = 0.0
    scale = counter_step_scale(gw, rate)
    votes0 = torch.randint(-40, 40, (N, K // gs), generator=g)
    moves0 = torch.randint(-20, 20, (N, K), generator=g).to(torch.int8)
    ref = [votes0.clone(), moves0.clone()]
    out = [votes0.clone(), moves0.clone()]
    args = (_i64(99), _i64(12345), torch.zeros((), dtype=torch.int32), 3, K, gs, cap)
    counter_gather_block_torch_(gw, scale, T, *ref, *args)
    counter_gather_block_triton_(gw, scale, T, *out, *args)
    assert torch.equal(ref[0], out[0]) and torch.equal(ref[1], out[1])
    assert not torch.equal(ref[1], moves0) and int((ref[1] - moves0).abs().max()) <= cap
    bad = torch.ones((), dtype=torch.int32)                  # a non-finite ballot gathers nothing
    skipped = [votes0.clone(), moves0.clone()]
    counter_gather_block_triton_(gw, scale, T, *skipped, _i64(99), _i64(12345), bad, 3, K, gs, cap)
    assert torch.equal(skipped[0], votes0) and torch.equal(skipped[1], moves0)


@interp
def test_gather_op_both_impls_count_and_skip_nan():
    N, K, gs = 6, 40, 8
    g = torch.Generator().manual_seed(0)
    T = pack_ternary(torch.randint(-1, 2, (N, K), generator=g))
    gy, x = torch.randn(5, N, generator=g), torch.randn(5, K, generator=g)
    results = {}
    for impl in ("torch", "triton"):
        votes, moves = torch.zeros(N, K // gs, dtype=torch.int64), torch.zeros(N, K, dtype=torch.int8)
        pending, nonfinite = _i64(0), _i64(0)
        counter_gather_(gy, x, T, votes, moves, _i64(7), pending, nonfinite, _i64(3), K, gs, 1.0, move_cap(2, 4),
                        impl=impl)
        x_bad = x.clone()
        x_bad[2, 3] = float("nan")
        counter_gather_(gy, x_bad, T, votes, moves, _i64(8), pending, nonfinite, _i64(3), K, gs, 1.0,
                        move_cap(2, 4), impl=impl)
        assert int(pending) == 1 and int(nonfinite) == 1
        results[impl] = (votes, moves)
    assert torch.equal(results["torch"][0], results["triton"][0])     # fp32 grad_W on both here
    assert torch.equal(results["torch"][1], results["triton"][1])
