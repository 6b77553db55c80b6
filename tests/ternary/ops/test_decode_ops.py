"""The frozen layer's op (``decode_triton.decode_forward``: ``decode_gemv_kernel`` at one row,
``decode_mma_kernel`` at 1-16, expand + matmul above) against its torch reference (``linear.decode_forward_torch``).

CPU: Triton's interpreter (``TRITON_INTERPRET=1`` before triton is imported); odd N, M = 1 (both kernels),
3, 6, 16, group sizes 4-256 (one group a word, several groups a K step, a group over several K steps),
split-K, strided ``x``, fp32/bf16/fp16. The expand path is bit-equal to ``expand_weight(...).to(dtype)``.
GPU (``-m gpu``): realistic shapes, run twice (deterministic).
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

triton = pytest.importorskip("triton")

from arbitor.ternary.format import pack_ternary  # noqa: E402
from arbitor.ternary.ops import decode_triton  # noqa: E402
from arbitor.ternary.ops.linear import decode_forward_torch, expand_weight  # noqa: E402
from arbitor.ternary.ops.triton_common import COUNTERS, INTERPRETED  # noqa: E402

interp = pytest.mark.skipif(not INTERPRETED, reason="CPU interpreter tests need TRITON_INTERPRET=1")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED, reason="needs CUDA")


def frozen_state(N, K, gs, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    T_packed = pack_ternary(torch.randint(-1, 2, (N, K), generator=g)).to(device)
    S = (torch.rand(N, K // gs, generator=g) * 0.05 + 0.005).to(device)
    return T_packed, S


def close(y, y_ref, rtol=3e-6, atol=2e-6):
    """Outputs normalised by their largest magnitude: the kernel sums each group before its scale (and
    ``4 * sum(f x) - 5 * sum(x)``), so its rounding differs from ``x @ (T * S).T`` by a few ulps."""
    scale = y_ref.float().abs().max().item() + 1e-30
    torch.testing.assert_close(y.float() / scale, y_ref.float() / scale, rtol=rtol, atol=atol)


# (M, K, N, group_size, config, path)
CASES = [
    (1, 192, 37, 64, None, "gemv"),
    (1, 256, 19, 16, {"BLOCK_K": 64, "SPLIT": 3}, "gemv"),       # split-K, 4 groups a K step
    (1, 512, 21, 128, {"BLOCK_K": 64}, "gemv"),                  # a group over two K steps
    (1, 2112, 19, 64, {"BLOCK_N": 16, "BLOCK_K": 1024}, "gemv"),  # the sweep's wide tiles, ragged last K step
    (1, 4160, 11, 64, {"BLOCK_N": 4, "BLOCK_K": 4096, "num_warps": 2}, "gemv"),  # the narrowest, deepest tile
    (1, 384, 9, 128, None, "gemv"),                              # K < the default tile's 2048: a clamped K step
    (1, 192, 37, 64, None, "gemv_expand"),                       # the plain GEMV the sweep times against it
    (1, 256, 19, 16, {"BLOCK_K": 64, "SPLIT": 3}, "gemv_expand"),  # split-K, 4 groups a K step
    (1, 520, 21, 8, {"BLOCK_K": 64}, "gemv_expand"),             # groups of 8 (K % 16 != 0), ragged last step
    (1, 512, 21, 128, {"BLOCK_K": 64, "SPLIT": 2}, "gemv_expand"),  # a group over two K steps
    (1, 100, 7, 4, None, "mma"),                                 # one row the GEMV does not take (groups of 4)
    (3, 512, 21, 128, {"BLOCK_K": 64}, "mma"),                   # a group over two K steps
    (6, 96, 13, 32, {"BLOCK_K": 32, "BLOCK_N": 16}, "mma"),      # K % BLOCK_K != 0 (split not on a step)
    (16, 320, 9, 64, {"BLOCK_K": 128, "SPLIT": 2}, "mma"),       # 16 rows, ragged last K step
    (2, 1024, 5, 256, {"BLOCK_K": 64}, "mma"),
    (5, 136, 11, 8, {"BLOCK_K": 32, "SPLIT": 2}, "mma"),         # 4 groups a K step, K % 4 == 2 bytes
    # 16-bit x, a group of >= 64 a K step: W_eff one code plane at a time (plane_signs16, decode_triton.planes_ok)
    (16, 192, 37, 64, {"BLOCK_K": 64, "SPLIT": 2}, "mma"),       # split-K not on a step boundary of 3 steps
    (7, 640, 19, 128, {"BLOCK_K": 64, "BLOCK_N": 32}, "mma"),    # a group over two K steps
    (4, 64, 3, 64, {"BLOCK_K": 64}, "mma"),                      # one K step, fewer rows than the tile
]


@interp
@pytest.mark.parametrize("M,K,N,gs,config,path", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_match_reference(M, K, N, gs, config, path, dtype):
    T_packed, S = frozen_state(N, K, gs, seed=M * 1000 + K + N)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(K)).to(dtype)
    y = decode_triton.decode_forward(x, T_packed, S, K, gs, config=config, path=path)
    assert y.dtype == dtype and y.shape == (M, N)
    ref = decode_forward_torch(x.float(), T_packed, S, K, gs)
    assert all(int(b.abs().sum()) == 0 for b in COUNTERS.get(x.device, []))   # left at 0
    close(y, ref, *((3e-6, 2e-6) if dtype == torch.float32 else (8e-3, 8e-3)))


@interp
@pytest.mark.parametrize("M", [2, 16])
def test_plane_path_in_fp16_with_strided_x(M):
    """The plane-by-plane tensor-core path (``planes_ok``) reads x at columns ``4q + j``: with x strided along K
    and in fp16 it still matches the reference."""
    assert decode_triton.planes_ok(torch.float16, 64, 64) and not decode_triton.planes_ok(torch.float32, 64, 64)
    T_packed, S = frozen_state(29, 256, 64, seed=M)
    base = torch.randn(M, 512, generator=torch.Generator().manual_seed(M)).to(torch.float16)
    x = base[:, ::2]
    y = decode_triton.decode_forward(x, T_packed, S, 256, 64, config={"BLOCK_K": 64, "SPLIT": 2}, path="mma")
    close(y, decode_forward_torch(x.float(), T_packed, S, 256, 64), 4e-3, 4e-3)


@interp
def test_strided_x_and_fp16():
    T_packed, S = frozen_state(11, 128, 32, seed=3)
    base = torch.randn(4, 256, generator=torch.Generator().manual_seed(1)).to(torch.float16)
    x = base[:, ::2]                                              # stride 2 along K
    y = decode_triton.decode_forward(x, T_packed, S, 128, 32)
    close(y, decode_forward_torch(x.float(), T_packed, S, 128, 32), 4e-3, 4e-3)


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_expand_is_bit_equal_to_reference(dtype):
    T_packed, S = frozen_state(23, 384, 128, seed=5)
    W = decode_triton.expand_scaled(T_packed, S, 384, 128, dtype)
    assert torch.equal(W, expand_weight(T_packed, S, 384, 128).to(dtype))


@interp
def test_dispatch_and_errors():
    T_packed, S = frozen_state(8, 64, 16, seed=7)
    x17 = torch.randn(17, 64)
    # 17 rows: the expand path, exactly x @ W_eff.T
    torch.testing.assert_close(decode_triton.decode_forward(x17, T_packed, S, 64, 16),
                               x17 @ expand_weight(T_packed, S, 64, 16).t())
    with pytest.raises(ValueError, match="path='gemv' needs"):
        decode_triton.decode_forward(x17[:2], T_packed, S, 64, 16, path="gemv")
    with pytest.raises(ValueError, match="path='mma' needs"):
        decode_triton.decode_forward(x17, T_packed, S, 64, 16, path="mma")
    T4, S4 = frozen_state(8, 64, 4, seed=7)                       # groups of 4: no GEMV, the tensor-core kernel
    assert not decode_triton.gemv_ok(1, T4, 64, 4)
    torch.testing.assert_close(decode_triton.decode_forward(x17[:1], T4, S4, 64, 4),
                               decode_forward_torch(x17[:1], T4, S4, 64, 4), rtol=3e-6, atol=3e-6)
    with pytest.raises(ValueError, match="S must be contiguous float32"):
        decode_triton.decode_forward(x17, T_packed, S.double(), 64, 16)
    with pytest.raises(ValueError, match="S must be contiguous float32"):
        decode_triton.decode_forward(x17, T_packed, S[:, :2], 64, 16)
    with pytest.raises(ValueError, match="T_packed must be contiguous uint8"):
        decode_triton.decode_forward(x17, T_packed[:, :8], S, 64, 16)
    with pytest.raises(ValueError, match="unknown decode config keys"):
        decode_triton.decode_forward(x17[:1], T_packed, S, 64, 16, config={"BLOCK_Q": 4})
    with pytest.raises(ValueError, match="path must be"):
        decode_triton.decode_forward(x17, T_packed, S, 64, 16, path="fast")


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 4, 16])
@pytest.mark.parametrize("K,N", [(4096, 4096), (3072, 12288), (12288, 3072)])
def test_gpu_matches_reference_and_is_deterministic(M, K, N):
    T_packed, S = frozen_state(N, K, 64, seed=K + N, device="cuda")
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    y1 = decode_triton.decode_forward(x, T_packed, S, K, 64)
    y2 = decode_triton.decode_forward(x, T_packed, S, K, 64)
    assert torch.equal(y1, y2)
    close(y1, decode_forward_torch(x.float(), T_packed, S, K, 64), 8e-3, 8e-3)


@interp
@pytest.mark.parametrize("M,K,N,gs,config", [
    (1, 256, 19, 64, {"R": 1, "num_warps": 1}),                   # one row, features past N in the last block
    (5, 1024, 21, 128, {"R": 2, "num_warps": 1, "PROGRAMS_PER_SM": 8}),   # split-K in whole chunks
    (11, 512, 9, 256, {"R": 1, "num_warps": 2}),                   # 9-16 rows: the second B fragment
    (3, 1280, 37, 64, {"R": 2, "num_warps": 2, "WARP_SPLIT": True}),  # warps share features, split K (5 chunks)
    (1, 1024, 19, 128, {"R": 1, "num_warps": 4, "WARP_SPLIT": True, "PROGRAMS_PER_SM": 8}),  # and across programs
    (1, 768, 21, 64, {"R": 2, "num_warps": 2, "GROUP_COLUMNS": True, "PROGRAMS_PER_SM": 8}),  # a lane's 64 columns
    (4, 512, 17, 64, {"L2_PREFETCH": 256}),                          # 256-byte L2 fetches (a load hint)
    (1, 1280, 23, 64, {"RING": 3, "GROUP_COLUMNS": True}),           # a shared-memory ring (the PTX form only)
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tc_path_matches_reference(M, K, N, gs, config, dtype):
    """``path="tc"`` (``decode_tc``; its PTX is checked lane by lane in ``test_decode_tc.py``): the interpreter
    form of the kernel -- the thread-to-output mapping, the clamped rows, the K split -- matches the reference."""
    T_packed, S = frozen_state(N, K, gs, seed=M + K)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(M)).to(dtype)
    y = decode_triton.decode_forward(x, T_packed, S, K, gs, config=config, path="tc")
    assert y.dtype == dtype and y.shape == (M, N)
    assert all(int(b.abs().sum()) == 0 for b in COUNTERS.get(x.device, []))
    close(y, decode_forward_torch(x.float(), T_packed, S, K, gs), 8e-3, 8e-3)


@interp
@pytest.mark.parametrize("M,K,group_columns", [(1, 256, True), (1, 3072, True), (1, 3328, False), (2, 256, False)])
def test_tc_tile_by_rows_and_k(monkeypatch, M, K, group_columns):
    """One row of at most ``TC_TILE_SHORT_K[0]`` columns takes the group-columns tile; longer rows and more rows
    ``TC_TILES``."""
    from arbitor.ternary.ops import decode_tc
    seen = []
    real = decode_tc.tc_gemv_asm
    monkeypatch.setattr(decode_tc, "tc_gemv_asm", lambda *a: seen.append(a) or real(*a))
    T_packed, S = frozen_state(5, K, 64, seed=K)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(K)).bfloat16()
    close(decode_triton.decode_forward(x, T_packed, S, K, 64, path="tc"), decode_forward_torch(x.float(), T_packed,
                                                                                               S, K, 64), 8e-3, 8e-3)
    assert seen and seen[0][6] is group_columns         # tc_gemv_asm(..., group_columns, l2_prefetch)


@interp
@pytest.mark.parametrize("M,K,N,gs,dtype,config", [
    (1, 512, 48, 64, torch.bfloat16, None), (1, 768, 32, 128, torch.float16, {"num_warps": 2, "WARP_SPLIT": False}),
    (4, 512, 48, 256, torch.bfloat16, None), (16, 256, 16, 64, torch.bfloat16, {"PROGRAMS_PER_SM": 8}),
    (1, 1024, 64, 64, torch.bfloat16, {"R": 2, "RING": 2})])
def test_tc_layout_reads_the_same_weights(M, K, N, gs, dtype, config):
    """A layer in the ``tc`` layout (``format.tc_tiles``, 5-D ``T_packed``): ``decode_tc``'s ``TILED`` form gives the
    row layout's bits under the same launch; the paths that read rows (fp32 x, more than 16 rows, a forced path) get the
    rows back and the row layout's bits; the reference takes either."""
    from arbitor.ternary.format import tc_tiles
    T_packed, S = frozen_state(N, K, gs, seed=N + K)
    T_tiles, S_tiles = tc_tiles(T_packed, S, K, gs)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(M)).to(dtype)
    cfg = dict(config or {"num_warps": 4, "PROGRAMS_PER_SM": 2, "WARP_SPLIT": True})
    y = decode_triton.decode_forward(x, T_tiles, S_tiles, K, gs, config=cfg)
    assert torch.equal(y, decode_triton.decode_forward(x, T_packed, S, K, gs, config=cfg, path="tc"))
    close(decode_triton.decode_forward(x, T_tiles, S_tiles, K, gs, relu_square=True),
          decode_forward_torch(x.float(), T_packed, S, K, gs).relu().square(), 3e-2, 3e-2)
    assert torch.equal(decode_forward_torch(x, T_tiles, S_tiles, K, gs), decode_forward_torch(x, T_packed, S, K, gs))
    for xs, path in ((x.float(), "auto"), (torch.randn(20, K).to(dtype), "auto"), (x, "mma")):
        assert torch.equal(decode_triton.decode_forward(xs, T_tiles, S_tiles, K, gs, path=path),
                           decode_triton.decode_forward(xs, T_packed, S, K, gs, path=path))
    with pytest.raises(ValueError, match="tc-layout S must be"):
        decode_triton.decode_forward(x, T_tiles, S, K, gs)
    with pytest.raises(ValueError, match="tc-layout T_packed must be"):
        decode_triton.decode_forward(x, T_tiles[..., :8].contiguous(), S_tiles, K, gs)


