"""The GEMV rows' read floor reads every word of ``T_packed`` and ``S`` (Triton interpreter, odd sizes)."""
from __future__ import annotations

import functools
import operator

import pytest
import torch

pytest.importorskip("triton")
from arbitor.ternary.ops.triton_common import INTERPRETED  # noqa: E402

pytestmark = pytest.mark.skipif(not INTERPRETED, reason="runs the kernel under TRITON_INTERPRET=1")


@pytest.fixture
def floor(load_benchmark):
    return load_benchmark("_read_floor")


def _xor(t: torch.Tensor) -> int:
    return functools.reduce(operator.xor, t.contiguous().view(torch.uint8).view(-1).view(torch.int32).tolist(), 0)


@pytest.mark.parametrize("N,KB,G,programs", [(7, 12, 3, 5), (16, 64, 4, 3), (3, 4, 1, 8)])
def test_read_floor_reads_every_word_once(floor, N, KB, G, programs):
    g = torch.Generator().manual_seed(N * 100 + programs)
    T_packed = torch.randint(0, 256, (N, KB), dtype=torch.uint8, generator=g)
    S = torch.rand(N, G, generator=g)
    out = torch.zeros(16, dtype=torch.int32)
    got = functools.reduce(operator.xor, floor.read_floor(T_packed, S, programs, out).tolist(), 0)
    assert got == _xor(T_packed) ^ _xor(S)
    # a word flipped anywhere changes the result: no word is skipped
    T_packed[N - 1, KB - 1] ^= 0x5A
    got2 = functools.reduce(operator.xor, floor.read_floor(T_packed, S, programs, out).tolist(), 0)
    assert got2 != got


def test_launch_floor_writes_each_program(floor):
    out = torch.full((8,), -1, dtype=torch.int32)
    floor.launch_floor(5, out)
    assert out.tolist() == [0, 1, 2, 3, 4, -1, -1, -1]
