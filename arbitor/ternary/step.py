"""The per-step calls over a whole model, and the protocol every ternary module follows.

A *ternary module* (``TernaryScaleTensor``, ``SparseTernaryEmbedding``, the VQ codebooks) owns
integer training state that ballots change during backward. It implements ``TernaryModule``:

* ``ternary_step()`` -- fold this step's pending ballots (and apply deferred updates);
* ``set_rate_factor(f)`` -- scale its update rule's step size for the next ballots (schedules);
* ``set_voting(on)`` / ``voting`` -- whether a backward through it casts a ballot (loss routing);
* ``dirty`` -- a forward since the last ``ternary_step()`` may have cast ballots (a host flag: no sync);
* ``pending_ballots`` (reads the device) and ``validate_state()``.

A training loop calls, per optimisation step::

    set_rate_factor(model, schedule(step))   # optional: the schedule's one door into the rules
    loss.backward()                          # ballots stream into the integer state
    ternary_step(model)                      # fold them

Nothing outside a ternary module writes its buffers or attributes; these functions only call the
methods above.
"""
from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

from torch import nn

__all__ = ["TernaryModule", "ternary_layers", "ternary_step", "set_rate_factor", "set_step_mode", "expect_ballots"]


@runtime_checkable
class TernaryModule(Protocol):
    """What a module with integer ternary training state implements (module doc)."""

    @property
    def voting(self) -> bool: ...

    @property
    def dirty(self) -> bool: ...

    @property
    def pending_ballots(self) -> int: ...

    def ternary_step(self) -> int: ...

    def set_rate_factor(self, factor: float) -> None: ...

    def set_voting(self, on: bool) -> None: ...

    def validate_state(self) -> Optional[str]: ...


def ternary_layers(model: nn.Module) -> list[nn.Module]:
    """All modules of ``model`` (itself included) that hold integer ternary training state: those whose class
    defines ``ternary_step`` (the ``TernaryModule`` protocol; a class-level check, cheap enough per step)."""
    return [m for m in model.modules() if callable(getattr(type(m), "ternary_step", None))]


def ternary_step(model: nn.Module) -> int:
    """The per-step update: fold every layer's pending ballots into its ``step_counter`` (on the device).

    Returns the number of layers that were dirty (had a forward that may have cast ballots). A class that defines
    ``ternary_step_many(layers)`` (``TernaryScaleTensor``) folds all its layers in one call: a few launches for the
    whole model instead of a few per layer.
    """
    by_class: dict[type, list[nn.Module]] = {}
    for m in ternary_layers(model):
        by_class.setdefault(type(m), []).append(m)
    done = 0
    for cls, layers in by_class.items():
        many = getattr(cls, "ternary_step_many", None)
        done += many(layers) if callable(many) else sum(1 for m in layers if m.ternary_step())
    return done


def set_rate_factor(model: nn.Module, factor: float) -> None:
    """Scale every ternary layer's update-rule step size by ``factor`` for the ballots that follow.

    The one call through which step-size schedules reach the rules (``bigint`` has no step size and
    ignores it; ``counter`` moves ``counter_rate * factor`` rungs per unit of row-RMS gradient).
    """
    for m in ternary_layers(model):
        m.set_rate_factor(factor)


def set_step_mode(model: nn.Module, max_ballots: Optional[int]) -> None:
    """Every ternary module to the online mode (``None``) or the step-boundary mode with at most ``max_ballots``
    ballots per step (``rules/base.py``): what gradient accumulation and data parallelism need so that the
    result does not depend on how a step's micro-batches are split (``parallel.py``)."""
    for m in ternary_layers(model):
        m.set_step_mode(max_ballots)


def expect_ballots(module: nn.Module) -> None:
    """Mark the ternary layers under ``module`` that its next forward may make cast ballots, before that forward
    runs inside ``torch.utils.checkpoint`` (``TernaryScaleTensor.expect_ballot``): so a compiled model's
    checkpointed blocks carry no attribute store and compile whole."""
    for m in module.modules():
        mark = getattr(m, "expect_ballot", None)
        if callable(mark):
            mark()
