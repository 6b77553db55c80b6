"""Patch streams: patchify / unpatchify / audio framing."""
import torch

from arbitor.data.patches import frame_audio, patchify, unpatchify


def test_patchify_round_trip_and_layout():
    imgs = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 8, 8)
    p = patchify(imgs, 4)
    assert p.shape == (8, 16)
    assert torch.equal(p[0], imgs[0, :4, :4].reshape(-1))          # first patch = top-left block
    assert torch.equal(p[1], imgs[0, :4, 4:].reshape(-1))          # raster order
    assert torch.equal(unpatchify(p, 8, 8, 4), imgs)
    frames = frame_audio([torch.arange(40.0), torch.arange(5.0)], 16)
    assert frames.shape == (2, 16) and torch.equal(frames[1], torch.arange(16.0, 32.0))
