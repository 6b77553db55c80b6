"""``bigint``: the spec's rule (TRUE-TERNARY-REFACTOR18, BigInt correlation scaling).

``T`` and ``E`` are fixed at initialisation; a ballot adds each scale group's correlation vote
(``ops/votes.py``)::

    corr_accum[n, g] += -sum_{k in g} sign(dL/dW_eff[n, k]) * T[n, k]

and the scale follows ``S = 2 ** (E + strength * corr_accum / (ballots * group_size))`` (``scale.py``).
No per-weight state beyond the packed trits: 0.25 bytes per weight + 9 bytes per group (``E`` int8 +
``corr_accum`` int64) + 8 bytes of ``step_counter``. There is no step size, so a schedule has nothing
to scale. The op is ``ops.bigint_ballot_`` (on the GPU: cuBLAS ``grad_W`` + a Triton vote kernel).
"""
from __future__ import annotations

from typing import Any

import torch

from .base import TernaryState, UpdateRule

__all__ = ["BigIntRule"]


class BigIntRule(UpdateRule):
    """The spec's rule: only the per-group scales train (module doc)."""

    name = "bigint"

    def ballot(self, state: TernaryState, grad_y: torch.Tensor, x: torch.Tensor, ops: Any) -> None:
        ops.bigint_ballot_(grad_y, x, state.T_packed, state.corr_accum, state.pending, state.nonfinite,
                           state.in_features, state.group_size, gradw_fp8=state.gradw_fp8)

    def gather(self, state: TernaryState, gathered: dict[str, torch.Tensor], grad_y: torch.Tensor, x: torch.Tensor,
               ops: Any, ballot: torch.Tensor) -> None:
        ops.bigint_ballot_(grad_y, x, state.T_packed, gathered["vote_sum"], state.pending, state.nonfinite,
                           state.in_features, state.group_size, gradw_fp8=state.gradw_fp8)
