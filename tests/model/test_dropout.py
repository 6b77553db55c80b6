"""``ModelConfig.dropout``: nanoGPT's dropout (embedding output, attention probabilities, the attention and MLP
residual branches) in training mode only; none at all -- no op, no random draw -- at 0 (the golden fingerprints,
tests/test_golden.py, pin that the default computes exactly what it did before dropout existed)."""
import pytest
import torch

from arbitor.cli import main as cli_main
from arbitor.model.attention import KVCache
from arbitor.model.config import ConfigError, ModelConfig, preset
from arbitor.model.text import ArbitorLM

IDX = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


def _model(dropout: float, **kw) -> ArbitorLM:
    torch.manual_seed(0)
    return ArbitorLM(preset("tiny", dropout=dropout, **kw))


@pytest.mark.parametrize("linear", ["ternary", "dense", "bitnet"])
def test_dropout_acts_in_training_only(linear):
    plain, drop = _model(0.0, linear=linear), _model(0.2, linear=linear)
    sd_a, sd_b = plain.state_dict(), drop.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)   # no new state
    with torch.no_grad():
        plain.eval()
        drop.eval()
        assert torch.equal(plain(IDX)[0], drop(IDX)[0])                # eval: identical outputs
        plain.train()
        drop.train()
        torch.manual_seed(1)
        a = drop(IDX)[0]
        torch.manual_seed(1)
        b = drop(IDX)[0]
        c = drop(IDX)[0]
        assert torch.equal(a, b) and not torch.equal(b, c)             # masks come from torch's RNG
        assert not torch.equal(a, plain(IDX)[0])                        # training outputs change
        # a cached (decoding) forward never drops, even in training mode
        assert torch.equal(drop.hidden(IDX, KVCache()), plain.hidden(IDX, KVCache()))


def test_dropout_zero_draws_no_random_numbers():
    m = _model(0.0)
    m.train()
    state = torch.get_rng_state()
    _, loss = m(IDX, IDX)
    loss.backward()
    assert torch.equal(torch.get_rng_state(), state)
    drop = _model(0.2)
    drop.train()
    _, loss = drop(IDX, IDX)
    assert not torch.equal(torch.get_rng_state(), state)


def test_dropout_with_activation_checkpointing_recomputes_the_same_masks():
    """The recompute restores the RNG state, so the gradient equals the one without checkpointing."""
    grads = []
    for ckpt in (False, True):
        m = _model(0.3, linear="dense", activation_checkpointing=ckpt)
        m.train()
        torch.manual_seed(5)
        _, loss = m(IDX, IDX)
        loss.backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(*grads))


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan"), True, "0.1"])
def test_out_of_range_dropout_is_a_one_line_config_error(bad):
    with pytest.raises(ConfigError) as err:
        ModelConfig(dropout=bad)
    assert str(err.value).startswith("dropout must be in [0, 1), got") and "\n" not in str(err.value)
    assert ModelConfig.from_dict(ModelConfig(dropout=0.2).to_dict()).dropout == 0.2


@pytest.mark.parametrize("value,message", [("1.0", "dropout must be in [0, 1), got 1.0"),
                                           ("1.5", "dropout must be in [0, 1), got 1.5"),
                                           ("-0.5", "argument --dropout: must be >= 0, got -0.5")])
def test_cli_dropout_out_of_range_exits_2_with_one_line(tmp_path, capsys, value, message):
    rc = cli_main(["train", "--steps", "1", "--batch", "2", "--ctx", "8", "--dropout", value, "--device", "cpu",
                   "--run", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().count("\n") == 0 and message in err
