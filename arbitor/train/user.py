"""``UserTask``: arbitor's ``Trainer`` on your own model and data.

A user model (``arbitor.ternarize``-d, or built from arbitor's layers) and two functions make a task:

* ``batch_fn(key) -> batch``: the training batch for integer ``key`` -- a pure function of the key (e.g. a
  ``torch.Generator`` seeded with it), which is what makes a run reproducible, resumable bit-exactly, and
  the same under gradient accumulation and data parallelism (the trainer derives the keys from the seed,
  the step and the micro-batch; ``Task.batch_at``);
* ``loss_fn(model, batch) -> loss``: a 0-d tensor;
* ``eval_fn(model) -> {name: value}`` (optional): validation metrics, run with the model in eval mode and
  gradients off.

Example (``docs/convert.md``)::

    task = UserTask(batch_fn=lambda key: batches[key % len(batches)],
                    loss_fn=lambda model, b: model(**b).loss)
    trainer = Trainer(model, task, TrainConfig(steps=500, batch=8, ctx=256), run_dir=Path("runs/mine"))
    trainer.fit()

``batch`` and ``ctx`` of the ``TrainConfig`` only count tokens (``tokens_seen``) here: ``batch_fn`` decides
the batch. Batches are moved to the trainer's device (tensors, and dicts / lists / tuples of tensors).
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn
from torch.utils._pytree import tree_map

from .components import LossComponent
from .task import Task, to_device

__all__ = ["UserTask"]


class UserTask(Task):
    """A task from ``batch_fn``, ``loss_fn`` and an optional ``eval_fn`` (module doc)."""

    kind: ClassVar[str] = "user"

    def __init__(self, batch_fn: Callable[[int], Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                 eval_fn: Optional[Callable[[nn.Module], dict[str, float]]] = None, seed: int = 0) -> None:
        self.batch_fn, self.loss_fn, self.eval_fn = batch_fn, loss_fn, eval_fn
        self.components = [LossComponent("loss", lambda model, batch, shared: self.loss_fn(model, batch))]
        self.draws = torch.zeros((), dtype=torch.int64)    # batches drawn by next_batch (checkpointed)
        self.seed = seed

    def _move(self, batch: Any, device: torch.device) -> Any:
        return tree_map(lambda t: to_device(t, device) if isinstance(t, torch.Tensor) else t, batch)

    def next_batch(self, batch_size: int, device: torch.device) -> tuple[Any, list[LossComponent]]:
        key = int(self.draws)
        self.draws += 1
        return self._move(self.batch_fn(key), device), self.components

    def batch_at(self, batch_size: int, device: torch.device, key: int) -> tuple[Any, list[LossComponent]]:
        return self._move(self.batch_fn(key), device), self.components

    def evaluate(self, model: nn.Module, batch_size: int, eval_batches: int, device: torch.device,
                 seed: int) -> dict[str, float]:
        return {k: float(v) for k, v in (self.eval_fn(model) if self.eval_fn is not None else {}).items()}

    def rng_tensors(self) -> dict[str, torch.Tensor]:
        return {"rng.user_draws": self.draws.clone()}

    def load_rng_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.draws = tensors["rng.user_draws"].clone()

    def config(self) -> dict[str, Any]:
        return {}

    def summary(self) -> str:
        return "your model and data (UserTask)"
