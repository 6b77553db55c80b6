"""``for_inference`` / ``TernaryInferenceLinear``: the frozen layer is the trained layer's ``W_eff`` bit for bit,
holds only ``T_packed`` + float32 ``S`` (+ bias), refuses unfolded ballots and bad input, and a frozen model
generates the same greedy tokens as the trained one (CPU, torch reference ops)."""
from __future__ import annotations

import copy

import pytest
import torch

import arbitor
from arbitor.model.config import preset
from arbitor.model.decode import GraphedDecoder
from arbitor.model.text import ArbitorLM
from arbitor.ternary import TernaryInferenceLinear, TernaryScaleTensor, for_inference, ternary_step


def _trained_layer(bias: bool = False) -> TernaryScaleTensor:
    torch.manual_seed(0)
    layer = TernaryScaleTensor(64, 24, 16, seed=3, bias=bias, backend="torch")
    for _ in range(3):                                   # a few ballots so that S is not the initial one
        x = torch.randn(5, 64, requires_grad=True)
        layer(x).pow(2).sum().backward()
        ternary_step(layer)
    if bias:
        with torch.no_grad():
            layer.bias.copy_(torch.randn(24))
    return layer


@pytest.mark.parametrize("bias", [False, True])
def test_frozen_layer_is_the_trained_layer(bias):
    layer = _trained_layer(bias)
    frozen = TernaryInferenceLinear.from_trained(layer)
    assert torch.equal(frozen.effective_weight(), layer.effective_weight())
    assert {n for n, _ in frozen.named_buffers()} == ({"T_packed", "S", "bias"} if bias else {"T_packed", "S"})
    assert not list(frozen.parameters())
    x = torch.randn(2, 7, 64)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), layer.eval()(x))
        assert frozen(x.to(torch.bfloat16)).dtype == torch.bfloat16
    # a state dict round trip into a fresh frozen layer
    fresh = TernaryInferenceLinear(64, 24, 16, bias=bias)
    fresh.load_state_dict(frozen.state_dict())
    assert torch.equal(fresh(x), frozen(x))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relu_square_layer_applies_the_activation_after_the_bias(bias, dtype):
    """``with_relu_square``: the same buffers (not copied), and ``F.relu(layer(x)).square()`` bit for bit -- in the
    op without a bias, after the bias with one; ``concat`` keeps it and refuses to mix layers with and without."""
    frozen = TernaryInferenceLinear.from_trained(_trained_layer(bias))
    rs = TernaryInferenceLinear.with_relu_square(frozen)
    assert rs.relu_square and not frozen.relu_square and rs.T_packed is frozen.T_packed and rs.S is frozen.S
    assert "relu_square" in repr(rs)
    x = torch.randn(3, 64).to(dtype)
    with torch.no_grad():
        y = frozen(x)
        assert (y < 0).any()
        assert torch.equal(rs(x), torch.nn.functional.relu(y).square())
    assert TernaryInferenceLinear.concat([rs, rs]).relu_square
    with pytest.raises(ValueError, match="relu_square"):
        TernaryInferenceLinear.concat([rs, frozen])
    with pytest.raises(TypeError, match="TernaryInferenceLinear"):
        TernaryInferenceLinear.with_relu_square(torch.nn.Linear(4, 4))


def test_frozen_layer_refuses_bad_input_and_unfolded_ballots():
    layer = _trained_layer()
    frozen = TernaryInferenceLinear.from_trained(layer)
    with pytest.raises(ValueError, match="input last dimension must be 64"):
        frozen(torch.randn(3, 63))
    with pytest.raises(TypeError, match="input dtype must be"):
        frozen(torch.ones(3, 64, dtype=torch.int32))
    layer.train()
    layer(torch.randn(2, 64, requires_grad=True)).sum().backward()     # a ballot, not folded
    with pytest.raises(ValueError, match="ternary_step"):
        TernaryInferenceLinear.from_trained(layer)
    model = torch.nn.Sequential(layer)
    with pytest.raises(ValueError, match="layer 0 has ballots not yet folded"):
        for_inference(model)