@interp
def test_tc_layout_default_tiles(monkeypatch):
    """The ``tc`` layout's launches: one row into one to two waves of 16-feature tiles takes ``TC_TILED_ONE_WAVE``
    (4 warps up to 4096 columns, 8 above), other calls ``TC_TILES_TILED``; a config naming the other layout is
    refused."""
    from arbitor.ternary.ops.decode_tc import TC_TILED_ONE_WAVE, TC_TILES_TILED, tc_tile
    assert tc_tile(1, 3072, None, 3072, 132, tiled=True) == TC_TILED_ONE_WAVE[1]
    assert tc_tile(1, 12288, None, 3072, 132, tiled=True) == TC_TILED_ONE_WAVE[2]
    assert tc_tile(1, 3072, None, 12288, 132, tiled=True) == TC_TILES_TILED[1]
    assert tc_tile(9, 3072, None, 3072, 132, tiled=True) == TC_TILES_TILED[16]
    assert all(t.TILED and not t.GROUP_COLUMNS for t in (*TC_TILES_TILED.values(), *TC_TILED_ONE_WAVE[1:]))
    # the next kernel launches right after the wait at one row only (where it was measured)
    assert [t.EARLY_TRIGGER for t in (TC_TILES_TILED[1], *TC_TILED_ONE_WAVE[1:])] == [True] * 3
    assert not TC_TILES_TILED[8].EARLY_TRIGGER and not TC_TILES_TILED[16].EARLY_TRIGGER
    with pytest.raises(ValueError, match="not this layer's layout"):
        tc_tile(1, 3072, {"TILED": False}, 3072, 132, tiled=True)
    with pytest.raises(ValueError, match="GROUP_COLUMNS reads the row layout"):
        tc_tile(1, 3072, {"GROUP_COLUMNS": True}, 3072, 132, tiled=True)


