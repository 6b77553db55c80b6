"""The update-rule protocol: how one ternary layer's ballots change its integer state.

A ``TernaryScaleTensor`` holds one ``UpdateRule`` object (never a rule name it branches on). The layer
owns every buffer and the BigInt scale bookkeeping all rules share -- ``T_packed``, ``E``,
``corr_accum``, ``step_counter`` and the pending-ballot count (``layer.py``, ``scale.py``); the rule
owns what is particular to it:

* ``buffers()`` -- the extra state it needs (registered on the layer under these names, so it is in
  the layer's ``state_dict``), with ``buffer_dtypes`` for checkpoint checks;
* ``ballot(state, grad_y, x, ops)`` -- one backward's ballot, given the layer's buffers as a
  ``TernaryState`` view, the upstream gradient and the saved input, applied through the op table
  ``ops`` (``ops/backend.py``: the torch reference or the Triton kernels, one signature). The op counts the
  ballot in ``pending`` -- or, when ``grad_y`` or ``x`` holds a NaN or an infinity, casts nothing and counts
  it in ``nonfinite``; all on the device;
* ``fold(state)`` -- its part of the per-step call ``ternary_step()`` (after the layer folded the step's
  ballots into ``step_counter``);
* ``extra_state_bytes`` / ``validate`` -- its bytes per layer for the audit and its invariants for
  ``validate_state`` (checked on every checkpoint load);
* ``set_rate_factor(f)`` -- the single door through which a step-size schedule reaches a rule:
  the rule's float step size (if it has one) becomes ``base * f`` for the ballots that follow.

Two modes (the layer chooses; ``TernaryScaleTensor.set_step_mode``):

* *online* (default): ``ballot()`` applies its update at once, so a later micro-batch's forward sees it;
* *step-boundary*: every micro-batch of a step computes against the step-start state; ``gather()`` adds
  the ballot's update into the buffers ``gather_buffers()`` made (summable integers, ``ops/gather.py``),
  and ``apply_gathered()`` applies their sum at ``ternary_step``. Integer sums do not depend on order, so
  W processes whose buffers are all-reduced (``ternary/parallel.py``) give the state of one process that
  gathered all W*A ballots -- bit for bit. ``wire_dtypes`` names the narrowest dtype each buffer's sum
  provably fits for a given ``max_ballots`` per step (what the all-reduce sends).

A rule object belongs to one layer (the layer builds it), like a parameter group of an optimizer.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch

from ..ops.votes import count_ballot_

__all__ = ["TernaryState", "UpdateRule", "check_wire_bound"]


def check_wire_bound(name: str, bound: int, dtype: torch.dtype) -> None:
    """``ValueError`` unless every sum up to ``bound`` in absolute value fits ``dtype``."""
    top = torch.iinfo(dtype).max
    if bound > top:
        raise ValueError(f"step-boundary mode: {name} may reach {bound} in a step, beyond {dtype} ({top}); "
                         "use fewer ballots per step (grad_accum x world size x component weights)")


@dataclass
class TernaryState:
    """A view of one layer's integer state handed to its rule (the tensors are the layer's buffers).

    ``T_packed [N, ceil(K/4)]`` uint8, ``E [N, G]`` int8, ``corr_accum [N, G]`` int64, ``step_counter []``
    int64; ``pending []`` int64 the ballots counted since the last ``ternary_step`` and ``nonfinite []`` int64
    the ballots skipped for a non-finite input (both device counters: a ballot's index is ``step_counter +
    pending``); ``rate []`` float32 the rule's step size for this ballot (``UpdateRule.rate``, kept on the
    device by the layer so that a schedule changes no compiled graph and no CUDA graph); ``extra`` the rule's own
    buffers; ``gradw_fp8`` the layer's setting: a ballot forms ``grad_W`` from fp8 operands (``ops/gradw.py``).
    """

    T_packed: torch.Tensor
    E: torch.Tensor
    corr_accum: torch.Tensor
    step_counter: torch.Tensor
    pending: torch.Tensor
    nonfinite: torch.Tensor
    in_features: int
    out_features: int
    group_size: int
    rate: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    gradw_fp8: bool = False

    def count_ballot(self, ok: torch.Tensor) -> None:
        """Count this ballot on the device: ``pending += ok``, ``nonfinite += not ok`` (``ok``: 0-d bool, the
        ballot's inputs were finite). Every ``ballot()`` does this once (the ops do it for the two rules)."""
        count_ballot_(ok, self.pending, self.nonfinite)


class UpdateRule(ABC):
    """Base class of the update rules (module doc)."""

    name: ClassVar[str]
    #: dtype of every buffer ``buffers()`` returns (checked when a state dict is loaded)
    buffer_dtypes: ClassVar[dict[str, torch.dtype]] = {}

    def __init__(self) -> None:
        self.rate_factor = 1.0

    def buffers(self, out_features: int, in_features: int, seed: int,
                device: Optional[torch.device]) -> dict[str, torch.Tensor]:
        """The rule's initial extra buffers (none by default)."""
        return {}

    @abstractmethod
    def ballot(self, state: TernaryState, grad_y: torch.Tensor, x: torch.Tensor, ops: Any) -> None:
        """Cast one ballot: ``grad_y [M, N]``, ``x [M, K]`` (same dtype), applied in place."""

    def fold(self, state: TernaryState) -> None:
        """The rule's part of the per-step call (nothing for online rules)."""

    # ------------------------------------------------------------ step-boundary mode
    def gather_buffers(self, state: TernaryState, max_ballots: int) -> dict[str, torch.Tensor]:
        """Zeroed buffers that gather a step's ballots (on ``state``'s device). Default: the group votes."""
        if type(self).gather is UpdateRule.gather:
            raise ValueError(f"update rule {self.name!r} has no step-boundary mode (no gather()): it cannot train "
                             "with grad_accum > 1 or several processes")
        check_wire_bound("vote_sum", max_ballots * state.group_size, torch.int32)
        return {"vote_sum": torch.zeros_like(state.corr_accum)}

    def wire_dtypes(self, max_ballots: int) -> dict[str, torch.dtype]:
        """The dtype each gather buffer is all-reduced in (its bound is checked by ``gather_buffers``)."""
        return {"vote_sum": torch.int32}

    def gather(self, state: TernaryState, gathered: dict[str, torch.Tensor], grad_y: torch.Tensor, x: torch.Tensor,
               ops: Any, ballot: torch.Tensor) -> None:
        """Add one ballot's update to ``gathered`` (the state is not changed); ``ballot``: its global index
        (int64 0-d, on the device). Counts the ballot like ``ballot()``. A rule without it is online only."""
        raise NotImplementedError(f"update rule {self.name!r} has no step-boundary mode")

    def apply_gathered(self, state: TernaryState, gathered: dict[str, torch.Tensor]) -> None:
        """Apply a step's summed ballots (after ``step_counter`` took the summed ``pending``). Default: votes."""
        state.corr_accum += gathered["vote_sum"]

    def set_rate_factor(self, factor: float) -> None:
        """Scale the rule's step size by ``factor`` for the ballots that follow (schedules)."""
        self.rate_factor = float(factor)

    @property
    def rate(self) -> float:
        """The step size of the next ballots (a rule without one, like ``bigint``, reports ``rate_factor``)."""
        return self.rate_factor

    def extra_state_bytes(self, out_features: int, in_features: int) -> int:
        """Bytes of the rule's extra buffers for a ``[out_features, in_features]`` layer."""
        return sum(b.numel() * b.element_size()
                   for b in self.buffers(out_features, in_features, 0, torch.device("meta")).values())

    def validate(self, state: TernaryState) -> Optional[str]:
        """The first violated invariant of the rule's buffers, or None."""
        return None

    def settings(self) -> dict[str, Any]:
        """The rule's settings (for ``extra_repr`` and configs)."""
        return {}

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({body})"
