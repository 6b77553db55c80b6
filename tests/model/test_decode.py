"""The static-KV-cache decode path (``arbitor/model/decode.py``, what ``ArbitorLM.generate`` runs while the
run fits in ``max_ctx``) against the growing cache of ``ArbitorLM.generate_dynamic``.

On the CPU the static cache runs eagerly (``cuda_graph=False``): the same computation a CUDA graph of one
token step replays (the graph itself is tested in ``tests/test_gpu.py``).
"""
import pytest
import torch
from decode_helpers import forced_logits  # (tests/ is on sys.path: conftest.py)

from arbitor.model.attention import KVCache, StaticKVCache
from arbitor.model.config import preset
from arbitor.model.decode import GraphedDecoder, generate_static
from arbitor.model.text import ArbitorLM


def model(name="tiny", **kw):
    torch.manual_seed(0)
    return ArbitorLM(preset(name, **kw)).eval()


@pytest.mark.parametrize("linear", ["ternary", "dense"])
def test_static_cache_greedy_tokens_equal_generate(linear):
    m = model(linear=linear)
    idx = torch.randint(0, 256, (3, 11), generator=torch.Generator().manual_seed(1))
    ref = m.generate_dynamic(idx, 12, temperature=0)
    out = generate_static(m, idx, 12, temperature=0, cuda_graph=False)
    assert out.shape == (3, 23)
    assert torch.equal(out, ref) and torch.equal(m.generate(idx, 12, temperature=0), out)


@pytest.mark.parametrize("linear", ["dense", "ternary"])
def test_bf16_static_cache_equals_generate(linear):
    """``compute_dtype="bfloat16"`` as ``tests/test_gpu.py`` builds it (``preset("small", ...)``, no cast): the
    dense projections hold bf16 weights (a float32 ``nn.Linear`` weight failed on the bf16 activations:
    ``expected mat1 and mat2 to have the same dtype``), and the static-cache path gives ``generate``'s tokens."""
    m = model("small", linear=linear, compute_dtype="bfloat16")
    if linear == "dense":
        assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    idx = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    ref = m.generate_dynamic(idx, 6, temperature=0)
    out = GraphedDecoder(m, 2, 15, cuda_graph=False).generate(idx, 6, temperature=0)
    assert out.shape == (2, 15)
    # bf16: the padded-buffer attention may round differently from the growing one (a near-tie can flip later)
    assert torch.equal(out[:, :9 + 4], ref[:, :9 + 4])
    assert torch.equal(m.generate(idx, 6, temperature=0), out)       # generate runs the static step: bit-equal
    logits, _ = m(idx)
    assert logits.dtype == torch.bfloat16


def test_static_cache_logits_match_dynamic_cache():
    m = model()
    idx = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(2))
    dyn = KVCache()
    dec = GraphedDecoder(m, 2, 16, cuda_graph=False)
    with torch.no_grad():
        h_ref = m.hidden(idx, dyn)[:, -1]
        h = m.hidden(idx, dec.cache)[:, -1]
        torch.testing.assert_close(h, h_ref, rtol=0, atol=0)       # the prompt: the same attention call
        tok = torch.tensor([[5], [7]])
        for _ in range(4):
            a = m.decoders["text"](m.hidden(tok, dyn)[:, -1]).float()
            b = dec.next_logits(tok)
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
            tok = a.argmax(-1, keepdim=True)
    assert dec.cache.length == dyn.length == 11 and int(dec.cache.pos) == 11