def test_tc_default_tiles_are_valid_launches():
    """``tc_tile`` returns the default tiles unchecked when there is no config: each passes its own checks."""
    from arbitor.ternary.ops.decode_tc import TC_TILE_ONE_WAVE, TC_TILE_SHORT_K, TC_TILES, tc_tile
    for M, K, N in [(1, 4096, 0), (4, 4096, 0), (16, 4096, 0), (1, TC_TILE_SHORT_K[0], 0), (1, 3072, 3072)]:
        tile = tc_tile(M, K, out_features=N, sms=132)
        assert tile in (*TC_TILES.values(), TC_TILE_SHORT_K[1], TC_TILE_ONE_WAVE[1])
        assert tc_tile(M, K, tile._asdict(), N, 132) == tile


def test_tc_ring_config():
    """``RING`` is refused, in one line, past 8 slots or 40 KB of shared memory."""
    from arbitor.ternary.ops.decode_tc import tc_tile
    t = tc_tile(1, 4096, {"RING": 4})
    assert t.RING == 4 and t.X_AHEAD
    for bad in ({"RING": 1}, {"RING": 9}, {"RING": 4, "num_warps": 8}, {"RING": 6, "num_warps": 4}):
        with pytest.raises(ValueError, match="RING must be 0 or 2-8 slots"):
            tc_tile(1, 4096, bad)
    # the one-wave default's ring is dropped where a config's R / warps leave it no room, kept where they do
    assert tc_tile(1, 4096, {"R": 4, "num_warps": 4}, 4096, 132).RING == 0
    assert tc_tile(1, 4096, {"num_warps": 8}, 4096, 132).RING == 2


