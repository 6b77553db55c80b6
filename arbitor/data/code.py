"""Code data: Python source text for the ``code`` modality (byte tokens, like text).

Default (offline): the running interpreter's own standard-library sources -- every top-level
``*.py`` file of ``sysconfig.get_paths()['stdlib']`` in sorted order, each preceded by a
``# file: NAME`` line, joined until ``max_bytes`` (default 2 MB) is reached. Deterministic per
Python version, no download.

``--code-data DIR``: every ``*.py`` file under ``DIR`` (recursive, sorted paths), same layout.
A single ``.py`` (or any UTF-8) file is also accepted. Errors (``DataError``) name the path:
missing path, a folder without ``.py`` files, a file that is not UTF-8.
"""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Optional, Union

from .errors import DataError

__all__ = ["load_code", "default_code_files"]

DEFAULT_MAX_BYTES = 2_000_000


def default_code_files() -> list[Path]:
    """The standard library's top-level ``*.py`` files, sorted."""
    return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def _read_source(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 source (invalid byte 0x{raw[exc.start]:02x} at offset {exc.start})") \
            from None


def load_code(path: Optional[Union[str, os.PathLike]] = None, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Python source as one string (module doc). ``max_bytes`` caps the total (0: no cap)."""
    if path is None:
        files = default_code_files()
        if not files:
            raise DataError(f"no Python sources found in {sysconfig.get_paths()['stdlib']} for the default code "
                            "corpus -- pass --code-data DIR")
        skip_bad = True
    else:
        p = Path(path)
        if not p.exists():
            raise DataError(f"code data path not found: {p}")
        if p.is_file():
            files = [p]
        else:
            files = sorted(f for f in p.rglob("*.py") if f.is_file())
            if not files:
                raise DataError(f"code data folder has no .py files: {p}")
        skip_bad = False
    parts: list[str] = []
    total = 0
    for f in files:
        try:
            src = _read_source(f)
        except (DataError, OSError):
            if skip_bad:   # an odd stdlib file (e.g. a test encoding) is skipped in the default corpus
                continue
            raise
        chunk = f"# file: {f.name}\n{src}\n"
        parts.append(chunk)
        total += len(chunk.encode("utf-8"))
        if max_bytes and total >= max_bytes:
            break
    text = "".join(parts)
    if max_bytes:
        text = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    if not text.strip():
        raise DataError(f"code data is empty: {path if path is not None else 'standard library'}")
    return text
