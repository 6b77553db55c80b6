"""Audio data for the ``audio`` modality: mono waveforms float32 in ``[-1, 1]``.

Default (offline, no real recordings ship with Python or arbitor's dependencies):
``synthetic_audio()`` -- 64 deterministic clips of 0.5 s at 8 kHz (seed 0). Each clip is one
note: a fundamental drawn log-uniformly in [110, 880] Hz with 1-3 harmonics (amplitudes 1, 1/2,
1/3), an attack/decay envelope, an optional linear pitch glide of up to +-20 %, and a little
seeded noise (std 0.01); peak-normalised to 0.9.

``--audio-data DIR``: every ``.wav`` under ``DIR`` (recursive, sorted), read with the standard
library's ``wave`` module: integer PCM with 8-, 16-, 24- or 32-bit samples, any channel count
(mixed down to mono), any sample rate (linearly resampled to ``sample_rate``). Anything else --
a float or compressed WAV, a file that is not RIFF/WAVE -- raises ``DataError`` naming the file.
"""
from __future__ import annotations

import os
import wave
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .errors import DataError

__all__ = ["load_audio", "read_wav", "synthetic_audio", "DEFAULT_SAMPLE_RATE"]

DEFAULT_SAMPLE_RATE = 8000


def synthetic_audio(n_clips: int = 64, seconds: float = 0.5, sample_rate: int = DEFAULT_SAMPLE_RATE,
                    seed: int = 0) -> list[torch.Tensor]:
    """Deterministic synthetic notes (module doc): a list of float32 ``[seconds * sample_rate]`` clips."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n, dtype=np.float64) / sample_rate
    clips = []
    for _ in range(n_clips):
        f0 = float(np.exp(rng.uniform(np.log(110.0), np.log(880.0))))
        glide = rng.uniform(-0.2, 0.2) if rng.random() < 0.5 else 0.0
        freq = f0 * (1.0 + glide * t / seconds)
        phase = 2 * np.pi * np.cumsum(freq) / sample_rate
        wav = sum(np.sin(h * phase) / h for h in range(1, int(rng.integers(1, 4)) + 1))
        attack = max(1, int(rng.uniform(0.005, 0.05) * sample_rate))
        env = np.minimum(1.0, np.arange(n) / attack) * np.exp(-t * rng.uniform(1.0, 6.0))
        wav = wav * env + rng.normal(0, 0.01, n)
        wav = 0.9 * wav / max(np.abs(wav).max(), 1e-9)
        clips.append(torch.from_numpy(wav.astype(np.float32)))
    return clips


def read_wav(path: Union[str, os.PathLike], sample_rate: int = DEFAULT_SAMPLE_RATE) -> torch.Tensor:
    """One PCM WAV file -> mono float32 ``[n_samples]`` in [-1, 1] at ``sample_rate``."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            ch, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError) as exc:
        raise DataError(f"{path} is not an integer-PCM WAV file ({exc}); convert it to 16-bit PCM WAV") from None
    except OSError as exc:
        raise DataError(f"cannot read WAV file {path}: {exc}") from None
    if width not in (1, 2, 3, 4):
        raise DataError(f"{path}: unsupported WAV sample width {width} bytes (need 1-4 byte integer PCM)")
    if width == 3:  # 24-bit little endian -> int32
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        x = (b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8) | (b[:, 2].astype(np.int32) << 16))
        x = np.where(x >= 1 << 23, x - (1 << 24), x).astype(np.float64) / (1 << 23)
    elif width == 1:  # unsigned 8-bit
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    else:
        dt = np.int16 if width == 2 else np.int32
        x = np.frombuffer(raw, dtype=dt).astype(np.float64) / float(1 << (8 * width - 1))
    if x.size == 0:
        raise DataError(f"WAV file has no samples: {path}")
    x = x[: (x.size // ch) * ch].reshape(-1, ch).mean(axis=1)
    if rate != sample_rate:
        n_out = max(1, int(round(x.size * sample_rate / rate)))
        x = np.interp(np.arange(n_out) * (rate / sample_rate), np.arange(x.size), x)
    return torch.from_numpy(x.astype(np.float32))


def load_audio(path: Optional[Union[str, os.PathLike]] = None,
               sample_rate: int = DEFAULT_SAMPLE_RATE) -> tuple[list[torch.Tensor], str]:
    """``(clips, source_name)``: the synthetic default (``path=None``) or every WAV under a folder / one file."""
    if path is None:
        return synthetic_audio(sample_rate=sample_rate), f"arbitor synthetic notes (64 x 0.5 s at {sample_rate} Hz, seed 0)"
    p = Path(path)
    if not p.exists():
        raise DataError(f"audio data path not found: {p}")
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() == ".wav")
    if not files:
        raise DataError(f"audio data folder has no .wav files: {p}")
    return [read_wav(f, sample_rate) for f in files], f"{len(files)} WAV file(s) from {p}"