@pytest.mark.parametrize("M,K,N,which", [
    (1, 3072, 3072, "one_wave"), (1, 4096, 4096, "one_wave"), (1, 4096, 2097, "one_wave"),
    (1, 4096, 4208, "one_wave"), (1, 4096, 4209, "tokens"), (1, 4096, 2096, "tokens"), (1, 3072, 2096, "short_k"),
    (1, 3072, 12288, "short_k"), (1, 4352, 3072, "tokens"), (1, 6144, 3072, "tokens"), (4, 3072, 3072, "tokens"),
    (16, 4096, 4096, "tokens")])
def test_tc_tile_one_wave_by_shape(M, K, N, which):
    """One row of at most 4096 columns into one to two 16-feature tiles a multiprocessor (132: N = 2097-4208) takes
    ``TC_TILE_ONE_WAVE``: no K split."""
    from arbitor.ternary.ops.decode_tc import TC_TILE_ONE_WAVE, TC_TILE_SHORT_K, TC_TILES, tc_tile, tc_tokens
    want = {"one_wave": TC_TILE_ONE_WAVE[1], "short_k": TC_TILE_SHORT_K[1], "tokens": TC_TILES[tc_tokens(M)]}[which]
    assert tc_tile(M, K, None, N, 132) == want


@interp
def test_tc_one_wave_launch_has_no_k_split(monkeypatch):
    """Through ``decode_forward``: the launcher passes the layer's features and the device's multiprocessors (4
    under the interpreter: 80 features are 5 tiles), the one-wave tile launches one program a tile, and the sums
    are the reference's."""
    from arbitor.ternary.ops import decode_tc
    seen = []
    real = decode_tc.decode_tc_kernel
    monkeypatch.setattr(decode_tc, "tc_tile", lambda *a, real_tile=decode_tc.tc_tile: seen.append(
        real_tile(*a)) or seen[-1])

    class Spy:
        def __getitem__(self, grid):
            seen.append(grid)
            return real[grid]
    monkeypatch.setattr(decode_tc, "decode_tc_kernel", Spy())
    T_packed, S = frozen_state(80, 1024, 64, seed=3)
    x = torch.randn(1, 1024, generator=torch.Generator().manual_seed(3)).bfloat16()
    close(decode_triton.decode_forward(x, T_packed, S, 1024, 64, path="tc"),
          decode_forward_torch(x.float(), T_packed, S, 1024, 64), 8e-3, 8e-3)
    assert seen == [decode_tc.TC_TILE_ONE_WAVE[1], (5, 1)]


