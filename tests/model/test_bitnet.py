import torch

from arbitor.model.bitnet import BitLinear, absmax_int8, absmean_ternary


def test_absmean_ternary_has_three_levels():
    w = torch.randn(32, 64)
    q = absmean_ternary(w)
    gamma = w.abs().mean()
    assert set(torch.unique(torch.round(q / gamma)).tolist()) <= {-1.0, 0.0, 1.0}


def test_absmax_int8_error_is_bounded():
    x = torch.randn(5, 7, 64)
    q = absmax_int8(x)
    step = x.abs().amax(-1, keepdim=True) / 127
    assert torch.all((q - x).abs() <= step / 2 + 1e-6)


def test_bitlinear_ste_gradient_and_training():
    torch.manual_seed(0)
    layer = BitLinear(64, 16, seed=1)
    target = torch.randn(16, 64) / 8
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        x = torch.randn(128, 64)
        loss = (layer(x) - x @ target.T).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