def test_frozen_model_generates_the_same_tokens_with_less_memory():
    torch.manual_seed(0)
    model = ArbitorLM(preset("tiny", max_ctx=64)).eval()
    idx = torch.randint(0, 256, (2, 9))
    ref = model.generate(idx, 10, temperature=0)
    frozen = arbitor.for_inference(copy.deepcopy(model))
    assert not any(isinstance(m, TernaryScaleTensor) for m in frozen.modules())
    assert torch.equal(frozen.generate(idx, 10, temperature=0), ref)
    dec = GraphedDecoder(frozen, 2, 19, cuda_graph=False)            # the static-cache path, eagerly
    assert torch.equal(dec.generate(idx, 10, temperature=0), ref)

    def nbytes(m):
        return sum(t.numel() * t.element_size() for t in m.buffers())
    assert nbytes(frozen) < 0.75 * nbytes(model)


def test_compiled_static_decode_equals_eager():
    """``GraphedDecoder(compile=True)``: the compiled token step (Inductor on the CPU here) gives the eager
    path's greedy tokens (the GPU adds the graph capture: tests/model/test_decode.py)."""
    torch.manual_seed(1)
    model = arbitor.for_inference(ArbitorLM(preset("tiny", max_ctx=32)))
    idx = torch.randint(0, 256, (1, 5))
    ref = model.generate(idx, 6, temperature=0)
    dec = GraphedDecoder(model, 1, 11, cuda_graph=False, compile=True)
    assert torch.equal(dec.generate(idx, 6, temperature=0), ref)


def test_concat_stacks_rows_and_refuses_mismatches():
    a, b = TernaryInferenceLinear.from_trained(_trained_layer()), TernaryInferenceLinear.from_trained(_trained_layer())
    b.S.mul_(2)                                                       # another scale: the halves must stay apart
    ab = TernaryInferenceLinear.concat([a, b])
    assert (ab.in_features, ab.out_features) == (64, 48)
    assert torch.equal(ab.effective_weight(), torch.cat([a.effective_weight(), b.effective_weight()]))
    x = torch.randn(3, 64)
    torch.testing.assert_close(ab(x), torch.cat([a(x), b(x)], -1))
    with pytest.raises(ValueError, match="differ in in_features / group_size"):
        TernaryInferenceLinear.concat([a, TernaryInferenceLinear(64, 8, 32)])
    with pytest.raises(ValueError, match="every layer has a bias or none"):
        TernaryInferenceLinear.concat([a, TernaryInferenceLinear.from_trained(_trained_layer(bias=True))])
    with pytest.raises(TypeError, match="TernaryInferenceLinear"):
        TernaryInferenceLinear.concat([])


def _frozen_256(bias: bool = False, relu_square: bool = False) -> TernaryInferenceLinear:
    """A frozen [48, 512] layer at group 64 (a shape the ``tc`` layout takes) with random trits and scales."""
    g = torch.Generator().manual_seed(7)
    layer = TernaryInferenceLinear(512, 48, 64, bias=bias, backend="torch", relu_square=relu_square)
    layer.T_packed.copy_(arbitor.pack_ternary(torch.randint(-1, 2, (48, 512), generator=g)))
    layer.S.copy_(torch.rand(48, 8, generator=g) * 0.1)
    if bias:
        layer.bias.copy_(torch.randn(48, generator=g))
    return layer


