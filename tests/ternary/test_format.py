import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arbitor.ternary.format import (counter_packed_shape, counter_padding_ok, pack_counters, pack_ternary,
                                    packed_shape, tc_rows, tc_tiles, tc_tiles_ok, tc_tiles_shapes, unpack_counters,
                                    unpack_ternary, validate_packed)


@settings(max_examples=60, deadline=None)
@given(out_f=st.integers(1, 9), in_f=st.integers(1, 41), seed=st.integers(0, 2 ** 31 - 1))
def test_round_trip_any_shape(out_f, in_f, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(-1, 2, (out_f, in_f), generator=g, dtype=torch.int8)
    packed = pack_ternary(t)
    assert packed.dtype == torch.uint8 and packed.is_contiguous()
    assert tuple(packed.shape) == packed_shape(out_f, in_f) == (out_f, (in_f + 3) // 4)
    assert torch.equal(unpack_ternary(packed, in_f), t)
    assert torch.equal(unpack_ternary(packed, in_f, torch.float32), t.float())
    validate_packed(packed, in_f)


def test_bit_layout_is_as_documented():
    # weights k..k+3 of a byte sit at bits 0-1, 2-3, 4-5, 6-7; +1 -> 0b01, -1 -> 0b10, 0 -> 0b00
    t = torch.tensor([[1, -1, 0, 1, -1]])
    packed = pack_ternary(t)
    assert packed.tolist() == [[0b01_00_10_01, 0b00_00_00_10]]


def test_float_input_and_errors():
    assert torch.equal(pack_ternary(torch.tensor([[1.0, -1.0, 0.0]])), pack_ternary(torch.tensor([[1, -1, 0]])))
    with pytest.raises(ValueError, match="values must be in"):
        pack_ternary(torch.tensor([[2, 0]]))
    with pytest.raises(ValueError, match="exact integers"):
        pack_ternary(torch.tensor([[0.5, 0.0]]))
    with pytest.raises(ValueError, match="2-D"):
        pack_ternary(torch.tensor([1, 0]))
    with pytest.raises(TypeError, match="uint8"):
        unpack_ternary(torch.zeros(2, 2, dtype=torch.int8), 8)
    with pytest.raises(ValueError, match="bytes per row"):
        unpack_ternary(torch.zeros(2, 2, dtype=torch.uint8), 9)


def test_validate_rejects_invalid_code_and_padding():
    bad = torch.tensor([[0b11]], dtype=torch.uint8)
    with pytest.raises(ValueError, match="0b11"):
        validate_packed(bad, 4)
    padded = torch.tensor([[0b01_00_00_00]], dtype=torch.uint8)  # 4th weight set but in_features=3
    with pytest.raises(ValueError, match="padding"):
        validate_packed(padded, 3)


# ------------------------------------------------------------------ per-weight counters (C_packed)

@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([1, 2, 4, 5, 8]), rows=st.integers(1, 5), k=st.integers(1, 37), seed=st.integers(0, 999))
def test_counter_round_trip_any_shape(bits, rows, k, seed):
    c = torch.randint(0, 1 << bits, (rows, k), generator=torch.Generator().manual_seed(seed))
    packed = pack_counters(c, bits)
    assert packed.dtype == torch.uint8 and tuple(packed.shape) == counter_packed_shape(rows, k, bits)
    assert torch.equal(unpack_counters(packed, k, bits).to(torch.int64), c)
    assert counter_padding_ok(packed, k, bits)                  # padding counters are zero, in every plane
    per = 8 // (4 if bits == 5 else bits)
    if k % per:
        assert int(packed[:, (k + per - 1) // per - 1].max() >> ((k % per) * (4 if bits == 5 else bits))) == 0


def test_counter_bit_layout_is_as_documented():
    # 4-bit counters 3, 10, 7: byte 0 = 3 | 10 << 4, byte 1 = 7
    assert pack_counters(torch.tensor([[3, 10, 7]]), 4).tolist() == [[3 | 10 << 4, 7]]
    # 2-bit counters share T_packed's byte layout: first counter in the low bits
    assert pack_counters(torch.tensor([[1, 2, 3, 0, 1]]), 2).tolist() == [[1 | 2 << 2 | 3 << 4, 1]]
    # 5-bit counters 3, 26 (= 16 + 10), 17 (= 16 + 1): the low nibbles as 4-bit counters, then bit 4 as a 1-bit plane
    assert pack_counters(torch.tensor([[3, 26, 17]]), 5).tolist() == [[3 | 10 << 4, 1, 0b110]]
    assert counter_packed_shape(2, 36, 5) == (2, 18 + 5)
    bad = pack_counters(torch.tensor([[3, 26, 17]]), 5)
    bad[0, 2] |= 0x80                                          # a high bit past in_features = 3
    assert not counter_padding_ok(bad, 3, 5)


def test_counter_packing_errors():
    with pytest.raises(ValueError, match="counter_bits"):
        pack_counters(torch.zeros(2, 4, dtype=torch.int64), 3)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        pack_counters(torch.tensor([[4]]), 2)
    with pytest.raises(ValueError, match="bytes per row"):
        unpack_counters(torch.zeros(2, 3, dtype=torch.uint8), 16, 4)


@pytest.mark.parametrize("N,K,gs", [(16, 256, 64), (48, 768, 128), (32, 512, 256)])
def test_tc_layout_is_as_documented_and_round_trips(N, K, gs):
    """``tc_tiles``: unit ``(b, c, h, lane)`` word ``q`` is word ``16 c + 4 q + tq`` of row ``16 b + 8 h + g``
    (``lane = 4 g + tq``), scales by ``(b, c, h, g, i)``; ``tc_rows`` gives back the same bytes and scales."""
    g_ = torch.Generator().manual_seed(N + K)
    T_packed = pack_ternary(torch.randint(-1, 2, (N, K), generator=g_))
    S = torch.rand(N, K // gs, generator=g_)
    T_tiles, S_tiles = tc_tiles(T_packed, S, K, gs)
    assert (tuple(T_tiles.shape), tuple(S_tiles.shape)) == tc_tiles_shapes(N, K, gs)
    w, tw = T_packed.view(torch.int32), T_tiles.view(torch.int32)
    ngc = 256 // gs
    last_b, last_c = N // 16 - 1, K // 256 - 1
    for b, c, h, g, tq, q in [(0, 0, 0, 0, 0, 0), (last_b, last_c, 1, 7, 3, 3), (0, last_c, 1, 2, 1, 2)]:
        assert tw[b, c, h, 4 * g + tq, q] == w[16 * b + 8 * h + g, 16 * c + 4 * q + tq]
        assert S_tiles[b, c, h, g, ngc - 1] == S[16 * b + 8 * h + g, ngc * c + ngc - 1]
    back = tc_rows(T_tiles, S_tiles, K, gs)
    assert torch.equal(back[0], T_packed) and torch.equal(back[1], S)


def test_tc_layout_refuses_shapes_it_cannot_take():
    assert tc_tiles_ok(32, 512, 64) and not tc_tiles_ok(24, 512, 64) and not tc_tiles_ok(32, 320, 64)
    assert not tc_tiles_ok(32, 512, 32)
    with pytest.raises(ValueError, match="out_features % 16 == 0"):
        tc_tiles(pack_ternary(torch.zeros(24, 256)), torch.ones(24, 4), 256, 64)
    with pytest.raises(ValueError, match="are not a"):
        tc_tiles(pack_ternary(torch.zeros(16, 256)), torch.ones(16, 2), 256, 64)
    T_tiles, S_tiles = tc_tiles(pack_ternary(torch.zeros(16, 256)), torch.ones(16, 4), 256, 64)
    with pytest.raises(ValueError, match="tc layout"):
        tc_rows(T_tiles, S_tiles, 512, 64)