def test_decoder_reuse_sampling_and_limits():
    m = model()
    idx = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(3))
    dec = GraphedDecoder(m, 1, 20, cuda_graph=False)
    a = dec.generate(idx, 9, temperature=0)
    b = dec.generate(idx, 9, temperature=0)          # reset between calls: same buffers, same tokens
    assert torch.equal(a, b) and torch.equal(a, m.generate(idx, 9, temperature=0))
    assert dec.timings["decode_tokens"] == 7
    s1 = dec.generate(idx, 6, temperature=0.8, top_k=20, generator=torch.Generator().manual_seed(0))
    s2 = m.generate(idx, 6, temperature=0.8, top_k=20, generator=torch.Generator().manual_seed(0))
    assert s1.shape == s2.shape == (1, 11)
    with pytest.raises(ValueError):
        dec.generate(idx, 16)                        # 5 + 16 > max_len
    with pytest.raises(ValueError):
        dec.generate(idx.repeat(2, 1), 2)            # wrong batch
    with pytest.raises(ValueError):
        GraphedDecoder(m, 1, 20, cuda_graph=True)    # CPU model
    # past max_ctx: the growing cache with its rebuild
    long = torch.randint(0, 256, (1, 120), generator=torch.Generator().manual_seed(4))
    assert torch.equal(generate_static(m, long, 12, temperature=0, cuda_graph=False),
                       m.generate_dynamic(long, 12, temperature=0))
    assert torch.equal(m.generate(long, 12, temperature=0), m.generate_dynamic(long, 12, temperature=0))


def test_static_cache_buffers():
    c = StaticKVCache(2, 3, 4, 8, 10, torch.float32, "cpu", lti=(2, 32))
    k = torch.randn(3, 4, 2, 8)
    kk, vv, mask = c.update(1, k, k + 1)
    assert torch.equal(kk[:, :, :2], k) and torch.equal(vv[:, :, :2], k + 1) and mask.shape == (2, 10)
    assert mask[0].tolist() == [True] + [False] * 9 and mask[1].sum() == 2
    assert c.get_lti(0) is None
    c.advance(2)
    assert c.get_lti(0) is not None and int(c.pos) == 2 and c.length == 2
    c.reset()
    assert int(c.pos) == 0 and c.length == 0 and c.get_lti(0) is None


def test_decoding_attention_avoids_cudnn_training_keeps_default(monkeypatch):
    """Every SDPA call of a decoding step (prefill, static-cache steps, growing-cache steps) runs with cuDNN's
    attention disabled (its forward is not deterministic run to run: the H200's batch-16 graphed tokens parted
    from the eager ones); the training forward (no cache) leaves PyTorch's backend choice alone."""
    import torch.nn.functional as F
    seen = []
    real = F.scaled_dot_product_attention

    def spy(*a, **k):
        seen.append((k.get("attn_mask") is not None, torch.backends.cuda.cudnn_sdp_enabled()))
        return real(*a, **k)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    torch.backends.cuda.enable_cudnn_sdp(True)
    m = ArbitorLM(preset("small")).eval()
    idx = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    m(idx)
    assert seen and all(cudnn for _, cudnn in seen)            # training / no cache: default backends
    seen.clear()
    GraphedDecoder(m, 2, 14, cuda_graph=False).generate(idx, 5, temperature=0)
    m.generate_dynamic(idx, 5, temperature=0)
    assert len(seen) >= 2 * 4 * 5 and any(masked for masked, _ in seen)
    assert not any(cudnn for _, cudnn in seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()             # restored after each call


def test_cached_attention_matches_sdpa():
    from arbitor.model.attention import cached_attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g) for n in (2, 7, 7))
    mask = torch.arange(7).view(1, -1) <= torch.tensor([[4], [5]])
    import torch.nn.functional as F
    assert torch.allclose(cached_attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                          atol=1e-6)
    assert torch.allclose(cached_attention(q, k[:, :, :2], v[:, :, :2]),
                          F.scaled_dot_product_attention(q, k[:, :, :2], v[:, :, :2], is_causal=True), atol=1e-6)


def test_static_cache_position_is_saved_and_set_back():
    """``StaticKVCache.position`` / ``set_position`` undo a step's effect on the position, the LTI states and the
    host mirrors (``GraphedDecoder``'s dry step before a capture): the step run again gives the same logits."""
    torch.manual_seed(0)
    m = ArbitorLM(preset("small")).eval()
    idx = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(3))
    dec = GraphedDecoder(m, 2, 12, cuda_graph=False)
    dec.generate(idx, 2, temperature=0)
    c = dec.cache
    assert c.lti, "the small preset has LTI states"
    saved = c.position()
    tok = torch.zeros(2, 1, dtype=torch.long)
    first = dec.next_logits(tok).clone()
    assert c.length == saved[2] + 1 and int(c.pos) == int(saved[0]) + 1
    c.set_position(saved)
    assert (c.length, c._started, int(c.pos)) == (saved[2], saved[3], int(saved[0]))
    assert all(torch.equal(t, s) for t, s in zip(c.lti, saved[1]))
    assert torch.equal(dec.next_logits(tok), first)


