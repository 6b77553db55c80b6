"""Modality loaders: offline defaults, user files, and errors that name the file."""
import wave

import numpy as np
import pytest
import torch

from arbitor.data import DataError
from arbitor.data.audio import load_audio, read_wav, synthetic_audio
from arbitor.data.code import load_code
from arbitor.data.image import load_images, synthetic_digits
from arbitor.data.video import load_video, moving_digits


def _write_wav(path, data: np.ndarray, rate: int, width: int = 2, channels: int = 1):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data.tobytes())


def test_defaults_are_offline_and_deterministic():
    code = load_code(max_bytes=100_000)
    assert "def " in code and code.startswith("# file: ") and len(code.encode()) <= 100_000
    imgs = load_images()
    assert imgs.images.shape[1:] == (8, 8) and imgs.images.shape[0] >= 1000
    assert 0.0 <= float(imgs.images.min()) and float(imgs.images.max()) <= 1.0
    assert torch.equal(synthetic_digits(20), synthetic_digits(20))
    clips, _ = load_audio()
    assert len(clips) == 64 and clips[0].shape == (4000,) and float(clips[0].abs().max()) <= 0.9 + 1e-6
    assert torch.equal(synthetic_audio(2)[1], synthetic_audio(2)[1])
    vids = moving_digits(n_clips=4)
    assert vids.shape == (4, 8, 16, 16)
    # the digit moves: consecutive frames differ, but carry the same ink
    assert not torch.equal(vids[0, 0], vids[0, 1])
    assert torch.allclose(vids[0, 0].sum(), vids[0, 1].sum())


def test_user_code_and_images(tmp_path):
    from PIL import Image
    (tmp_path / "code" / "pkg").mkdir(parents=True)
    (tmp_path / "code" / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "code" / "b.py").write_text("y = 2\n")
    text = load_code(tmp_path / "code")
    assert "x = 1" in text and "y = 2" in text
    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 12), 60 * i, dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
    s = load_images(tmp_path / "img", 8)
    assert s.images.shape == (3, 8, 8)
    assert abs(float(s.images[2].mean()) - 120 / 255) < 1e-3


def test_wav_reading_mixes_and_resamples(tmp_path):
    t = np.arange(16000) / 16000
    left = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    stereo = np.stack([left, left], 1)
    _write_wav(tmp_path / "a.wav", stereo, 16000, channels=2)
    x = read_wav(tmp_path / "a.wav", 8000)
    assert x.shape == (8000,)
    assert abs(float(x.abs().max()) - 0.5) < 0.01
    clips, src = load_audio(tmp_path)
    assert len(clips) == 1 and "1 WAV" in src


def test_video_npy_and_frame_folders(tmp_path):
    from PIL import Image
    np.save(tmp_path / "clip.npy", (np.random.default_rng(0).random((16, 16, 16)) * 255).astype(np.uint8))
    (tmp_path / "frames").mkdir()
    for i in range(8):
        Image.fromarray(np.full((32, 32), 30 * i, dtype=np.uint8)).save(tmp_path / "frames" / f"{i:03d}.png")
    clips, src = load_video(tmp_path, frames=8, size=16)
    assert clips.shape == (3, 8, 16, 16)                            # 16-frame npy -> 2 clips, + 1 frame folder
    assert float(clips[2, 7].mean()) == pytest.approx(210 / 255, abs=1e-3)


@pytest.mark.parametrize("loader", [load_code, load_images, load_audio, load_video])
def test_empty_folder_names_the_folder(tmp_path, loader):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    with pytest.raises(DataError, match="nothing_here"):
        loader(empty)


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "good.png").write_bytes(b"")  # placeholder replaced below
    from PIL import Image
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match=r"unreadable image .*broken\.jpg"):
        load_images(tmp_path)


def test_wrong_wav_format_names_the_file(tmp_path):
    (tmp_path / "notwav.wav").write_bytes(b"RIFX....garbage")
    with pytest.raises(DataError, match=r"notwav\.wav is not an integer-PCM WAV"):
        read_wav(tmp_path / "notwav.wav")
    # IEEE-float WAV (format tag 3): the stdlib reader refuses it, we name the file
    data = np.zeros(100, dtype=np.float32).tobytes()
    header = (b"RIFF" + (36 + len(data)).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
              + (3).to_bytes(2, "little") + (1).to_bytes(2, "little") + (8000).to_bytes(4, "little")
              + (32000).to_bytes(4, "little") + (4).to_bytes(2, "little") + (32).to_bytes(2, "little")
              + b"data" + len(data).to_bytes(4, "little"))
    (tmp_path / "float.wav").write_bytes(header + data)
    with pytest.raises(DataError, match=r"float\.wav is not an integer-PCM WAV"):
        load_audio(tmp_path)


def test_bad_video_npy_shape_names_the_file(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((5, 5)))
    with pytest.raises(DataError, match=r"flat\.npy.*\[F, H, W\]"):
        load_video(tmp_path)