@pytest.mark.parametrize("bias,relu_square", [(False, False), (True, False), (False, True)])
def test_tc_layout_gives_the_same_outputs_and_state(bias, relu_square):
    """``to_layout("tc")`` rearranges the layer's own buffers (``format.tc_tiles``): the same outputs bit for bit, the
    same bytes, a state dict that loads into a layer built in that layout (and not into one in rows), and back."""
    rows = _frozen_256(bias, relu_square)
    tc = copy.deepcopy(rows).to_layout("tc")
    assert (rows.layout, tc.layout) == ("rows", "tc") and "tc layout" in repr(tc)
    assert tc.T_packed.shape == (3, 2, 2, 32, 16) and tc.S.shape == (3, 2, 2, 8, 4)
    assert sum(b.numel() * b.element_size() for b in tc.buffers()) == sum(b.numel() * b.element_size()
                                                                          for b in rows.buffers())
    x = torch.randn(2, 3, 512)
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            assert torch.equal(tc(x.to(dtype)), rows(x.to(dtype)))
    assert torch.equal(tc.effective_weight(), rows.effective_weight())
    fresh = TernaryInferenceLinear(512, 48, 64, bias=bias, backend="torch", relu_square=relu_square, layout="tc")
    fresh.load_state_dict(tc.state_dict())
    assert torch.equal(fresh(x), rows(x))
    with pytest.raises(RuntimeError, match="size mismatch"):
        TernaryInferenceLinear(512, 48, 64, bias=bias).load_state_dict(tc.state_dict())
    back = copy.deepcopy(tc).to_layout("rows")
    assert torch.equal(back.T_packed, rows.T_packed) and torch.equal(back.S, rows.S)


def test_tc_layout_concat_and_refusals():
    """``concat`` stacks layers of one layout (blocks of 16 features in ``tc``) and refuses a mix; a shape the layout
    cannot take and an unknown layout name are one-line errors."""
    a, b = _frozen_256(), _frozen_256()
    b.S.mul_(2)
    rows = TernaryInferenceLinear.concat([a, b])
    tc = TernaryInferenceLinear.concat([copy.deepcopy(a).to_layout("tc"), copy.deepcopy(b).to_layout("tc")])
    assert tc.layout == "tc" and tc.out_features == 96
    assert torch.equal(copy.deepcopy(rows).to_layout("tc").T_packed, tc.T_packed)
    x = torch.randn(3, 512)
    assert torch.equal(tc(x), rows(x))
    with pytest.raises(ValueError, match="layout"):
        TernaryInferenceLinear.concat([a, copy.deepcopy(b).to_layout("tc")])
    with pytest.raises(ValueError, match="layout 'tc' needs out_features % 16 == 0"):
        TernaryInferenceLinear.from_trained(_trained_layer()).to_layout("tc")
    with pytest.raises(ValueError, match="layout must be one of rows, tc"):
        a.to_layout("tiles")
    with pytest.raises(ValueError, match="for_inference: layout must be"):
        for_inference(torch.nn.Sequential(), layout="tiles")


def test_for_inference_layout_choice_keeps_the_tokens():
    """``for_inference(layout=...)``: ``"auto"`` keeps rows on the CPU (the tc layout is for the GPU's kernel),
    ``"tc"`` rearranges every layer whose shape allows it (every one at ``d_model`` 256, the fused q/k/v/gate layer
    and the 256-token head included), ``"rows"`` none; the greedy tokens are the same in every layout."""
    torch.manual_seed(4)
    cfg = preset("tiny", d_model=256, n_heads=2, max_ctx=32)
    model = ArbitorLM(cfg).eval()
    idx = torch.randint(0, 256, (1, 5))
    auto = for_inference(copy.deepcopy(model))
    tc = for_inference(copy.deepcopy(model), fuse_projections=True, layout="tc")
    frozen = [m for m in tc.modules() if isinstance(m, TernaryInferenceLinear)]
    assert all(m.layout == "rows" for m in auto.modules() if isinstance(m, TernaryInferenceLinear))
    assert frozen and all(m.layout == "tc" for m in frozen)
    assert tc.blocks[0].mlp.up.relu_square and tc.blocks[0].attn.qkvg.layout == "tc"
    ref = auto.generate(idx, 6, temperature=0)
    assert torch.equal(tc.generate(idx, 6, temperature=0), ref)
    assert torch.equal(for_inference(copy.deepcopy(model), layout="rows").generate(idx, 6, temperature=0), ref)