@interp
def test_tc_path_refuses_what_it_cannot_take():
    T_packed, S = frozen_state(8, 256, 64, seed=1)
    for x, gs, why in [(torch.randn(1, 256), 64, "float32"), (torch.randn(17, 256).bfloat16(), 64, "17 rows"),
                       (torch.randn(2, 512).bfloat16()[:, ::2], 64, "strided")]:
        with pytest.raises(ValueError, match="path='tc' needs"):
            decode_triton.decode_forward(x, T_packed, S, 256, gs, path="tc")
    T2, S2 = frozen_state(8, 192, 64, seed=1)                     # K % 256 != 0
    with pytest.raises(ValueError, match="path='tc' needs"):
        decode_triton.decode_forward(torch.randn(1, 192).bfloat16(), T2, S2, 192, 64, path="tc")
    with pytest.raises(ValueError, match="unknown tc decode config keys"):
        decode_triton.decode_forward(torch.randn(1, 256).bfloat16(), T_packed, S, 256, 64, path="tc",
                                     config={"BLOCK_N": 4})
    with pytest.raises(ValueError, match="L2_PREFETCH must be"):
        decode_triton.decode_forward(torch.randn(1, 256).bfloat16(), T_packed, S, 256, 64, path="tc",
                                     config={"L2_PREFETCH": 100})
    with pytest.raises(ValueError, match="GROUP_COLUMNS needs one row"):
        decode_triton.decode_forward(torch.randn(2, 256).bfloat16(), T_packed, S, 256, 64, path="tc",
                                     config={"GROUP_COLUMNS": True})


