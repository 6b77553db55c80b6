"""The linear and vote ops: Triton kernels (``linear_triton.py``, ``votes_triton.py``) against the torch
references (``linear.py``, ``votes.py``), on odd shapes.

CPU: runs the kernels in Triton's interpreter. ``TRITON_INTERPRET`` is read by
``triton.jit`` when a kernel is *decorated*, i.e. when ``arbitor.ternary.ops.triton_common``
is first imported, so this module sets it before importing anything from triton
when no CUDA device is present (on a GPU machine the compiled kernels are used and
the CPU-interpreter tests are skipped).

GPU tests (``@pytest.mark.gpu``) run only with CUDA: realistic shapes in
fp32/bf16/fp16 and one full training step of a small stack of layers giving the
same ``corr_accum`` on the torch and triton backends.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

triton = pytest.importorskip("triton")

from arbitor.ternary.format import counter_packed_shape, pack_ternary, unpack_ternary  # noqa: E402
from arbitor.ternary.layer import TernaryScaleTensor  # noqa: E402
from arbitor.ternary.ops import linear_triton, votes_triton  # noqa: E402
from arbitor.ternary.ops.linear import expand_weight, linear_grad_x_torch  # noqa: E402
from arbitor.ternary.ops.triton_common import INTERPRETED  # noqa: E402
from arbitor.ternary.ops.votes import bigint_ballot_torch_  # noqa: E402
from arbitor.ternary.scale import bigint_scale  # noqa: E402
from arbitor.ternary.step import ternary_step  # noqa: E402

CPU_DEV = torch.device("cpu")
interp = pytest.mark.skipif(not INTERPRETED,
                            reason="CPU interpreter tests need TRITON_INTERPRET=1 before triton_common is imported")
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED, reason="needs CUDA")


def P(n: int, device=CPU_DEV) -> torch.Tensor:
    """A device counter (``pending``, ``nonfinite``) holding ``n``."""
    return torch.tensor(n, dtype=torch.int64, device=device)


def ballot(impl, gy, x, T_packed, corr, K, gs):
    """One bigint ballot into ``corr`` (in place) by the torch reference or the Triton path; returns the
    ``(pending, nonfinite)`` counters it left."""
    pending, nonfinite = P(0, x.device), P(0, x.device)
    fn = bigint_ballot_torch_ if impl == "torch" else votes_triton.bigint_ballot_triton_
    fn(gy, x, T_packed, corr, pending, nonfinite, K, gs)
    return int(pending), int(nonfinite)


def make_state(N: int, K: int, gs: int, seed: int, device=CPU_DEV, corr_range: int = 60, steps: int = 7):
    """Random ternary state: T_packed, E, corr_accum (|corr| <= steps*gs), step_counter."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(-1, 2, (N, K), generator=g)
    T_packed = pack_ternary(t).to(device)
    E = torch.randint(-7, -2, (N, K // gs), generator=g, dtype=torch.int64).to(torch.int8).to(device)
    corr = torch.randint(-min(corr_range, steps * gs), min(corr_range, steps * gs) + 1, (N, K // gs), generator=g,
                         dtype=torch.int64).to(device)
    step = torch.tensor(steps, dtype=torch.int64, device=device)
    return t.to(device), T_packed, E, corr, step


def int_tensor(shape, seed: int, lo: int = -3, hi: int = 3, device=CPU_DEV, dtype=torch.float32):
    """Integer-valued floats: every product and partial sum is exact in fp32 (and bf16 inputs)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, shape, generator=g).to(dtype).to(device)


def ref_forward(x, T_packed, S, K, gs):
    """The reference product with a given scale ``S``: ``x @ (T * S).T`` in float32."""
    return (x.float() @ expand_weight(T_packed, S, K, gs).t()).to(x.dtype)


def assert_product_close(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out`` (float32) equals ``a @ b`` (``[M, n] @ [n, N]``) up to the rounding of an ``n``-term float32 sum
    in *any* order: ``|out - exact| <= n * eps * (|a| @ |b|)`` elementwise (Higham's gamma_n bound, with ``exact``
    in float64). A fixed ``atol`` is the wrong test for the kernels: split-K sums in another order than torch's
    CPU matmul, whose own order depends on the machine's BLAS (a 1.6e-6 gap with atol 1e-6 failed CI on a new
    runner while the kernel was *closer* to the float64 product than torch was). A dropped term moves an output
    by ``|x| * S`` >= 4.9e-4 in these cases, above the bound (1.3e-4 .. 7.6e-4), and usually far above."""
    a64, b64 = a.double(), b.double()
    bound = a.shape[-1] * torch.finfo(torch.float32).eps * (a64.abs() @ b64.abs())
    excess = (out.double() - a64 @ b64).abs() - bound
    assert excess.max().item() <= 0, f"off the float64 product by {excess.max().item():.3g} beyond the bound"


def ref_backward(gy, x, T_packed, E, corr, step, pending, K, gs, strength=4.0):
    """``(S, (grad_x, votes))`` from the torch references."""
    pending = P(pending, x.device)
    S = bigint_scale(E, corr, step + pending, gs, strength)
    gx = linear_grad_x_torch(gy, T_packed, E, corr, step, pending, K, gs, strength)
    votes = torch.zeros_like(corr)
    ballot("torch", gy, x, T_packed, votes, K, gs)
    return S, (gx, votes)


# (M, K, N, group_size, config): odd M/N, K not a multiple of BLOCK_K, groups inside a tile
# (gs < BLOCK_K), exactly one tile (gs == BLOCK_K) and spanning several tiles (gs > BLOCK_K).
CASES = [
    (37, 96, 45, 16, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64)),     # 6 groups, 1.5 K tiles, 4 groups per tile
    (19, 80, 33, 4, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32)),      # gs=4: 8 groups per tile, K tail
    (23, 192, 17, 64, dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16)),    # gs=64 spans 4 K tiles
    (5, 128, 50, 32, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32)),     # M < BLOCK_M, gs == BLOCK_K
    (50, 40, 7, 8, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16)),       # N < BLOCK_N, gs=8
]


