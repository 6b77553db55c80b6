"""Output decoders: hidden states ``[B, T, D]`` -> a modality's predictions and loss.

A decoder is an ``nn.Module`` with a ``modality`` name, ``forward(h) -> logits`` and
``loss(h, targets) -> scalar``. ``DECODERS`` maps a modality to its class; the model builds the
ones its config asks for, and a new modality (code, image, audio tokens...) adds its own class
with ``register_decoder``. Each decoder's loss becomes one ``LossComponent`` in the trainer.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..ternary.step import expect_ballots
from .layers import RMSNorm, make_linear

__all__ = ["Decoder", "TextDecoder", "PatchDecoder", "DECODERS", "register_decoder"]


class Decoder(nn.Module):
    """Interface: ``forward(h [B, T, D]) -> logits [B, T, V]``; ``loss(h, targets [B, T]) -> []``."""

    modality: str = ""

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    chunk_tokens: int = 0  # default chunking of ``loss`` (``ModelConfig.loss_chunk_tokens``)

    def loss(self, h: torch.Tensor, targets: torch.Tensor, chunk_tokens: Optional[int] = None) -> torch.Tensor:
        """Mean cross-entropy in nats per target token.

        ``chunk_tokens > 0`` (and training): head + cross-entropy run over that many tokens at a time,
        each chunk recomputed in backward, so no ``[tokens, vocab]`` logits tensor is ever whole. Each
        chunk's backward through a ternary head is one ballot of that head.
        """
        chunk_tokens = self.chunk_tokens if chunk_tokens is None else chunk_tokens
        h2 = h.reshape(-1, h.shape[-1])
        t2 = targets.reshape(-1)
        if chunk_tokens <= 0 or h2.shape[0] <= chunk_tokens or not torch.is_grad_enabled():
            logits = self(h2)
            return F.cross_entropy(logits.float(), t2)
        total = h2.new_zeros((), dtype=torch.float32)
        expect_ballots(self)    # outside the checkpoints (TernaryScaleTensor.expect_ballot)
        for i in range(0, h2.shape[0], chunk_tokens):
            total = total + checkpoint(self._chunk_loss_sum, h2[i:i + chunk_tokens], t2[i:i + chunk_tokens],
                                       use_reentrant=False, preserve_rng_state=False)
        return total / h2.shape[0]

    def _chunk_loss_sum(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(h).float(), targets, reduction="sum")


class TextDecoder(Decoder):
    """Next-token head: ``RMSNorm`` then a ``[D] -> [vocab_size]`` projection (ternary by default)."""

    modality = "text"

    def __init__(self, cfg, seed: int) -> None:
        super().__init__()
        self.norm = RMSNorm()
        self.head = make_linear(cfg, cfg.d_model, cfg.vocab_size, seed)
        self.chunk_tokens = cfg.loss_chunk_tokens

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(h))


class PatchDecoder(Decoder):
    """Reconstructs a patch from the hidden state at its code: ``h [B, T, D] -> [B, T, patch_dim]``.

    ``RMSNorm`` then a ternary ``[D] -> [patch_dim]`` projection (``cfg.linear``); ``loss`` is the
    mean squared error against the true patches ``[B, T, patch_dim]``.
    """

    def __init__(self, cfg, seed: int, modality: str, patch_dim: int) -> None:
        super().__init__()
        self.modality = modality
        self.patch_dim = patch_dim
        self.norm = RMSNorm()
        self.head = make_linear(cfg, cfg.d_model, patch_dim, seed)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(h))

    def loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self(h).float(), targets.float())


DECODERS: dict[str, Callable[..., Decoder]] = {"text": TextDecoder}


def register_decoder(modality: str, cls: Callable[..., Decoder]) -> None:
    """Add a decoder class ``cls(cfg, seed)`` for ``modality``."""
    DECODERS[modality] = cls
