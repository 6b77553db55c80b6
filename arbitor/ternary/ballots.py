"""The step-boundary ballot bookkeeping that ``TernaryScaleTensor`` and ``SparseTernaryEmbedding`` share.

In the step-boundary mode (``rules/base.py``) a module gathers each ballot into non-persistent buffers
(``gather_<name>``, zero between steps) instead of applying it; a data-parallel loop (``parallel.py``) sums
those buffers over the ranks (``reduce_tensors`` / ``load_reduced``) and ``ternary_step`` applies the sum.
A module mixes ``StepBoundaryBallots`` in ahead of ``nn.Module``, calls ``_init_ballots()`` in its
``__init__`` and provides ``_step_mode_buffers(max_ballots)`` (its gather buffers, zeroed) and
``reduce_tensors()``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["StepBoundaryBallots"]


class StepBoundaryBallots:
    """``set_step_mode``, ``step_mode``, ``gathered``, ``set_ballot_hook`` and ``load_reduced`` of a ternary module
    (module doc). Expects ``self._dirty`` (ballots cast since the last ``ternary_step``)."""

    def _init_ballots(self) -> None:
        self._max_ballots: Optional[int] = None   # None: online ballots; else the most one step may gather
        self._gathered_names: tuple[str, ...] = ()
        self._ballots_in_step = 0                 # ballots gathered since the last ternary_step (host count)
        self._ballot_hook: Optional[Callable] = None   # set_ballot_hook: called after each gathered ballot

    def _step_mode_buffers(self, max_ballots: int) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def set_step_mode(self, max_ballots: Optional[int]) -> None:
        """``None``: online ballots (default). An int: step-boundary mode, at most ``max_ballots`` ballots per step
        (summed over every process of a data-parallel group); the gather buffers are ``_step_mode_buffers``."""
        if self._dirty:
            raise RuntimeError("set_step_mode: ballots are pending; call ternary_step() first")
        for name in self._gathered_names:
            del self._buffers["gather_" + name]
            self._non_persistent_buffers_set.discard("gather_" + name)
        self._gathered_names = ()
        self._max_ballots = None if max_ballots is None else int(max_ballots)
        if max_ballots is None:
            return
        if self._max_ballots < 1:
            raise ValueError(f"set_step_mode: max_ballots must be >= 1 or None, got {max_ballots!r}")
        bufs = self._step_mode_buffers(self._max_ballots)
        for name, buf in bufs.items():
            self.register_buffer("gather_" + name, buf, persistent=False)
        self._gathered_names = tuple(bufs)
        self._ballots_in_step = 0

    @property
    def step_mode(self) -> Optional[int]:
        """``None`` (online) or the step-boundary mode's ``max_ballots``."""
        return self._max_ballots

    def gathered(self) -> dict[str, torch.Tensor]:
        """The step-boundary gather buffers by name (empty when online)."""
        return {name: self._buffers["gather_" + name] for name in self._gathered_names}

    def set_ballot_hook(self, hook: Optional[Callable]) -> None:
        """``hook(self)`` after every gathered ballot (how ``parallel.py`` overlaps its all-reduce with the rest of
        the backward); ``None`` removes it."""
        self._ballot_hook = hook

    def reduce_tensors(self) -> list[tuple[torch.Tensor, torch.dtype]]:  # pragma: no cover - interface
        """What a data-parallel all-reduce sums for this module, with the dtype to send it in."""
        raise NotImplementedError

    def load_reduced(self, tensors: list[torch.Tensor]) -> None:
        """Take the all-reduced sums of ``reduce_tensors()`` (same order); ``ternary_step`` then applies them."""
        for (buf, _), t in zip(self.reduce_tensors(), tensors):
            buf.copy_(t)
        self._dirty = True