def test_compiled_bf16_step_rounds_as_eager():
    """``GraphedDecoder(compile=True)`` compiles with ``COMPILE_OPTIONS`` (Inductor's ``emulate_precision_casts``):
    in bf16 its logits, teacher-forced along the eager tokens, equal the eager step's bit for bit (without the
    option Inductor keeps fused intermediates in float32: 0.033 off on a logit scale of 6 here; on the H200 the
    ``3b`` step's greedy tokens then left the eager path's after 4 of 9)."""
    import arbitor
    torch.manual_seed(1)
    model = arbitor.for_inference(ArbitorLM(preset("tiny", max_ctx=32, compute_dtype="bfloat16")))
    idx = torch.randint(0, 256, (1, 5))
    tokens = GraphedDecoder(model, 1, 11, cuda_graph=False).generate(idx, 6, temperature=0)
    eager = forced_logits(GraphedDecoder(model, 1, 11, cuda_graph=False), idx, tokens, 5)
    compiled = forced_logits(GraphedDecoder(model, 1, 11, cuda_graph=False, compile=True), idx, tokens, 5)
    assert torch.equal(compiled, eager)


def test_compile_options_add_to_the_decoders_own(monkeypatch):
    """``compile_options`` reach ``torch.compile`` on top of ``COMPILE_OPTIONS`` (which stay in force unless
    overridden); without ``compile`` nothing is compiled."""
    from arbitor.model import decode
    seen = []
    monkeypatch.setattr(decode.torch, "compile", lambda fn, options=None: seen.append(options) or fn)
    m = ArbitorLM(preset("tiny", max_ctx=32)).eval()
    GraphedDecoder(m, 1, 16, cuda_graph=False, compile=True, compile_options={"triton.enable_pdl": False,
                                                                              "max_autotune": True})
    GraphedDecoder(m, 1, 16, cuda_graph=False, compile=True)
    GraphedDecoder(m, 1, 16, cuda_graph=False, compile_options={"max_autotune": True})
    assert decode.COMPILE_OPTIONS["triton.enable_pdl"] is True
    assert seen == [{**decode.COMPILE_OPTIONS, "triton.enable_pdl": False, "max_autotune": True},
                    decode.COMPILE_OPTIONS]


def test_each_compiled_decoder_keeps_its_own_graphs(monkeypatch):
    """Dynamo keeps compiled graphs on the step's code object, at most ``recompile_limit`` of them, and each
    decoder's step guards on its own model and cache: each decoder gets a code object of its own, so one past the
    limit still runs compiled (here the limit is 1 and Dynamo's eager backend stands in for Inductor)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from arbitor.model import decode
    real_compile = torch.compile
    monkeypatch.setattr(decode.torch, "compile", lambda fn, options=None: real_compile(fn, backend="eager"))
    torch.manual_seed(0)
    idx = torch.randint(0, 256, (1, 4))
    counters.clear()
    graphs = []
    with torch._dynamo.config.patch(recompile_limit=1):     # (monkeypatch's undo hides a config entry)
        for seed in (1, 2, 3):
            torch.manual_seed(seed)
            m = ArbitorLM(preset("tiny", max_ctx=32)).eval()
            want = GraphedDecoder(m, 1, 12, cuda_graph=False).generate(idx, 3, temperature=0)
            got = GraphedDecoder(m, 1, 12, cuda_graph=False, compile=True).generate(idx, 3, temperature=0)
            assert torch.equal(got, want)
            graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] < graphs[1] < graphs[2]      # a shared code object: no new graph after the first decoder