def _relu_square_equal(y_rs, y, interpreted=False):
    """``y_rs`` is ``F.relu(y).square()`` bit for bit (NaN where ``y`` has NaN). ``interpreted``: a Triton kernel
    run by the CPU interpreter, which rounds float32 to bfloat16 towards zero (ignoring the rounding mode the
    GPU applies): there bf16 values may be one ulp below and the zeros and NaNs are still exact."""
    ref = torch.nn.functional.relu(y).square()
    assert y_rs.dtype == y.dtype and (y < 0).any()
    if interpreted and y.dtype == torch.bfloat16:
        assert torch.equal(y_rs == 0, ref == 0) and torch.equal(y_rs.isnan(), ref.isnan())
        torch.testing.assert_close(y_rs, ref, rtol=2 ** -7, atol=0, equal_nan=True)
    else:
        torch.testing.assert_close(y_rs, ref, rtol=0, atol=0, equal_nan=True)


@interp
@pytest.mark.parametrize("M,K,N,gs,config,path", [
    (1, 768, 21, 64, {"GROUP_COLUMNS": True, "PROGRAMS_PER_SM": 1}, "tc"),   # one row, no K split
    (3, 1024, 19, 128, {"R": 1, "num_warps": 1, "PROGRAMS_PER_SM": 8}, "tc"),  # K split: the last program stores
    (1, 192, 37, 64, None, "gemv"),
    (3, 96, 13, 32, {"BLOCK_K": 32, "BLOCK_N": 16}, "mma"),
    (20, 128, 9, 32, None, "expand"),
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_relu_square_is_the_activation_of_the_plain_output(M, K, N, gs, config, path, dtype):
    """``relu_square=True`` (the MLP's activation in a frozen up projection): every path returns exactly
    ``F.relu(y).square()`` of its own plain output -- in ``decode_tc``'s store, after the other kernels -- NaN
    rows included; and so does the reference. (``decode_tc`` in bf16 to the interpreter's rounding here; bit for
    bit on the GPU: ``test_gpu_relu_square_is_the_activation_of_the_plain_output``.)"""
    T_packed, S = frozen_state(N, K, gs, seed=K + N)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(M)).to(dtype)
    if M > 1:
        x[1, 5] = float("nan")
    kw = dict(config=config, path=path)
    _relu_square_equal(decode_triton.decode_forward(x, T_packed, S, K, gs, True, **kw),
                       decode_triton.decode_forward(x, T_packed, S, K, gs, **kw), interpreted=path == "tc")
    _relu_square_equal(decode_forward_torch(x, T_packed, S, K, gs, relu_square=True),
                       decode_forward_torch(x, T_packed, S, K, gs))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 4, 16])
