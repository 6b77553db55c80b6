"""Patch streams: images, audio and video cut into fixed-size patches, and their window sampler.

    image [H, W] --patchify--> patches [n, P]           (P = p*p pixels)
    audio clips  --frame_audio--> frames [n, P]         (P samples each)

``PatchDataset`` holds a train and a validation patch stream and draws windows of ``ctx``
patches aligned to whole images / frames, with its own seeded ``torch.Generator``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .errors import DataError

__all__ = ["patchify", "unpatchify", "frame_audio", "PatchBatch", "PatchDataset"]


def patchify(frames: torch.Tensor, p: int) -> torch.Tensor:
    """``frames [N, H, W]`` -> patches ``[N * (H/p) * (W/p), p*p]`` (frame by frame, raster order)."""
    n, h, w = frames.shape
    if h % p or w % p:
        raise ValueError(f"frame size {h}x{w} is not a multiple of the patch size {p}")
    x = frames.reshape(n, h // p, p, w // p, p).permute(0, 1, 3, 2, 4)
    return x.reshape(-1, p * p).contiguous()


def unpatchify(patches: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """Inverse of ``patchify``: ``[N * (h/p) * (w/p), p*p]`` -> ``[N, h, w]``."""
    x = patches.reshape(-1, h // p, w // p, p, p).permute(0, 1, 3, 2, 4)
    return x.reshape(-1, h, w)


def frame_audio(clips: list[torch.Tensor], frame: int) -> torch.Tensor:
    """Audio clips -> non-overlapping frames ``[n_frames, frame]`` (each clip's tail shorter than a frame dropped)."""
    out = [c[: (c.numel() // frame) * frame].reshape(-1, frame) for c in clips if c.numel() >= frame]
    if not out:
        raise ValueError(f"no audio clip has at least one frame of {frame} samples")
    return torch.cat(out)


@dataclass
class PatchBatch:
    """``patches``: float32 ``[batch, ctx, P]``."""

    patches: torch.Tensor


class PatchDataset:
    """Train/validation patch streams with a seeded window sampler.

    Args:
        patches: float32 ``[n, P]`` in stream order (images / frames / clips one after another).
        ctx: patches per window.
        unit: window starts are multiples of ``unit`` patches (patches per image or frame).
        item_shape: ``(h, w, p)`` for image-like modalities (for the reconstruction grid), else None.
    """

    def __init__(self, patches: torch.Tensor, ctx: int, unit: int = 1, val_fraction: float = 0.1, seed: int = 0,
                 item_shape: Optional[tuple[int, int, int]] = None, source: str = "") -> None:
        n_units = patches.shape[0] // unit
        n_val = max(1, int(n_units * val_fraction)) * unit
        n_train = n_units * unit - n_val
        if n_train < ctx or n_val < ctx:
            raise DataError(f"ctx={ctx} is too large for {source or 'this data'}: {patches.shape[0]} patches split "
                            f"into {n_train} train / {n_val} validation, each needs >= ctx; lower --ctx or give more data")
        self.ctx, self.unit, self.item_shape, self.source = ctx, unit, item_shape, source
        self.train = patches[:n_train].contiguous()
        self.val = patches[n_train:n_train + n_val].contiguous()
        self.patch_dim = patches.shape[1]
        self.generator = torch.Generator().manual_seed(int(seed))

    def batch(self, batch_size: int, split: str = "train", generator: Optional[torch.Generator] = None) -> PatchBatch:
        data = self.train if split == "train" else self.val
        gen = generator if generator is not None else self.generator
        n_starts = (data.shape[0] - self.ctx) // self.unit + 1
        starts = torch.randint(0, n_starts, (batch_size,), generator=gen) * self.unit
        return PatchBatch(data[starts.unsqueeze(1) + torch.arange(self.ctx)])
