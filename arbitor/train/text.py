"""The text task: next-token prediction on one UTF-8 text (``arbitor train``).

Data: ``TextConfig.text_data`` (default: the embedded standard-library docstring corpus), byte or
character vocabulary, the last ``val_fraction`` held out. Every step draws ``batch`` random windows of
``ctx + 1`` tokens with the dataset's own seeded generator (checkpointed as ``rng.data``); validation
uses fixed windows (a generator seeded from the run's seed), so evaluations compare across steps and
runs. Metrics: ``val_loss`` (nats/token) and ``val_bpb`` (bits per byte of UTF-8).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..data import Batch, TextDataset, Vocab, build_vocab, load_text
from .components import LossComponent
from .settings import check_settings, setting
from .task import Task, to_device

__all__ = ["TextConfig", "TextTask", "text_component", "build_dataset"]



@dataclass
class TextConfig:
    text_data: Optional[str] = setting(None, "UTF-8 text file (default: the embedded Python standard-library "
                                             "docstring corpus)")
    vocab: str = setting("byte", "token vocabulary", choices=("byte", "char"))
    max_chars: Optional[int] = setting(None, "use only the first N characters of the text (default: all)",
                                       positive=True)
    val_fraction: float = setting(0.1, "tail of the text held out for validation", low=0.001, high=0.5,
                                  flag=False)

    def __post_init__(self) -> None:
        check_settings(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def text_component(weight: int = 1) -> LossComponent:
    """Next-token cross-entropy of the text decoder (nats/token), sharing the step's hidden states."""

    def fn(model: nn.Module, batch: Batch, shared: dict) -> torch.Tensor:
        if "hidden" not in shared:
            shared["hidden"] = model.hidden(batch.x)
        return model.decoders["text"].loss(shared["hidden"], batch.y)

    return LossComponent("text", fn, weight)


def build_dataset(cfg: TextConfig, ctx: int, seed: int, vocab_spec: Optional[dict] = None) -> tuple[Vocab, TextDataset]:
    """Load the text, build (or restore) the vocabulary and split: ``(vocab, TextDataset)``.

    ``dataset.text_sha256`` is the digest of the text (a resumed run must train on the same text).
    """
    text = load_text(cfg.text_data)
    if cfg.max_chars:
        text = text[:cfg.max_chars]
    vocab = build_vocab(cfg.vocab, text, vocab_spec)
    ids = vocab.encode(text)
    data = TextDataset(ids, ctx, cfg.val_fraction, seed)
    data.text_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    data.val_bytes_per_token = len(vocab.decode(data.val.tolist()).encode("utf-8")) / data.val.numel()
    return vocab, data


class TextTask(Task):
    """Next-token prediction on one text (module doc); ``components`` default to ``[text_component()]``."""

    kind = "text"
    fixed_step = True
    batch_type = Batch

    def __init__(self, cfg: TextConfig, vocab: Vocab, data: TextDataset,
                 components: Optional[list[LossComponent]] = None) -> None:
        self.cfg, self.vocab, self.data = cfg, vocab, data
        self.components = list(components) if components is not None else [text_component()]
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"loss component names must be unique, got {names}")

    def next_batch(self, batch_size: int, device: torch.device) -> tuple[Batch, list[LossComponent]]:
        b = self.data.batch(batch_size)
        return Batch(to_device(b.x, device), to_device(b.y, device)), self.components

    def batch_at(self, batch_size: int, device: torch.device, key: int) -> tuple[Batch, list[LossComponent]]:
        b = self.data.batch(batch_size, "train", torch.Generator().manual_seed(key))
        return Batch(to_device(b.x, device), to_device(b.y, device)), self.components

    def evaluate(self, model: nn.Module, batch_size: int, eval_batches: int, device: torch.device,
                 seed: int) -> dict[str, float]:
        gen = torch.Generator().manual_seed(10_007 + seed)
        total = 0.0
        for _ in range(eval_batches):
            b = self.data.batch(batch_size, "val", gen)
            _, loss = model(b.x.to(device), b.y.to(device))
            total += float(loss)
        nats = total / eval_batches
        return {"val_loss": nats, "val_bpb": nats / math.log(2) / self.data.val_bytes_per_token}

    def format_eval(self, metrics: dict[str, float]) -> str:
        return f"val_loss {metrics['val_loss']:.4f} nats/token, {metrics['val_bpb']:.4f} bits/byte"

    def rng_tensors(self) -> dict[str, torch.Tensor]:
        return {"rng.data": self.data.get_state()}

    def load_rng_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.data.set_state(tensors["rng.data"])

    def config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def checkpoint_state(self) -> dict[str, Any]:
        return {"vocab": self.vocab.to_json(), "text_sha256": self.data.text_sha256}

    def train_tokens(self) -> int:
        return self.data.train.numel()

    def summary(self) -> str:
        return (f"{self.data.train.numel():,} train / {self.data.val.numel():,} val tokens "
                f"({self.cfg.text_data or 'stdlib docstrings'}, {self.cfg.vocab} vocabulary)")