@pytest.mark.parametrize("K,N", [(3072, 12288), (12288, 3072)])
def test_gpu_relu_square_is_the_activation_of_the_plain_output(M, K, N):
    """The same on the GPU at the ``3b`` MLP's shapes (one row of 12288 x 3072 splits K across programs)."""
    T_packed, S = frozen_state(N, K, 64, seed=K + M, device="cuda")
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    _relu_square_equal(decode_triton.decode_forward(x, T_packed, S, K, 64, True),
                       decode_triton.decode_forward(x, T_packed, S, K, 64))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 4, 9, 16])
@pytest.mark.parametrize("K,N", [(4096, 4096), (3072, 12288), (12288, 3072), (256, 40)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_tc_path_matches_reference_and_is_deterministic(M, K, N, dtype):
    """The tensor-core decode kernel on the GPU (its PTX) at model shapes and one ragged one: equal to the
    reference to bf16/fp16 output rounding, and bit-equal from call to call."""
    T_packed, S = frozen_state(N, K, 64, seed=K + N + M, device="cuda")
    x = torch.randn(M, K, device="cuda", dtype=dtype)
    y1 = decode_triton.decode_forward(x, T_packed, S, K, 64, path="tc")
    y2 = decode_triton.decode_forward(x, T_packed, S, K, 64, path="tc")
    assert torch.equal(y1, y2)
    close(y1, decode_forward_torch(x.float(), T_packed, S, K, 64), 8e-3, 8e-3)
    for cfg in ({"R": 1, "num_warps": 8, "PROGRAMS_PER_SM": 8}, {"R": 4, "num_warps": 4, "PROGRAMS_PER_SM": 1},
                {"R": 1, "num_warps": 4, "WARP_SPLIT": False}, {"R": 1, "num_warps": 4, "WARP_SPLIT": True},
                {"R": 2, "num_warps": 8, "WARP_SPLIT": True, "PROGRAMS_PER_SM": 4}, {"L2_PREFETCH": 128},
                {"L2_PREFETCH": 256, "WARP_SPLIT": False}, {"RING": 3}, {"RING": 6, "num_warps": 2},
                {"RING": 2, "num_warps": 8, "PROGRAMS_PER_SM": 1}, {"RING": 4, "WARP_SPLIT": False}):
        close(decode_triton.decode_forward(x, T_packed, S, K, 64, path="tc", config=cfg), y1, 8e-3, 8e-3)
    if M == 1:      # the lanes' 64 contiguous columns, with and without warp split, and through the ring
        for cfg in ({"GROUP_COLUMNS": True}, {"GROUP_COLUMNS": True, "WARP_SPLIT": False, "R": 2},
                    {"GROUP_COLUMNS": True, "RING": 4}, {"GROUP_COLUMNS": True, "RING": 8, "num_warps": 2}):
            y3 = decode_triton.decode_forward(x, T_packed, S, K, 64, path="tc", config=cfg)
            close(y3, decode_forward_torch(x.float(), T_packed, S, K, 64), 8e-3, 8e-3)
            assert torch.equal(y3, decode_triton.decode_forward(x, T_packed, S, K, 64, path="tc", config=cfg))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 4, 16])
