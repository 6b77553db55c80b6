"""Video data for the ``video`` modality: grayscale clips float32 ``[N, F, H, W]`` in ``[0, 1]``.

Default (offline): ``moving_digits()`` -- 256 clips of 8 frames on a 16x16 canvas, each an 8x8
digit from the image default (``image.load_images()``: scikit-learn digits or the synthetic ones)
moving with a seeded constant velocity (each component in {-1, 0, +1} px/frame, not both 0) and
bouncing off the borders (seed 0).

``--video-data DIR`` accepts, sorted by path:

* ``.npy`` files holding one clip ``[F, H, W]`` or several ``[N, F, H, W]`` (uint8 -> /255, float
  values clipped to [0, 1]);
* sub-folders of PNG/JPEG frames, one clip per sub-folder (frames in sorted file order).

Frames are resized to ``size x size`` (default 16) and clips cut/required to ``frames`` frames (a
longer clip gives several clips). Errors (``DataError``) name the path: missing or empty folder,
an unreadable image, a ``.npy`` of the wrong shape, a clip shorter than ``frames``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError
from .image import IMAGE_SUFFIXES, load_images, read_image

__all__ = ["load_video", "moving_digits"]


def moving_digits(n_clips: int = 256, frames: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Deterministic moving-digit clips float32 ``[n_clips, frames, size, size]`` (module doc)."""
    digits = load_images(None, 8).images.numpy()
    d = digits.shape[-1]
    if size < d:
        raise DataError(f"moving digits need size >= {d}, got {size}")
    rng = np.random.default_rng(seed)
    out = np.zeros((n_clips, frames, size, size), dtype=np.float32)
    span = size - d
    for i in range(n_clips):
        img = digits[int(rng.integers(0, len(digits)))]
        y, x = int(rng.integers(0, span + 1)), int(rng.integers(0, span + 1))
        while True:
            vy, vx = int(rng.integers(-1, 2)), int(rng.integers(-1, 2))
            if vy or vx:
                break
        for f in range(frames):
            out[i, f, y:y + d, x:x + d] = img
            if not 0 <= y + vy <= span:
                vy = -vy
            if not 0 <= x + vx <= span:
                vx = -vx
            y, x = y + vy, x + vx
    return torch.from_numpy(out)


def _cut(clip: np.ndarray, frames: int, size: int, where: Path) -> list[np.ndarray]:
    if clip.shape[0] < frames:
        raise DataError(f"{where}: clip has {clip.shape[0]} frames, need at least {frames}")
    t = torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32))
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return [t[s:s + frames].numpy() for s in range(0, t.shape[0] - frames + 1, frames)]


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable .npy video file {path}: {exc}") from None
    if arr.ndim not in (3, 4):
        raise DataError(f"{path}: a video .npy must be [F, H, W] or [N, F, H, W], got shape {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.number):
        arr = np.clip(arr.astype(np.float32), 0.0, 1.0)
    else:
        raise DataError(f"{path}: video .npy must be numeric, got dtype {arr.dtype}")
    return arr if arr.ndim == 4 else arr[None]


def load_video(path: Optional[Union[str, os.PathLike]] = None, frames: int = 8,
               size: int = 16) -> tuple[torch.Tensor, str]:
    """``(clips [N, frames, size, size], source_name)`` (module doc)."""
    if path is None:
        return moving_digits(frames=frames, size=size), f"moving digits (256 clips x {frames} frames, {size}x{size})"
    p = Path(path)
    if not p.exists():
        raise DataError(f"video data path not found: {p}")
    npys = [p] if p.is_file() else sorted(f for f in p.rglob("*.npy") if f.is_file())
    clips: list[np.ndarray] = []
    for f in npys:
        for c in _load_npy(f):
            clips.extend(_cut(c, frames, size, f))
    if p.is_dir():
        for sub in sorted(d for d in p.rglob("*") if d.is_dir()):
            imgs = sorted(f for f in sub.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if imgs:
                clip = np.stack([read_image(f, size) for f in imgs])
                clips.extend(_cut(clip, frames, size, sub))
    if not clips:
        raise DataError(f"video data folder has no .npy clips or sub-folders of PNG/JPEG frames: {p}")
    return torch.from_numpy(np.stack(clips)), f"{len(clips)} clip(s) from {p}"