@interp
@pytest.mark.parametrize("M,K,N,gs,cfg", CASES)
def test_kernels_match_reference(M, K, N, gs, cfg):
    t, T_packed, E, corr, step = make_state(N, K, gs, seed=M * 1000 + K)
    x = int_tensor((M, K), 1)
    gy = int_tensor((M, N), 2)
    pending = 2
    S, (gx_ref, votes_ref) = ref_backward(gy, x, T_packed, E, corr, step, pending, K, gs)
    W = expand_weight(T_packed, S, K, gs)  # [N, K] float32

    for path in ("fused", "expand"):
        kw = dict(config=cfg) if path == "fused" else dict(path="expand")
        y = linear_triton.ternary_forward(x, T_packed, E, corr, step, P(pending), K, gs, 4.0, **kw)
        assert_product_close(y, x, W.t())
        gx = linear_triton.ternary_grad_x(gy, T_packed, E, corr, step, P(pending), K, gs, 4.0, **kw)
        assert_product_close(gx, gy, W)
    assert_product_close(gx_ref, gy, W)  # the torch reference itself

    c = corr.clone()
    assert ballot("triton", gy, x, T_packed, c, K, gs) == (1, 0)
    assert torch.equal(c - corr, votes_ref), "votes differ from the reference"
    # independent dense check of the sign convention
    gw = gy.t() @ x
    dense = -(torch.sign(gw) * t).view(N, K // gs, gs).sum(-1).to(torch.int64)
    assert torch.equal(votes_ref, dense)
    assert (votes_ref != 0).any()


@interp
@pytest.mark.parametrize("M,cfg", [(1, None), (5, None), (13, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, SPLIT=4)),
                                   (3, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, SPLIT=2))])
def test_decode_split_path_matches_reference(M, cfg):
    """M <= 16: split-K (forward) / split-N (grad-x) partials summed by the kernels' split_epilogue."""
    K, N, gs = 160, 72, 32
    _, T_packed, E, corr, step = make_state(N, K, gs, seed=M)
    x, gy = int_tensor((M, K), 1), int_tensor((M, N), 2)
    S, (gx_ref, _) = ref_backward(gy, x, T_packed, E, corr, step, 0, K, gs)
    if cfg is None:  # the heuristic must actually split here (4 "SMs" on CPU)
        assert linear_triton._decode_config(K, lambda c: 3, "fwd", torch.float32, CPU_DEV)["SPLIT"] > 1
    W = expand_weight(T_packed, S, K, gs)  # [N, K] float32
    y = linear_triton.ternary_forward(x, T_packed, E, corr, step, P(0), K, gs, 4.0, config=cfg)
    assert_product_close(y, x, W.t())
    gx = linear_triton.ternary_grad_x(gy, T_packed, E, corr, step, P(0), K, gs, 4.0, config=cfg)
    assert_product_close(gx, gy, W)
    assert_product_close(gx_ref, gy, W)