@pytest.mark.parametrize("K,N", [(4096, 4096), (3072, 12288), (12288, 3072), (6144, 3072), (3072, 3072)])
def test_gpu_tc_layout_reads_the_row_layouts_weights(M, K, N):
    """The ``tc`` layout on the GPU (its PTX: 16-byte loads of the lanes' units) at model shapes: under the same
    launch exactly the row layout's bits; its default launches (``TC_TILED_ONE_WAVE`` / ``TC_TILES_TILED``) equal to
    the reference to bf16 rounding, bit-equal from call to call, as dependents and plainly, with the squared ReLU."""
    from arbitor.ternary.format import tc_tiles
    T_packed, S = frozen_state(N, K, 64, seed=K + N + M, device="cuda")
    T_tiles, S_tiles = tc_tiles(T_packed, S, K, 64)
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    for cfg in ({"R": 1, "num_warps": 4, "WARP_SPLIT": True, "PROGRAMS_PER_SM": 2, "GROUP_COLUMNS": False,
                 "RING": 0}, {"R": 2, "num_warps": 2, "WARP_SPLIT": False, "PROGRAMS_PER_SM": 4, "AHEAD": 2,
                              "X_AHEAD": False, "GROUP_COLUMNS": False, "RING": 0, "L2_PREFETCH": 256},
                {"R": 1, "num_warps": 8, "PROGRAMS_PER_SM": 1, "RING": 2, "GROUP_COLUMNS": False}):
        assert torch.equal(decode_triton.decode_forward(x, T_tiles, S_tiles, K, 64, config=cfg),
                           decode_triton.decode_forward(x, T_packed, S, K, 64, config=cfg, path="tc"))
    y1 = decode_triton.decode_forward(x, T_tiles, S_tiles, K, 64)
    assert torch.equal(y1, decode_triton.decode_forward(x, T_tiles, S_tiles, K, 64))
    assert torch.equal(y1, decode_triton.decode_forward(x, T_tiles, S_tiles, K, 64, config={"PDL": False}))
    close(y1, decode_forward_torch(x.float(), T_packed, S, K, 64), 8e-3, 8e-3)
    _relu_square_equal(decode_triton.decode_forward(x, T_tiles, S_tiles, K, 64, True), y1)


@interp
@pytest.mark.parametrize("M,split,path", [(1, 11, "gemv"), (1, 3, "gemv"), (1, 9, "gemv_expand"), (5, 6, "mma")])
def test_split_partials_are_summed_in_split_order(monkeypatch, M, split, path):
    """The last program of a tile adds the splits' fp32 partials one by one in split order, however many it reads
    at once (``split_epilogue``'s ``UNROLL``: 8 for the GEMV, 4 for the tensor-core kernel; 11 and 6 splits are
    not multiples of it): the output equals that sequential sum of the workspace bit for bit."""
    seen = {}
    real = decode_triton.split_buffers

    def spy(out, s, tiles):
        seen["ws"], seen["cnt"] = real(out, s, tiles)
        return seen["ws"], seen["cnt"]
    monkeypatch.setattr(decode_triton, "split_buffers", spy)
    K, N, gs = 64 * split, 21, 64
    T_packed, S = frozen_state(N, K, gs, seed=split)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(split))
    y = decode_triton.decode_forward(x, T_packed, S, K, gs, config={"BLOCK_K": 64, "SPLIT": split}, path=path)
    ws = seen["ws"]
    assert ws.shape[0] == split
    tot = torch.zeros_like(ws[0])
    for part in ws:
        tot = tot + part
    assert torch.equal(y, tot.reshape(y.shape))
    close(y, decode_forward_torch(x, T_packed, S, K, gs), 3e-6, 2e-6)
