"""arbitor.convert: ternarize a model you already have, train it with integer state, export it.

No download: the transformers models are built from small configs and given structure by a few float
training steps first."""
import math

import pytest
import torch
from torch import nn

import arbitor
from arbitor.convert import export, group_size_for, load_packed, ternarize
from arbitor.data import BUNDLED_TEXT_PATH
from arbitor.ternary import TernaryScaleTensor


def _tokens(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    raw = BUNDLED_TEXT_PATH.read_bytes()[seed * n: seed * n + n]
    return torch.tensor(list(raw), dtype=torch.int64) % vocab


def _float_train(model, step_fn, steps: int, lr: float = 3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for i in range(steps):
        loss = step_fn(i)
        loss.backward()
        opt.step()
        opt.zero_grad()


def _mlp_task(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 32, generator=g)
    w = torch.randn(32, 4, generator=g)
    y = (x @ w).argmax(1)
    return x, y


def test_group_size_rule():
    assert group_size_for(4096, 64) == 64 and group_size_for(20, 64) == 4 and group_size_for(96, 64) == 32
    assert group_size_for(30, 64) is None


def test_mlp_converts_keeps_its_function_trains_and_exports():
    torch.manual_seed(0)
    x, y = _mlp_task()
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 4))
    _float_train(model, lambda i: nn.functional.cross_entropy(model(x), y), 200, lr=1e-2)
    float_acc = float((model(x).argmax(1) == y).float().mean())
    report = ternarize(model, group_size=16, update_rule="counter", counter_rate=0.5)
    assert [r.status for r in report.layers] == ["ternary", "ternary"]
    assert all(0.0 < r.rel_error < 0.6 for r in report.layers), report.format()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 0
    assert isinstance(model[0], TernaryScaleTensor) and model[0].bias is not None
    conv_acc = float((model(x).argmax(1) == y).float().mean())
    assert conv_acc > 0.6 * float_acc, (conv_acc, float_acc)           # most of the function survives
    losses = []
    for _ in range(40):                                                 # the README's own loop
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        arbitor.ternary_step(model)
        losses.append(float(loss))
    assert min(losses[-5:]) < losses[0], losses
    fresh = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 4))
    import tempfile

    from safetensors.torch import load_file
    with tempfile.TemporaryDirectory() as d:
        fresh.load_state_dict(load_file(export(model, d)))
    with torch.no_grad():
        a, b = fresh(x), model(x)
        assert torch.allclose(a, b, rtol=2e-2, atol=5e-2), (a - b).abs().max()


def test_bad_layers_are_named_with_the_fix():
    model = nn.Sequential(nn.Linear(30, 8), nn.Linear(8, 2))
    msg = r"0 \(Linear 30->8\) has in_features=30, not a multiple of 4.*exclude=\['0'\]"
    with pytest.raises(ValueError, match=msg):
        ternarize(model)
    report = ternarize(model, exclude=["0"])
    assert report.layers[0].status == "float (excluded)" and report.layers[1].status == "ternary"
    assert report.layers[1].group_size == 8


def test_tied_head_stays_float_unless_untied():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(16, 8)
            self.mid = nn.Linear(8, 8)
            self.head = nn.Linear(8, 16, bias=False)
            self.head.weight = self.emb.weight
    m = Tied()
    r = ternarize(m)
    assert r.layers[1].status.startswith("float (weight tied with emb.weight")
    m2 = Tied()
    r2 = ternarize(m2, tied="untie")
    assert r2.layers[1].status == "ternary" and isinstance(m2.head, TernaryScaleTensor)


transformers = pytest.importorskip("transformers")


def _lm_roundtrip(model, cls, vocab, tmp_path, rule="counter"):
    """Float pretraining steps, conversion, a few dozen ternary steps (loss falls), dense export, reload."""
    torch.manual_seed(0)
    data = _tokens(8 * 33 * 4, vocab).view(-1, 33)

    def lm_loss(i):
        b = data[(i % 4) * 8:(i % 4) * 8 + 8]
        return model(input_ids=b[:, :-1], labels=b[:, :-1]).loss
    _float_train(model, lm_loss, 30)
    model.eval()
    with torch.no_grad():
        before = float(lm_loss(0))
    report = ternarize(model, group_size=32, update_rule=rule, **({"counter_rate": 0.5} if rule == "counter" else {}))
    assert report.converted
    with torch.no_grad():
        after_conv = float(lm_loss(0))
    model.train()
    losses = []
    for i in range(40):
        loss = lm_loss(i)
        loss.backward()
        arbitor.ternary_step(model)
        losses.append(float(loss))
    assert sum(losses[-5:]) / 5 < losses[0], (before, after_conv, losses)
    model.eval()
    out = tmp_path / "export"
    export(model, out)
    fresh = cls.from_pretrained(out)
    fresh.eval()
    ids = data[:2, :-1]
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, fresh(input_ids=ids).logits
    assert torch.allclose(a, b.float(), rtol=3e-2, atol=3e-2), (a - b).abs().max()
    return before, after_conv, losses


