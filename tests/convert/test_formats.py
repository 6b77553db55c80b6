"""Export to the ternary formats other runtimes read: transformers' ``bitnet`` and GGUF ``TQ2_0``.

Exact where arbitor's scale layout matches the format's; otherwise approximated, reported and measured."""
import pytest
import torch

import arbitor
from arbitor.convert import export, logit_drift, ternarize
from arbitor.convert.formats import llama_qk_permute, pack_bitnet, unpack_bitnet
from arbitor.data import BUNDLED_TEXT_PATH

transformers = pytest.importorskip("transformers")


def _tokens(n, vocab):
    return torch.tensor(list(BUNDLED_TEXT_PATH.read_bytes()[:n]), dtype=torch.int64) % vocab


def _llama(group_size, steps=3):
    """A 1-layer Llama at hidden 256 (TQ2_0 rows need in_features % 256 == 0), converted and trained a few
    steps so that its scales are no longer the fitted powers of two."""
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    ternarize(model, group_size=group_size, update_rule="counter", counter_rate=0.5)
    data = _tokens(4 * 33, 64).view(4, 33)
    for _ in range(steps):
        model(input_ids=data, labels=data).loss.backward()
        arbitor.ternary_step(model)
    return model.eval(), data


def test_bitnet_pack_matches_transformers():
    from transformers.integrations import bitnet
    T = torch.randint(-1, 2, (12, 5), dtype=torch.int8)
    assert torch.equal(pack_bitnet(T), bitnet.pack_weights(T.clone()))
    assert torch.equal(unpack_bitnet(pack_bitnet(T)), T)


@pytest.mark.parametrize("exact", [True, False])
def test_gguf_tq2_0_reads_back(tmp_path, exact):
    gguf = pytest.importorskip("gguf")
    model, _ = _llama(256 if exact else 64, steps=0 if exact else 3)
    report = export(model, tmp_path, format="gguf") if exact else None
    if not exact:
        with pytest.warns(UserWarning, match="approximation"):
            report = export(model, tmp_path, format="gguf")
    assert report.exact == exact, report.format_table()
    reader = gguf.GGUFReader(str(report.file))
    tensors = {t.name: t for t in reader.tensors}
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.block_count"].contents() == 1
    q = tensors["blk.0.attn_q.weight"]
    assert q.tensor_type == gguf.GGMLQuantizationType.TQ2_0
    for hf, name, heads in [("model.layers.0.self_attn.q_proj", "blk.0.attn_q.weight", 4),
                            ("model.layers.0.self_attn.k_proj", "blk.0.attn_k.weight", 2),
                            ("model.layers.0.mlp.down_proj", "blk.0.ffn_down.weight", None)]:
        m = model.get_submodule(hf)
        W = m.effective_weight()
        if heads:
            W = llama_qk_permute(W, heads)
        got = torch.from_numpy(gguf.quants.dequantize(tensors[name].data, tensors[name].tensor_type))
        assert got.shape == W.shape
        err = float((got - W).norm() / W.norm())
        if exact:
            assert torch.equal(got, W)
        else:
            assert 0 < err < 0.4, err   # the trits are kept; power-of-two group scales share one per block
        assert torch.equal(got.sign(), W.sign())
    assert tensors["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_bitnet_export_loads_in_transformers_and_drift_is_measured(tmp_path):
    pytest.importorskip("accelerate")
    with torch._dynamo.config.patch(disable=True):   # BitLinear's @torch.compile: eager on CPU (restored after)
        _bitnet_export_round_trip(tmp_path)


def _bitnet_export_round_trip(tmp_path):
    for g, steps in [(256, 0), (64, 3)]:
        model, data = _llama(g, steps)
        if steps == 0:       # one scale per tensor, as bitnet has: set every group of a layer to one exponent
            for m in model.modules():
                if isinstance(m, arbitor.ternary.TernaryScaleTensor):
                    m.E.fill_(int(m.E.float().mean().round()))
        out = tmp_path / f"g{g}"
        if steps == 0:
            report = export(model, out, format="bitnet")
        else:
            with pytest.warns(UserWarning, match="approximation"):
                report = export(model, out, format="bitnet")
        assert report.exact == (steps == 0), report.format_table()
        loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        from transformers.integrations.bitnet import BitLinear
        q = loaded.model.layers[0].self_attn.q_proj
        assert isinstance(q, BitLinear)
        W = unpack_bitnet(q.weight).float() / q.weight_scale.float()
        ref = model.model.layers[0].self_attn.q_proj.effective_weight()
        if steps == 0:
            assert torch.equal(W, ref)
        drift = logit_drift(model, loaded, data)
        print(f"bitnet group {g} steps {steps}: {drift}")
        assert drift["rel_logit"] < (0.1 if steps == 0 else 1.0), drift   # int8 activations (+ shared scales)
        assert abs(drift["loss_drift"]) < 0.5, drift
