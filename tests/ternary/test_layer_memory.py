"""The backward of a large layer never holds a full float grad_W or W_eff."""
import torch

from arbitor.ternary.layer import TernaryScaleTensor
from arbitor.train.memory import LiveTensorTracker


def test_backward_peak_is_far_below_a_full_grad_W(monkeypatch):
    monkeypatch.setenv("ARB_TORCH_BLOCK_ELEMS", str(1 << 18))  # 1 MiB float32 tiles
    K = N = 2048
    layer = TernaryScaleTensor(K, N, group_size=64, seed=0)
    x = torch.randn(32, K, requires_grad=True)
    grad_y = torch.randn(32, N)
    y = layer(x)
    full_grad_W = N * K * 4  # 16 MiB
    with LiveTensorTracker() as mem:
        y.backward(grad_y)
    assert x.grad is not None and layer.pending_ballots == 1
    assert mem.largest_bytes < full_grad_W / 8, mem.largest_bytes
    assert mem.peak_bytes < full_grad_W / 2, mem.peak_bytes


def test_tracker_sees_a_full_matrix_when_one_is_made():
    # the tracker must be able to fail: a dense grad_W computed explicitly is seen
    K = N = 1024
    x = torch.randn(16, K)
    g = torch.randn(16, N)
    with LiveTensorTracker() as mem:
        gw = g.t() @ x
    assert mem.largest_bytes >= N * K * 4
    live_with_gw = mem.live_bytes
    del gw
    assert live_with_gw - mem.live_bytes == N * K * 4  # freeing is seen too
