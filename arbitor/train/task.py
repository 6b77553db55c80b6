"""``Task``: what a training run trains on -- the one part that differs between text and multimodal runs.

The ``Trainer`` (``trainer.py``) owns the loop, the schedule, the per-step update, evaluation and
checkpoint timing, metrics, plots and resume; a task supplies

* ``components``: its ``LossComponent`` s (``components.py``);
* ``next_batch(batch_size, device)``: this step's batch and the components that train on it
  (text: all of them on one batch; multimodal: the one modality drawn for the step);
* ``evaluate(model, ...)``: validation metrics on fixed held-out windows, and ``format_eval``;
* ``rng_tensors()`` / ``load_rng_tensors()``: its samplers' generator states (checkpointed, so a
  resumed run draws the same batches);
* ``config()`` and ``checkpoint_state()``: what it was built from (saved; ``run.py`` rebuilds the task
  from them on resume and refuses a mismatch);
* ``log_fields()`` / ``artifacts()``: extra metrics fields and files (the image grid).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from .components import LossComponent

__all__ = ["Task", "to_device"]

def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; a host tensor bound for a GPU goes through pinned memory, asynchronously (a copy
    from pageable memory would wait for the GPU to finish its queue: a host sync every step)."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class Task(ABC):
    """Base class of the text and multimodal tasks (module doc)."""

    kind: ClassVar[str]
    components: list[LossComponent]
    # True when every step trains all of ``components`` on a batch of one fixed shape, of dataclass type
    # ``batch_type`` (what ``TrainConfig.cuda_graph`` needs: one captured step replays them all).
    fixed_step: ClassVar[bool] = False
    batch_type: ClassVar[Optional[type]] = None

    @abstractmethod
    def next_batch(self, batch_size: int, device: torch.device) -> tuple[Any, list[LossComponent]]:
        """This step's batch (on ``device``) and the components that train on it."""

    @abstractmethod
    def batch_at(self, batch_size: int, device: torch.device, key: int) -> tuple[Any, list[LossComponent]]:
        """The batch and components of the micro-batch keyed ``key`` -- a pure function of the key (its own
        generator, seeded with it): what gradient accumulation and data parallelism draw, so that a
        micro-batch's data does not depend on which process draws it (``trainer.py``)."""

    @property
    def passes(self) -> int:
        """The most backward passes one micro-batch runs (the sum of the components' weights)."""
        return max(1, sum(c.weight for c in self.components))

    @abstractmethod
    def evaluate(self, model: nn.Module, batch_size: int, eval_batches: int, device: torch.device,
                 seed: int) -> dict[str, float]:
        """Validation metrics (the model is in eval mode, gradients off)."""

    def format_eval(self, metrics: dict[str, float]) -> str:
        """One line for the console."""
        return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())

    @abstractmethod
    def rng_tensors(self) -> dict[str, torch.Tensor]:
        """The samplers' generator states, named ``rng.<what>``."""

    @abstractmethod
    def load_rng_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of ``rng_tensors`` (a missing state is a ``KeyError`` naming it)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The task's config as plain data."""

    def checkpoint_state(self) -> dict[str, Any]:
        """What else a checkpoint must hold to rebuild this task (e.g. the vocabulary)."""
        return {}

    def log_fields(self, components: list[LossComponent]) -> dict[str, Any]:
        """Extra fields of a train record for a step that trained ``components``."""
        return {}

    def artifacts(self, model: nn.Module, run_dir: Path, step: int, ctx: int) -> Optional[Path]:
        """Write task-specific files after an evaluation (none by default)."""
        return None

    def train_tokens(self) -> Optional[int]:
        """The tokens one pass over the training data reads (what ``counter_rate="auto"`` counts passes of,
        ``run.py``); None when there is no one such number (several modalities, your own batches)."""
        return None

    def summary(self) -> str:
        """What the run trains on, for the start line."""
        return self.kind
