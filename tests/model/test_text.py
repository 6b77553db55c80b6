"""The ARB text model: shapes, purity (audit for every preset), sampling with the KV cache."""
import pytest
import torch

from arbitor.model.config import PRESETS, ConfigError, ModelConfig, preset
from arbitor.ternary.audit import ternary_audit
from arbitor.ternary.layer import TernaryScaleTensor
from arbitor.ternary.step import ternary_step
from arbitor.model.text import ArbitorLM


def tiny(ternary=None, **kw):
    return ArbitorLM(preset("tiny", ternary=ternary, **kw))


def test_forward_shapes_and_loss():
    m = tiny()
    idx = torch.randint(0, 256, (2, 16))
    logits, loss = m(idx, idx)
    assert logits.shape == (2, 16, 256)
    # a fresh model is near uniform: ln(256) = 5.55
    assert 4.5 < loss.item() < 7.5


@pytest.mark.parametrize("name", list(PRESETS))
def test_audit_zero_trainable_float_params_every_preset(name):
    with torch.device("meta"):  # shapes only: the 3.12B preset audits without drawing 3e9 weights
        m = ArbitorLM(preset(name))
    rep = ternary_audit(m)
    assert rep["trainable_float_params"] == 0 and rep["pure_ternary"]
    assert list(m.parameters()) == []
    cfg = m.cfg
    n_ternary_layers = sum(isinstance(x, TernaryScaleTensor) for x in m.modules())
    assert n_ternary_layers == cfg.n_layers * (5 + 2 + (1 if cfg.lti_decays else 0)) + 1
    assert rep["state_bytes"]["corr_accum"] > 0 and rep["state_bytes"]["T_packed"] > 0
    assert rep["frozen_float_elements"] == cfg.n_layers * len(cfg.lti_decays)


@pytest.mark.parametrize("linear", ["dense", "bitnet"])
def test_float_baseline_factories_are_not_pure(linear):
    m = tiny(linear=linear)
    rep = ternary_audit(m)
    assert rep["trainable_float_params"] > 0 and not rep["pure_ternary"]
    assert sum(isinstance(x, TernaryScaleTensor) for x in m.modules()) == 0
    idx = torch.randint(0, 256, (2, 8))
    _, loss = m(idx, idx)
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("rule,keys", [("bigint", {"corr_accum", "step_counter"}),
                                      ("counter", {"corr_accum", "hash_key", "C_packed"})])
def test_update_rule_reaches_every_ternary_layer(rule, keys):
    m = tiny(ternary={"update_rule": rule, "counter_bits": 2})
    layers = [x for x in m.modules() if isinstance(x, TernaryScaleTensor)]
    assert all(layer.update_rule == rule and keys <= set(dict(layer.named_buffers())) for layer in layers)
    assert ternary_audit(m)["trainable_float_params"] == 0
    if rule == "counter":
        assert all(layer.rule.counter_bits == 2 for layer in layers)


def test_backward_votes_everywhere_and_no_float_grad():
    m = tiny()
    idx = torch.randint(0, 256, (2, 16))
    _, loss = m(idx, idx)
    loss.backward()
    layers = [x for x in m.modules() if isinstance(x, TernaryScaleTensor)]
    assert all(layer.pending_ballots == 1 for layer in layers)
    ternary_step(m)
    assert all(int(layer.step_counter) == m.cfg.ternary.ballot_prior + 1 for layer in layers)
    assert all(bool(layer.corr_accum.ne(0).any()) for layer in layers)
    assert int(m.embed.step_counter[idx.unique()].min()) == m.cfg.ternary.ballot_prior + 1