@interp
@pytest.mark.parametrize("gs,bk", [(64, 64), (128, 32), (16, 64)])
def test_fp16_weight_tile_is_rounded_product(gs, bk):
    """16-bit inputs: the in-register W_eff equals float32(T * S) rounded once to the input dtype
    (bit construction when a tile lies in one group, float path otherwise); with integer x the
    fp32-accumulated product is exact, so y matches x @ W16.T bit for bit before the final rounding."""
    M, K, N = 20, 128, 40
    t, T_packed, E, corr, step = make_state(N, K, gs, seed=gs + bk)
    x = int_tensor((M, K), 3, dtype=torch.float16)
    S = bigint_scale(E, corr, step + 1, gs, 4.0)
    W16 = (t.float().view(N, -1, gs) * S[:, :, None]).view(N, K).half().float()
    y = linear_triton.ternary_forward(x, T_packed, E, corr, step, P(1), K, gs, 4.0,
                                      config=dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=bk))
    assert torch.equal(y, (x.float() @ W16.t()).half())
    gy = int_tensor((M, N), 4, dtype=torch.float16)
    gx = linear_triton.ternary_grad_x(gy, T_packed, E, corr, step, P(1), K, gs, 4.0,
                                      config=dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=bk))
    assert torch.equal(gx, (gy.float() @ W16).half())