def test_fused_projections_decode_the_same_tokens():
    """``fuse_projections=True``: each attention's q, k, v, gate become one ``qkvg`` layer of 4 x d_model rows;
    the weights move, they do not change (same bytes), and greedy decoding gives the unfused tokens."""
    torch.manual_seed(2)
    model = ArbitorLM(preset("tiny", max_ctx=64)).eval()
    idx = torch.randint(0, 256, (2, 7))
    plain = arbitor.for_inference(copy.deepcopy(model))
    fused = arbitor.for_inference(copy.deepcopy(model), fuse_projections=True)
    attn_p, attn_f = plain.blocks[0].attn, fused.blocks[0].attn
    assert attn_f.qkvg is not None and not hasattr(attn_f, "q") and attn_f.qkvg.out_features == 4 * 64
    assert torch.equal(attn_f.qkvg.T_packed, torch.cat([getattr(attn_p, n).T_packed for n in ("q", "k", "v", "gate")]))
    assert sum(t.numel() for t in fused.buffers()) == sum(t.numel() for t in plain.buffers())
    # the MLP's squared ReLU moves into its frozen up projection (applied once: twice would give y ** 4)
    assert all(b.mlp.up.relu_square and not b.mlp.down.relu_square for b in fused.blocks)
    assert not any(b.mlp.up.relu_square for b in plain.blocks)
    with torch.no_grad():
        torch.testing.assert_close(fused(idx)[0], plain(idx)[0], rtol=1e-5, atol=1e-5)
        h = torch.randn(2, 5, 64)
        mlp_p, mlp_f = plain.blocks[1].mlp, fused.blocks[1].mlp
        assert torch.equal(mlp_f(h), mlp_p(h))
    ref = plain.generate(idx, 8, temperature=0)
    assert torch.equal(fused.generate(idx, 8, temperature=0), ref)
    assert torch.equal(GraphedDecoder(fused, 2, 15, cuda_graph=False).generate(idx, 8, temperature=0), ref)


def test_fused_projections_of_a_dense_model():
    """The baseline's fusion (``bench_decode.py --fuse``): a dense model's float q, k, v, gate become one
    ``nn.Linear`` of stacked rows (same weights, same count), with the unfused outputs and greedy tokens; a QAT
    layer (an ``nn.Linear`` subclass whose scale is its own tensor's) is left as it is; ``concat_linear`` refuses
    layers it cannot stack."""
    from arbitor.ternary.inference import concat_linear
    torch.manual_seed(3)
    model = ArbitorLM(preset("tiny", max_ctx=64, linear="dense")).eval()
    idx = torch.randint(0, 256, (2, 7))
    fused = for_inference(copy.deepcopy(model), fuse_projections=True)
    attn, attn_f = model.blocks[0].attn, fused.blocks[0].attn
    assert type(attn_f.qkvg) is torch.nn.Linear and not hasattr(attn_f, "q")
    assert torch.equal(attn_f.qkvg.weight, torch.cat([getattr(attn, n).weight for n in ("q", "k", "v", "gate")]))
    assert sum(p.numel() for p in fused.parameters()) == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(fused(idx)[0], model(idx)[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(fused.generate(idx, 8, temperature=0), model.generate(idx, 8, temperature=0))
    bitnet = for_inference(ArbitorLM(preset("tiny", max_ctx=64, linear="bitnet")).eval(), fuse_projections=True)
    assert bitnet.blocks[0].attn.qkvg is None and hasattr(bitnet.blocks[0].attn, "q")
    a = torch.nn.Linear(8, 4, bias=False)
    with pytest.raises(ValueError, match="in_features / dtype / device"):
        concat_linear([a, torch.nn.Linear(6, 4, bias=False)])
    with pytest.raises(ValueError, match="every layer has a bias or none"):
        concat_linear([a, torch.nn.Linear(8, 4)])
    with pytest.raises(TypeError, match="one or more Linear"):
        concat_linear([])
