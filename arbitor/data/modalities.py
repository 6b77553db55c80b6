"""The five modalities of multimodal pretraining and how each one's data is loaded.

``load_modality(name, path, ctx, val_fraction, seed)`` gives a ``TextDataset`` (text, code: UTF-8 bytes)
or a ``PatchDataset`` (image, audio, video). Only the modalities a run uses are ever loaded.

Patch layouts: image 8x8 digits, 4x4 patches (P=16, 4 tokens per image); audio 8 kHz, frames of 16
samples (P=16); video 16x16 frames, 4x4 patches (P=16, 16 tokens per frame). Pixel values ``v`` in [0, 1]
become ``2v - 1``; audio samples stay in [-1, 1].
"""
from __future__ import annotations

from typing import Optional, Union

from .audio import load_audio
from .code import load_code
from .errors import DataError
from .image import load_images
from .patches import PatchDataset, frame_audio, patchify
from .text import ByteVocab, TextDataset, load_text
from .video import load_video

__all__ = ["MODALITIES", "PATCH_MODALITIES", "TEXT_MODALITIES", "load_modality"]

MODALITIES = ("text", "code", "image", "audio", "video")
TEXT_MODALITIES = ("text", "code")
PATCH_MODALITIES = ("image", "audio", "video")
IMAGE_SIZE, IMAGE_PATCH = 8, 4
AUDIO_FRAME = 16
VIDEO_SIZE, VIDEO_PATCH, VIDEO_FRAMES = 16, 4, 8


def load_modality(name: str, path: Optional[str], ctx: int, val_fraction: float, seed: int,
                  max_code_bytes: int = 2_000_000) -> Union[TextDataset, PatchDataset]:
    """Load one modality's data: ``TextDataset`` (text, code) or ``PatchDataset`` (image, audio, video)."""
    if name in ("text", "code"):
        text = load_text(path) if name == "text" else load_code(path, max_code_bytes)
        ids = ByteVocab().encode(text)
        ds = TextDataset(ids, ctx, val_fraction, seed)
        ds.source = path or ("stdlib docstrings" if name == "text" else "stdlib sources")
        return ds
    if name == "image":
        s = load_images(path, IMAGE_SIZE)
        patches = patchify(s.images * 2 - 1, IMAGE_PATCH)
        return PatchDataset(patches, ctx, (IMAGE_SIZE // IMAGE_PATCH) ** 2, val_fraction, seed,
                            (IMAGE_SIZE, IMAGE_SIZE, IMAGE_PATCH), s.source_name)
    if name == "audio":
        clips, src = load_audio(path)
        return PatchDataset(frame_audio(clips, AUDIO_FRAME), ctx, 1, val_fraction, seed, None, src)
    if name == "video":
        clips, src = load_video(path, VIDEO_FRAMES, VIDEO_SIZE)
        frames = clips.reshape(-1, VIDEO_SIZE, VIDEO_SIZE)
        return PatchDataset(patchify(frames * 2 - 1, VIDEO_PATCH), ctx, (VIDEO_SIZE // VIDEO_PATCH) ** 2,
                            val_fraction, seed, (VIDEO_SIZE, VIDEO_SIZE, VIDEO_PATCH), src)
    raise DataError(f"unknown modality {name!r}; modalities: {', '.join(MODALITIES)}")