def test_gpt2_with_conv1d_converts_trains_and_reloads(tmp_path):
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=64, n_embd=64, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg)
    _lm_roundtrip(model, transformers.GPT2LMHeadModel, 64, tmp_path)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Conv1D" not in kinds                                   # every projection is ternary
    assert not isinstance(model.lm_head, TernaryScaleTensor)       # tied to wte: kept float (the rule)


def test_llama_converts_trains_reloads_and_packs(tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg)
    _lm_roundtrip(model, transformers.LlamaForCausalLM, 64, tmp_path)
    assert isinstance(model.lm_head, TernaryScaleTensor)
    export(model, tmp_path / "packed", format="packed")
    copy = load_packed(transformers.LlamaForCausalLM(cfg), tmp_path / "packed")
    a, b = model.state_dict(), copy.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert math.isfinite(float(copy(input_ids=torch.zeros(1, 4, dtype=torch.int64)).logits.sum()))


def test_arbitor_trainer_on_a_converted_model_resumes_bit_exactly(tmp_path):
    """A user model and data through arbitor's Trainer (UserTask): it trains, checkpoints, and 3 steps +
    resume + 3 steps equal 6 steps straight."""
    from arbitor.train import Trainer, TrainConfig, UserTask
    from arbitor.train.checkpoint import load_checkpoint
    x, y = _mlp_task()

    def batch_fn(key):
        g = torch.Generator().manual_seed(key)
        i = torch.randint(0, 512, (32,), generator=g)
        return {"x": x[i], "y": y[i]}

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 4))
        ternarize(model, group_size=16, update_rule="counter")
        task = UserTask(batch_fn, lambda m, b: nn.functional.cross_entropy(m(b["x"]), b["y"]),
                        eval_fn=lambda m: {"val_loss": nn.functional.cross_entropy(m(x), y)})
        return model, task

    def trainer(run, steps):
        model, task = build()
        return Trainer(model, task, TrainConfig(steps=steps, batch=32, ctx=1, eval_interval=3, log_interval=1),
                       run_dir=tmp_path / run)
    straight = trainer("a", 6)
    first = straight.evaluate()["val_loss"]
    last = straight.fit(progress=False)["val_loss"]
    assert last < first
    part = trainer("b", 3)
    part.fit(progress=False)
    resumed = trainer("b", 6)
    model_state, _, train_state, other, meta = load_checkpoint(tmp_path / "b" / "checkpoint.safetensors")
    resumed.restore(model_state, train_state, other, meta)
    resumed.fit(progress=False)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_llama_with_embeddings_converted(tmp_path):
    """embeddings=True: the token table becomes a SparseTernaryEmbedding too; trains, exports, reloads, packs."""
    from arbitor.ternary import SparseTernaryEmbedding
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    report = ternarize(model, group_size=32, embeddings=True)
    assert isinstance(model.model.embed_tokens, SparseTernaryEmbedding)
    assert report.layers[0].name == "model.embed_tokens" and 0 < report.layers[0].rel_error < 0.6
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 0
    data = _tokens(8 * 33, 64).view(8, 33)
    losses = []
    for _ in range(10):
        loss = model(input_ids=data[:, :-1], labels=data[:, :-1]).loss
        loss.backward()
        arbitor.ternary_step(model)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert model.model.embed_tokens.corr_accum.abs().sum() > 0          # the table voted
    model.eval()
    export(model, tmp_path / "dense")
    fresh = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "dense").eval()
    with torch.no_grad():
        a, b = model(input_ids=data[:2, :-1]).logits, fresh(input_ids=data[:2, :-1]).logits
    assert torch.allclose(a, b.float(), rtol=3e-2, atol=3e-2), (a - b).abs().max()
    export(model, tmp_path / "packed", format="packed")
    torch.manual_seed(1)
    copy = load_packed(transformers.LlamaForCausalLM(cfg), tmp_path / "packed")
    sa, sb = model.state_dict(), copy.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_transformers_generate_runs_on_a_converted_model():
    """transformers' own generate() drives the converted layers (greedy: the same tokens twice)."""
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ternarize(model, group_size=32)
    ids = torch.tensor([[1, 2, 3, 4]])
    a = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    b = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert a.shape == (1, 10) and torch.equal(a, b)
