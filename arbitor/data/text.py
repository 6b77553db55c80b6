"""Text data: vocabularies, the embedded default corpus, and batching.

Vocabularies
------------
* ``ByteVocab`` (default): the 256 byte values of the UTF-8 encoding. Every text
  is representable; one token is one byte, so nats/token and bits/byte are the
  same quantity up to the factor ``ln 2``.
* ``CharVocab``: the sorted set of Unicode characters of the training text
  (``--vocab char``). Smaller vocabularies for small corpora; unseen characters at
  sampling time raise a clear error.

Default corpus
--------------
``default_corpus()`` is real English technical prose that every machine with
Python has offline: the docstrings of the running interpreter's own standard
library (every top-level ``*.py`` module of ``sysconfig.get_paths()['stdlib']``,
in sorted file order, module/class/function docstrings in source order, joined by
blank lines). It is about 0.9 MB on CPython 3.11 and costs a few seconds to build
(cached per process). No download is involved.

``bundled_text()`` is a small text file shipped with the package (package data)
for tests and quick smoke runs.

Batches
-------
``TextDataset`` holds the token ids of a train and a validation split (the last
``val_fraction`` of the text) and draws random windows with its own
``torch.Generator`` so that the data order is part of the checkpointed state.
"""
from __future__ import annotations

import ast
import functools
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from .errors import DataError

__all__ = ["ByteVocab", "CharVocab", "Vocab", "default_corpus", "bundled_text", "load_text",
           "build_vocab", "TextDataset", "BUNDLED_TEXT_PATH"]

BUNDLED_TEXT_PATH = Path(__file__).with_name("sample.txt")


class ByteVocab:
    """UTF-8 bytes as tokens: ``vocab_size == 256``."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> torch.Tensor:
        """``str -> int64 [n_bytes]``."""
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).to(torch.int64)

    def decode(self, ids) -> str:
        """Token ids -> text (invalid UTF-8 byte sequences become U+FFFD)."""
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def to_json(self) -> dict:
        return {"kind": "byte"}


class CharVocab:
    """Unicode characters of a text as tokens, sorted by code point."""

    kind = "char"

    def __init__(self, chars: str) -> None:
        if not chars:
            raise DataError("a char vocabulary needs at least one character")
        self.chars = "".join(sorted(set(chars)))
        self.vocab_size = len(self.chars)
        self._index = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> torch.Tensor:
        """``str -> int64 [n_chars]``; raises ``DataError`` on a character outside the vocabulary."""
        try:
            return torch.tensor([self._index[c] for c in text], dtype=torch.int64)
        except KeyError as exc:
            raise DataError(f"character {exc.args[0]!r} is not in this run's char vocabulary "
                            f"({self.vocab_size} characters)") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_json(self) -> dict:
        return {"kind": "char", "chars": self.chars}


Vocab = Union[ByteVocab, CharVocab]


def build_vocab(kind: str, text: Optional[str] = None, spec: Optional[dict] = None) -> Vocab:
    """A vocabulary from its JSON ``spec`` (a checkpoint's) or from ``kind`` (+ the training text for ``char``)."""
    if spec is not None:
        kind = spec.get("kind", "")
        if kind == "byte":
            return ByteVocab()
        if kind == "char":
            return CharVocab(spec["chars"])
        raise DataError(f"unknown vocabulary spec {spec!r}")
    if kind == "byte":
        return ByteVocab()
    if kind == "char":
        if text is None:
            raise DataError("a char vocabulary is built from the training text; none given")
        return CharVocab(text)
    raise DataError(f"unknown vocabulary {kind!r}; choose 'byte' or 'char'")


@functools.lru_cache(maxsize=1)
def default_corpus() -> str:
    """The standard library's docstrings as one text (see module doc). Deterministic per Python version."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    parts.append(doc)
    text = "\n\n".join(parts)
    if len(text) < 10_000:
        raise DataError(f"the embedded default corpus (docstrings of {stdlib}) is only {len(text)} characters; "
                        "this Python installation has no standard-library sources -- pass --text-data PATH")
    return text


def bundled_text() -> str:
    """The small text file shipped with the package (``arbitor/data/sample.txt``)."""
    return BUNDLED_TEXT_PATH.read_text(encoding="utf-8")


def load_text(path: Optional[Union[str, os.PathLike]]) -> str:
    """Read a UTF-8 text file; ``None`` gives the default corpus. Raises ``DataError`` with the reason."""
    if path is None:
        return default_corpus()
    p = Path(path)
    if not p.exists():
        raise DataError(f"text data file not found: {p}")
    if not p.is_file():
        raise DataError(f"text data path is not a file: {p}")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p} is not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                        "convert it to UTF-8 first") from None
    if not text:
        raise DataError(f"text data file is empty: {p}")
    return text


@dataclass
class Batch:
    """``x``, ``y``: int64 ``[batch, ctx]``; ``y`` is ``x`` shifted by one token."""

    x: torch.Tensor
    y: torch.Tensor


class TextDataset:
    """Train/validation token streams and a seeded window sampler.

    Args:
        ids: int64 ``[n_tokens]`` token ids of the whole text.
        ctx: window length (tokens per training example).
        val_fraction: share of tokens at the end held out for validation.
        seed: seed of the sampler's ``torch.Generator`` (data order).
    """

    def __init__(self, ids: torch.Tensor, ctx: int, val_fraction: float = 0.1, seed: int = 0,
                 n_bytes: Optional[int] = None) -> None:
        if ctx < 1:
            raise DataError(f"ctx must be >= 1, got {ctx}")
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
        n = int(ids.numel())
        n_val = int(n * val_fraction)
        n_train = n - n_val
        if n_train < ctx + 1 or n_val < ctx + 1:
            raise DataError(f"ctx={ctx} is too large for this text: {n} tokens split into {n_train} train / "
                            f"{n_val} validation tokens, and each split needs at least ctx+1={ctx + 1}; "
                            "lower --ctx or give more text")
        self.ctx = ctx
        self.train = ids[:n_train].contiguous()
        self.val = ids[n_train:].contiguous()
        # bytes per token of the validation split, for bits/byte (1.0 for the byte vocabulary)
        self.val_bytes_per_token = (n_bytes / n) if n_bytes else 1.0
        self.text_sha256: Optional[str] = None  # digest of the source text (set by the trainer; checked on resume)
        self.generator = torch.Generator().manual_seed(int(seed))

    def batch(self, batch_size: int, split: str = "train", generator: Optional[torch.Generator] = None) -> Batch:
        """Random windows: ``x, y`` int64 ``[batch_size, ctx]``."""
        data = self.train if split == "train" else self.val
        gen = generator if generator is not None else self.generator
        starts = torch.randint(0, data.numel() - self.ctx, (batch_size,), generator=gen)
        offs = torch.arange(self.ctx + 1)
        win = data[starts.unsqueeze(1) + offs]
        return Batch(win[:, :-1], win[:, 1:])

    def get_state(self) -> torch.Tensor:
        """The sampler's RNG state (uint8 tensor) for checkpoints."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
