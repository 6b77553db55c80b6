"""Image data for the ``image`` modality: grayscale images as float32 ``[N, H, W]`` in ``[0, 1]``.

Default (offline), in this order:

1. scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1797 images,
   8x8, values 0..16 -> divided by 16) when scikit-learn is importable (it ships the data inside the
   wheel; no download). scikit-learn is a dependency of arbitor, so this is the default.
2. otherwise ``synthetic_digits()``: a deterministic set of 8x8 digit images drawn from a built-in
   3x5 bitmap font (digits 0-9), each glyph scaled to 6x8 / 5x7 / 4x6, shifted by up to one pixel,
   with seeded stroke-intensity jitter and blur (1797 images, seed 0). Same shape and value range as
   the scikit-learn digits.

``source_name`` of the returned ``ImageSet`` says which one was used.

``--image-data DIR``: every ``.png``/``.jpg``/``.jpeg`` file under ``DIR`` (recursive, sorted), read
with Pillow, converted to grayscale and resized to ``size x size`` (default 8; bilinear). Errors
(``DataError``) name the path: missing folder, a folder without images, an unreadable image.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .errors import DataError

__all__ = ["ImageSet", "load_images", "synthetic_digits", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# 3x5 bitmap font, rows top to bottom ("#" = ink)
_FONT = {
    0: ["###", "#.#", "#.#", "#.#", "###"], 1: [".#.", "##.", ".#.", ".#.", "###"],
    2: ["###", "..#", "###", "#..", "###"], 3: ["###", "..#", ".##", "..#", "###"],
    4: ["#.#", "#.#", "###", "..#", "..#"], 5: ["###", "#..", "###", "..#", "###"],
    6: ["###", "#..", "###", "#.#", "###"], 7: ["###", "..#", ".#.", ".#.", ".#."],
    8: ["###", "#.#", "###", "#.#", "###"], 9: ["###", "#.#", "###", "..#", "###"],
}


@dataclass
class ImageSet:
    """``images`` float32 ``[N, H, W]`` in [0, 1]; ``source_name`` describes where they came from."""

    images: torch.Tensor
    source_name: str


def synthetic_digits(n: int = 1797, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Deterministic digit images float32 ``[n, size, size]`` in [0, 1] (module doc)."""
    if size < 6:
        raise DataError(f"synthetic digits need size >= 6, got {size}")
    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size), dtype=np.float32)
    glyphs = {d: np.array([[c == "#" for c in row] for row in rows], dtype=np.float32) for d, rows in _FONT.items()}
    for i in range(n):
        g = glyphs[i % 10]
        gh = int(rng.integers(size - 2, size + 1))   # glyph height in pixels
        gw = max(3, int(round(gh * 0.7)))
        ys = (np.arange(gh) * 5 // gh).clip(0, 4)
        xs = (np.arange(gw) * 3 // gw).clip(0, 2)
        img = g[np.ix_(ys, xs)] * rng.uniform(0.6, 1.0)
        canvas = np.zeros((size + 2, size + 2), dtype=np.float32)
        oy = (size + 2 - gh) // 2 + int(rng.integers(-1, 2))
        ox = (size + 2 - gw) // 2 + int(rng.integers(-1, 2))
        oy, ox = min(max(oy, 0), size + 2 - gh), min(max(ox, 0), size + 2 - gw)
        canvas[oy:oy + gh, ox:ox + gw] = img
        # 3x3 blur with seeded weight, then crop the 1-pixel margin
        k = rng.uniform(0.05, 0.2)
        blur = canvas.copy()
        blur[1:-1, 1:-1] = (1 - 4 * k) * canvas[1:-1, 1:-1] + k * (canvas[:-2, 1:-1] + canvas[2:, 1:-1]
                                                                   + canvas[1:-1, :-2] + canvas[1:-1, 2:])
        out[i] = np.clip(blur[1:-1, 1:-1] + rng.normal(0, 0.03, (size, size)), 0.0, 1.0)
    return torch.from_numpy(out)


def _sklearn_digits() -> Optional[torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return None
    return torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)


def default_images() -> ImageSet:
    """The offline default: scikit-learn digits if importable, else ``synthetic_digits()``."""
    digits = _sklearn_digits()
    if digits is not None:
        return ImageSet(digits, "sklearn.datasets.load_digits (1797 x 8x8)")
    return ImageSet(synthetic_digits(), "arbitor synthetic digits (1797 x 8x8, seed 0; scikit-learn not installed)")


def image_files(folder: Union[str, os.PathLike]) -> list[Path]:
    """Sorted image files under ``folder``; ``DataError`` if the folder is missing or has none."""
    p = Path(folder)
    if not p.exists():
        raise DataError(f"image data folder not found: {p}")
    if not p.is_dir():
        raise DataError(f"image data path is not a folder: {p}")
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"image data folder has no PNG/JPEG files: {p}")
    return files


def read_image(path: Path, size: int) -> np.ndarray:
    """One image file -> float32 ``[size, size]`` in [0, 1] (grayscale, bilinear resize)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im = im.convert("L").resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"unreadable image {path}: {' '.join(str(exc).split())[:200]}") from None


def load_images(path: Optional[Union[str, os.PathLike]] = None, size: int = 8) -> ImageSet:
    """Images float32 ``[N, size, size]``: the default set (``path=None``) or a folder of PNG/JPEG."""
    if path is None:
        s = default_images()
        if s.images.shape[-1] != size:
            imgs = torch.nn.functional.interpolate(s.images[:, None], size=(size, size), mode="bilinear",
                                                   align_corners=False)[:, 0].clamp(0, 1)
            s = ImageSet(imgs.contiguous(), s.source_name + f" resized to {size}x{size}")
        return s
    files = image_files(path)
    arr = np.stack([read_image(f, size) for f in files])
    return ImageSet(torch.from_numpy(arr), f"{len(files)} images from {path}")