def test_cached_generation_matches_full_recompute():
    m = tiny().eval()
    prompt = torch.randint(0, 256, (1, 5))
    out = m.generate(prompt, 12, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(12):
            logits, _ = m(seq)
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_generation_past_max_ctx_and_top_k():
    m = ArbitorLM(preset("tiny", max_ctx=16))
    g = torch.Generator().manual_seed(0)
    out = m.generate(torch.zeros(2, 3, dtype=torch.long), 30, temperature=1.0, top_k=5, generator=g)
    assert out.shape == (2, 33)
    assert m.training  # restored


def test_registered_decoder_is_built_from_the_config():
    from arbitor.model.decoders import DECODERS, TextDecoder, register_decoder

    class ShoutDecoder(TextDecoder):   # a stand-in for a new modality's head
        modality = "shout"

    register_decoder("shout", ShoutDecoder)
    try:
        m = tiny(decoders=("text", "shout"))
        assert isinstance(m.decoders["shout"], ShoutDecoder)
        h = m.hidden(torch.randint(0, 256, (1, 4)))
        assert m.decoders["shout"](h).shape == (1, 4, 256)
        assert ModelConfig.from_dict(m.cfg.to_dict()) == m.cfg
    finally:
        del DECODERS["shout"]
    with pytest.raises(ConfigError, match="unknown decoder"):
        preset("tiny", decoders=("text", "shout"))


def test_config_roundtrip_and_errors():
    c = preset("small", ternary={"group_size": 8})
    assert c.ternary.group_size == 8 and c.ternary.strength == 16.0
    assert ModelConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ConfigError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"d_modl": 3})


def test_compiled_checkpointed_blocks_and_loss_chunks_compile_whole():
    """With activation checkpointing, ``torch.compile(model)`` captures each block and each loss chunk as a
    checkpoint higher-order op instead of running them eagerly: the layers' dirty flags are set before each
    checkpoint (``expect_ballots``), so no attribute store happens inside one (Dynamo's reason to fall back to
    eager, which made the compiled ``3b`` step no faster than the eager one). Backward still votes in every layer."""
    cfg = preset("3b", d_model=64, n_layers=2, n_heads=2, max_ctx=16, vocab_size=32, embedding_group_size=32,
                 activation_checkpointing=True, loss_chunk_tokens=16, ternary=dict(backend="torch"))
    m = ArbitorLM(cfg).train()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    idx = torch.randint(0, 32, (2, 17), generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    _, loss = torch.compile(m, backend=backend)(idx[:, :-1], idx[:, 1:])
    loss.backward()
    hops = [n for g in graphs for n in g.graph.nodes if "checkpoint" in str(n.target)]
    assert len(hops) == cfg.n_layers + 2          # the blocks and the loss's two 16-token chunks
    layers = [x for x in m.modules() if isinstance(x, TernaryScaleTensor)]
    assert all(x.dirty for x in layers) and ternary_step(m) >= len(layers)


def _state_bytes(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("rule", ["bigint", "counter"])
def test_recompute_blocks_recompute_the_first_blocks_and_change_no_result(monkeypatch, rule):
    """``recompute_blocks=k`` runs the first ``k`` blocks through ``checkpoint`` and the others plainly; the
    trained state after two steps is the same bytes for every ``k`` and without checkpointing at all (a recompute
    reads the same integer state: a layer's own ballot lands after it)."""
    import arbitor.model.text as text
    seen = []
    real = text.checkpoint

    def spy(block, x, cache, i, **kw):
        seen.append(i)
        return real(block, x, cache, i, **kw)
    monkeypatch.setattr(text, "checkpoint", spy)
    idx = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(1))
    states = {}
    for ckpt, k in ((False, None), (True, None), (True, 0), (True, 2), (True, 3)):
        seen.clear()
        m = tiny(ternary=dict(update_rule=rule, backend="torch"), n_layers=3, activation_checkpointing=ckpt,
                 recompute_blocks=k).train()
        for _ in range(2):
            _, loss = m(idx[:, :-1], idx[:, 1:])
            loss.backward()
            ternary_step(m)
        want = 0 if not ckpt else (3 if k is None else k)
        assert seen == list(range(want)) * 2, (ckpt, k, seen)     # the first `want` blocks, once a forward
        states[(ckpt, k)] = _state_bytes(m)
    ref = states[(False, None)]
    for key, st in states.items():
        assert all(torch.equal(st[n], ref[n]) for n in ref), key


@pytest.mark.parametrize("fields, needle", [
    (dict(recompute_blocks=1), "needs activation_checkpointing=True"),
    (dict(activation_checkpointing=True, recompute_blocks=3), "recompute_blocks must be an int in [0, n_layers=2]"),
    (dict(activation_checkpointing=True, recompute_blocks=-1), "recompute_blocks must be an int"),
    (dict(activation_checkpointing=True, recompute_blocks=True), "recompute_blocks must be an int"),
])
def test_recompute_blocks_errors_name_the_field(fields, needle):
    with pytest.raises(ConfigError) as err:
        preset("tiny", **fields)
    assert needle in str(err.value)