@interp
@pytest.mark.parametrize("N,K,gs", [(37, 96, 16), (5, 40, 8), (19, 512, 256), (70, 36, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_expand_kernel_equals_effective_weight_bit_for_bit(N, K, gs, dtype):
    """The expand path's ``W_eff`` is the layer's ``effective_weight(dtype)``, bit for bit (the scale in float64,
    as ``bigint_scale``), at odd shapes, groups narrower and wider than a tile, extreme strengths and ballots."""
    layer = TernaryScaleTensor(K, N, group_size=gs, seed=N + K, strength=16.0)
    g = torch.Generator().manual_seed(K)
    layer.step_counter.fill_(2 ** 40 + 3)
    lim = (2 ** 40 + 4) * gs
    layer.corr_accum.copy_((torch.rand(N, K // gs, generator=g, dtype=torch.float64) * 2 - 1).mul(lim).to(torch.int64))
    layer.pending.fill_(1)
    W = linear_triton.expand_weight_triton(layer.T_packed, layer.E, layer.corr_accum, layer.step_counter,
                                           layer.pending, K, gs, layer.strength, dtype)
    assert W.dtype == dtype and torch.equal(W, layer.effective_weight(dtype))
    fresh = TernaryScaleTensor(K, N, group_size=gs, seed=1, strength=0.0)        # no ballots, strength 0
    W0 = linear_triton.expand_weight_triton(fresh.T_packed, fresh.E, fresh.corr_accum, fresh.step_counter,
                                            fresh.pending, K, gs, 0.0, dtype)
    assert torch.equal(W0, fresh.effective_weight(dtype))


@interp
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_exact_zero_sum_casts_no_vote(impl):
    """A grad_W entry that sums to exactly 0 has sign 0: its weight casts no vote."""
    M, K, N, gs = 4, 32, 16, 8
    t, T_packed, E, corr, step = make_state(N, K, gs, seed=3)
    x = torch.ones(M, K)
    gy = torch.tensor([[1.0], [-1.0], [2.0], [-2.0]]).expand(M, N).contiguous()  # columns sum to 0
    c = corr.clone()
    ballot(impl, gy, x, T_packed, c, K, gs)
    assert torch.equal(c, corr)
    gy[0, :5] += 1.0  # rows 0..4 now have grad_W = +1 everywhere -> vote = -sum(T)
    ballot(impl, gy, x, T_packed, c, K, gs)
    expect = torch.zeros_like(corr)
    expect[:5] = -t[:5].view(5, -1, gs).sum(-1)
    assert torch.equal(c - corr, expect)


@interp
@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("where", ["grad_y", "x"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_ballot_casts_nothing(impl, where, bad):
    M, K, N, gs = 9, 64, 24, 16
    _, T_packed, E, corr, step = make_state(N, K, gs, seed=4)
    x, gy = int_tensor((M, K), 1), int_tensor((M, N), 2)
    (gy if where == "grad_y" else x)[3, 5] = bad
    c = corr.clone()
    assert ballot(impl, gy, x, T_packed, c, K, gs) == (0, 1)
    assert torch.equal(c, corr)


@interp
def test_vote_kernel_over_row_chunks(monkeypatch):
    """grad_W formed in several row chunks (ARB_GRADW_CHUNK_ELEMS) gives the same votes as one pass."""
    M, K, N, gs = 11, 96, 23, 32
    _, T_packed, E, corr, step = make_state(N, K, gs, seed=6)
    x, gy = int_tensor((M, K), 3), int_tensor((M, N), 4)
    whole = corr.clone()
    ballot("triton", gy, x, T_packed, whole, K, gs)
    monkeypatch.setenv("ARB_GRADW_CHUNK_ELEMS", str(5 * K))                 # 5 rows per chunk
    chunked = corr.clone()
    ballot("triton", gy, x, T_packed, chunked, K, gs)
    assert torch.equal(whole, chunked) and not torch.equal(whole, corr)


@interp
def test_leading_dims_strides_and_dtype_roundtrip():
    """Non-contiguous 2-D views, fp16 inputs, and the module path with leading dims."""
    M, K, N, gs = 21, 64, 24, 16
    t, T_packed, E, corr, step = make_state(N, K, gs, seed=11)
    big = int_tensor((M, 2 * K), 5)
    x = big[:, ::2]  # stride (2K, 2)
    assert not x.is_contiguous()
    S = bigint_scale(E, corr, step, gs, 4.0)
    y = linear_triton.ternary_forward(x, T_packed, E, corr, step, P(0), K, gs, 4.0)
    assert_product_close(y, x, expand_weight(T_packed, S, K, gs).t())
    # fp16 here: Triton 3.6's interpreter computes bf16 tl.dot on the raw bits (wrong); bf16 is tested on the GPU
    xb = x.to(torch.float16)
    yb = linear_triton.ternary_forward(xb, T_packed, E, corr, step, P(0), K, gs, 4.0, path="fused")
    assert yb.dtype == torch.float16
    torch.testing.assert_close(yb.float(), ref_forward(xb, T_packed, S, K, gs).float(),
                               rtol=2e-2, atol=2e-2)

    torch.manual_seed(0)
    ref = TernaryScaleTensor(K, N, group_size=gs, seed=4, backend="torch")
    tri = TernaryScaleTensor(K, N, group_size=gs, seed=4, backend="triton")
    xin = int_tensor((2, 3, 5, K), 7).requires_grad_(True)
    xin2 = xin.detach().clone().requires_grad_(True)
    gout = int_tensor((2, 3, 5, N), 8)
    W = ref.effective_weight()  # [N, K]
    assert torch.equal(W, tri.effective_weight())
    y1, y2 = ref(xin), tri(xin2)
    for y in (y1, y2):
        assert y.shape == (2, 3, 5, N)
        assert_product_close(y.detach().reshape(-1, N), xin.detach().reshape(-1, K), W.t())
    y1.backward(gout)
    y2.backward(gout)
    for gx in (xin.grad, xin2.grad):
        assert_product_close(gx.reshape(-1, K), gout.reshape(-1, N), W)
    assert torch.equal(tri.corr_accum, ref.corr_accum) and (ref.corr_accum != 0).any()


@interp
def test_empty_batch():
    K, N, gs = 32, 16, 8
    _, T_packed, E, corr, step = make_state(N, K, gs, seed=1)
    y = linear_triton.ternary_forward(torch.empty(0, K), T_packed, E, corr, step, P(0), K, gs, 4.0)
    assert y.shape == (0, N)
    c = corr.clone()
    assert ballot("triton", torch.empty(0, N), torch.empty(0, K), T_packed, c, K, gs) == (1, 0)
    assert torch.equal(c, corr)                         # an empty batch: every grad_W entry 0, no vote


@interp
def test_in_kernel_scale_extremes():
    """The kernels' S against the float64 rule, at huge corr/ballot counts, E bounds and strength up to 20."""
    g = torch.Generator().manual_seed(0)
    N, G, gs = 64, 8, 4096
    for ballots, strength in [(0, 4.0), (1, 4.0), (3, 20.0), (2 ** 40 + 12345, 4.0), (2 ** 49, 20.0), (97, 3.7)]:
        E = torch.randint(-100, 101, (N, G), generator=g).to(torch.int8)
        lim = ballots * gs
        corr = (torch.rand(N, G, generator=g, dtype=torch.float64) * 2 - 1).mul(lim).to(torch.int64)
        corr[0, 0], corr[0, 1] = lim, -lim
        step = torch.tensor(max(ballots - 1, 0), dtype=torch.int64)
        pending = P(1 if ballots else 0)
        S = linear_triton.ternary_scale(E, corr, step, pending, gs, strength)
        S_ref = bigint_scale(E, corr, step + pending, gs, strength)
        rel = (S.double() / S_ref.double() - 1).abs().max().item()
        assert rel <= 1.5e-6, (ballots, strength, rel)


@interp
def test_layer_backward_on_both_backends_grad_x_before_votes():
    """A layer's backward computes grad_x with the pre-vote scale, then casts its ballot: the triton and torch
    backends give the same grad_x and the same integer votes."""
    M, K, N, gs = 17, 64, 20, 16
    x, gy = int_tensor((M, K), 3), int_tensor((M, N), 4)
    layers = {b: TernaryScaleTensor(K, N, group_size=gs, seed=21, backend=b) for b in ("torch", "triton")}
    grads = {}
    for b, layer in layers.items():
        layer.corr_accum.copy_(make_state(N, K, gs, seed=21)[3])
        layer.step_counter.fill_(7)
        xi = x.clone().requires_grad_(True)
        layer(xi).backward(gy)
        grads[b] = xi.grad
    torch.testing.assert_close(grads["triton"], grads["torch"], rtol=3e-6, atol=1e-6)
    assert torch.equal(layers["triton"].corr_accum, layers["torch"].corr_accum)
    assert layers["triton"].pending_ballots == layers["torch"].pending_ballots == 1


@interp
def test_bad_inputs_raise():
    K, N, gs = 32, 16, 8
    _, T_packed, E, corr, step = make_state(N, K, gs, seed=2)
    x = torch.randn(5, K)
    f = linear_triton.ternary_forward
    with pytest.raises(ValueError, match="in_features"):
        f(torch.randn(5, K + 4), T_packed, E, corr, step, P(0), K, gs, 4.0)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        f(x.double(), T_packed, E, corr, step, P(0), K, gs, 4.0)
    with pytest.raises(ValueError, match="power of two"):
        f(x, T_packed, E, corr, step, P(0), K, 12, 4.0)
    with pytest.raises(ValueError, match="multiple of group_size"):
        f(x, T_packed, E, corr, step, P(0), K, 64, 4.0)
    with pytest.raises(ValueError, match="bytes per row"):
        f(x, T_packed[:, :-1].contiguous(), E, corr, step, P(0), K, gs, 4.0)
    with pytest.raises(ValueError, match="contiguous"):
        f(x, torch.cat([T_packed, T_packed], 1)[:, ::2], E, corr, step, P(0), K, gs, 4.0)
    with pytest.raises(TypeError, match="int64"):
        f(x, T_packed, E, corr.to(torch.int32), step, P(0), K, gs, 4.0)
    with pytest.raises(ValueError, match="shape"):
        f(x, T_packed, E[:, :-1].contiguous(), corr, step, P(0), K, gs, 4.0)
    with pytest.raises(TypeError, match="uint8"):
        f(x, T_packed.to(torch.int8), E, corr, step, P(0), K, gs, 4.0)
    with pytest.raises(TypeError, match="step_counter"):
        f(x, T_packed, E, corr, step.int(), 0, K, gs, 4.0)
    with pytest.raises(TypeError, match="pending"):
        f(x, T_packed, E, corr, step, 0, K, gs, 4.0)
    with pytest.raises(ValueError, match="strength"):
        f(x, T_packed, E, corr, step, P(0), K, gs, 25.0)
    with pytest.raises(ValueError, match="power of two >= 16"):
        f(x, T_packed, E, corr, step, P(0), K, gs, 4.0, config=dict(BLOCK_K=24))
    with pytest.raises(ValueError, match="rows"):
        ballot("triton", torch.randn(4, N), x, T_packed, corr.clone(), K, gs)
    with pytest.raises(TypeError, match="share a dtype"):
        ballot("triton", torch.randn(5, N).half(), x, T_packed, corr.clone(), K, gs)
    with pytest.raises(ValueError, match="path"):
        f(x, T_packed, E, corr, step, P(0), K, gs, 4.0, path="cublas")
    with pytest.raises(ValueError, match="out_features"):
        linear_triton.ternary_grad_x(torch.randn(5, N + 1), T_packed, E, corr, step, P(0), K, gs, 4.0)
    if hasattr(torch, "device") and torch.device("meta"):
        with pytest.raises(RuntimeError, match="is on meta"):
            f(x.to("meta"), T_packed, E, corr, step, P(0), K, gs, 4.0)


@interp
def test_custom_ops_opcheck_and_compile():
    """The arbitor:: custom ops pass opcheck; torch.compile (aot_eager) of a layer stack runs and matches eager."""
    from arbitor.ternary.ops import library
    M, K, N, gs = 16, 32, 16, 8
    _, T_packed, E, corr, step = make_state(N, K, gs, seed=5)
    x, gy = int_tensor((M, K), 1), int_tensor((M, N), 2)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.arbitor.ternary_linear_forward.default,
                          (x, T_packed, E, corr, step, P(1), K, gs, 4.0), test_utils=utils)
    torch.library.opcheck(torch.ops.arbitor.ternary_linear_grad_x.default,
                          (gy, T_packed, E, corr, step, P(1), K, gs, 4.0), test_utils=utils)
    torch.library.opcheck(torch.ops.arbitor.bigint_ballot_.default,
                          (gy, x, T_packed, corr.clone(), P(0), P(0), K, gs), test_utils=utils)
    C = torch.zeros(N, K // 2, dtype=torch.uint8)
    torch.library.opcheck(torch.ops.arbitor.counter_ballot_.default,
                          (gy, x, T_packed.clone(), C, corr.clone(), step, P(0), P(0), P(5), K, gs, 4,
                           torch.tensor(0.5)), test_utils=utils)
    C5 = torch.zeros(counter_packed_shape(N, K, 5), dtype=torch.uint8)     # 5-bit counters: two planes
    torch.library.opcheck(torch.ops.arbitor.counter_ballot_.default,
                          (gy, x, T_packed.clone(), C5, corr.clone(), step, P(0), P(0), P(5), K, gs, 5,
                           torch.tensor(1.0)), test_utils=utils)
    assert library.ternary_linear_forward is not None

    def make():
        return torch.nn.Sequential(TernaryScaleTensor(K, N, group_size=gs, seed=1, backend="triton"),
                                   TernaryScaleTensor(N, N, group_size=gs, seed=2, backend="triton"))

    eager, compiled_src = make(), make()
    compiled = torch.compile(compiled_src, backend="aot_eager")
    xin = int_tensor((M, K), 9)
    y_e, y_c = eager(xin), compiled(xin)
    torch.testing.assert_close(y_c, y_e)
    y_e.sum().backward()
    y_c.sum().backward()
    for a, b in zip(eager, compiled_src):
        assert torch.equal(a.corr_accum, b.corr_accum)
        assert a.pending_ballots == b.pending_ballots == 1


# ----------------------------------------------------------------------------- GPU
GPU_SHAPES = [(512, 1024, 768, 64), (333, 2048, 1000, 128), (1000, 512, 384, 4), (7, 4096, 2048, 64)]


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,K,N,gs", GPU_SHAPES)
def test_gpu_kernels_match_reference(M, K, N, gs, dtype):
    dev = torch.device("cuda")
    _, T_packed, E, corr, step = make_state(N, K, gs, seed=M + K + N, device=dev, corr_range=10 ** 6, steps=10 ** 4)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(M, K, generator=g, device=dev).to(dtype)
    gy = torch.randn(M, N, generator=g, device=dev).to(dtype)
    S, (gx_ref, _) = ref_backward(gy, x, T_packed, E, corr, step, 3, K, gs)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    scale_y = S.abs().max().item() * K ** 0.5
    scale_x = S.abs().max().item() * N ** 0.5
    pend = P(3, dev)
    for path in ("fused", "expand"):
        y = linear_triton.ternary_forward(x, T_packed, E, corr, step, pend, K, gs, 4.0, path=path)
        y_ref = ref_forward(x, T_packed, S, K, gs)
        torch.testing.assert_close(y.float() / scale_y, y_ref.float() / scale_y, **tol)
        gx = linear_triton.ternary_grad_x(gy, T_packed, E, corr, step, pend, K, gs, 4.0, path=path)
        torch.testing.assert_close(gx.float() / scale_x, gx_ref.float() / scale_x, **tol)
    # in-kernel S bound on the GPU (ex2.approx); the expand kernel's W_eff is exact
    S_k = linear_triton.ternary_scale(E, corr, step, pend, gs, 4.0)
    assert (S_k.double() / S.double() - 1).abs().max().item() <= 1.5e-6
    W = linear_triton.expand_weight_triton(T_packed, E, corr, step, pend, K, gs, 4.0, dtype)
    assert torch.equal(W, (unpack_ternary(T_packed, K, torch.float32).view(N, -1, gs) * S[:, :, None]).view(N, K)
                       .to(dtype))

    # votes: exact on integer-valued data, deterministic run to run on random data
    xi = int_tensor((M, K), 3, device=dev, dtype=dtype)
    gyi = int_tensor((M, N), 4, device=dev, dtype=dtype)
    _, (_, v_ref) = ref_backward(gyi, xi, T_packed, E, corr, step, 0, K, gs)
    c = torch.zeros_like(corr)
    ballot("triton", gyi, xi, T_packed, c, K, gs)
    assert torch.equal(c, v_ref)
    c1, c2 = torch.zeros_like(corr), torch.zeros_like(corr)
    ballot("triton", gy, x, T_packed, c1, K, gs)
    ballot("triton", gy, x, T_packed, c2, K, gs)
    assert torch.equal(c1, c2)
    _, (_, v_rand) = ref_backward(gy, x, T_packed, E, corr, step, 0, K, gs)
    # near-zero fp32 sums may take a different sign under a different summation order: rare
    assert (c1 != v_rand).float().mean().item() < 0.05


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_training_step_matches_torch_backend(dtype):
    """One full training step of a 3-layer stack: bit-identical corr_accum on the torch and triton backends.

    ``E`` is set to 0 so ``S = 1`` exactly at step 0; with small integer inputs and loss
    weights every forward value, gradient and ``grad_W`` sum is an integer below 2**24, so both
    backends compute the same exact fp32 numbers (bf16 outputs are rounded identically) and
    the votes must agree bit for bit.
    """
    dev = torch.device("cuda")

    def stack(backend):
        layers = [TernaryScaleTensor(32, 32, group_size=8, seed=1, backend=backend, device=dev),
                  TernaryScaleTensor(32, 32, group_size=16, seed=2, backend=backend, device=dev),
                  TernaryScaleTensor(32, 16, group_size=4, seed=3, backend=backend, device=dev)]
        for layer in layers:
            layer.E.zero_()
        return torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1], torch.nn.ReLU(), layers[2])

    ref, tri = stack("torch"), stack("triton")
    x = int_tensor((4, 50, 32), 1, lo=-2, hi=2, device=dev, dtype=dtype)
    r = int_tensor((4, 50, 16), 2, lo=-2, hi=2, device=dev, dtype=torch.float32)
    outs = []
    for model in (ref, tri):
        out = model(x)
        outs.append(out)
        (out.float() * r).sum().backward()
        assert ternary_step(model) == 3
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(ref, tri):
        if isinstance(a, TernaryScaleTensor):
            assert (a.corr_accum != 0).any()
            assert torch.equal(a.corr_accum, b.corr_accum)
            assert int(a.step_counter) == int(b.step_counter) == 1


@gpu
@needs_cuda
def test_gpu_torch_compile_inductor():
    """torch.compile (inductor) of a layer stack on the triton backend matches eager, votes included."""
    dev = torch.device("cuda")

    def make():
        return torch.nn.Sequential(TernaryScaleTensor(64, 96, group_size=16, seed=1, backend="triton", device=dev),
                                   torch.nn.GELU(),
                                   TernaryScaleTensor(96, 32, group_size=32, seed=2, backend="triton", device=dev))

    eager, src = make(), make()
    compiled = torch.compile(src)
    x = int_tensor((3, 40, 64), 4, device=dev)
    y_e, y_c = eager(x), compiled(x)
    torch.testing.assert_close(y_c, y_e, rtol=1e-5, atol=1e-5)
    y_e.square().sum().backward()
    y_c.square().sum().backward()
    for a, b in zip(eager, src):
        if isinstance(a, TernaryScaleTensor):
            assert (a.corr_accum != 0).any()
            assert (a.corr_accum == b.corr_accum).float().mean().item() > 0.99
