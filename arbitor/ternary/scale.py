"""The BigInt correlation scale rule, its constants and its integer bounds.

    mean_corr = corr_accum / (ballots * group_size)          (0 while ballots == 0)
    S         = 2 ** (E + strength * mean_corr)               per scale group
    W_eff     = T * S

``ballots`` is the layer's ``step_counter`` plus the ballots cast since the last
``ternary_step()`` (see ``layer.py`` for what a ballot is; ``ops/votes.py`` for the vote).

Why float64 for the ratio: ``corr_accum`` and ``ballots * group_size`` are int64
and may exceed 2**24, where float32 stops representing every integer. float64
represents every integer up to 2**53 exactly and keeps the ratio to a relative
error of 2**-53 beyond that, so ``mean_corr`` is exact to far below what the
float32 result ``S`` can show. This is per group (1/group_size of the weights),
so the cost is negligible.

Bounds (checked, never silent):
* every ballot adds at most ``group_size`` in absolute value to each group, so
  ``|corr_accum| <= ballots * group_size`` and ``mean_corr`` is always in [-1, 1];
* ``ballots * group_size`` must stay below ``MAX_VOTE_TOTAL = 2**62``; ``ternary_step()`` asserts it on
  the device (no host sync; a breach stops the run with a device-side assertion), and every checkpoint
  load checks it (``validate_state``). At group_size 4096 that is ~1.1e15 ballots, i.e. 35 years at a
  million ballots per second;
* ``E`` must lie in ``[E_MIN, E_MAX] = [-100, 100]`` so that
  ``2 ** (E +- strength)`` stays a normal float32 for any strength <= 20.
"""
from __future__ import annotations

import os

import torch

__all__ = ["DEFAULT_STRENGTH", "MAX_VOTE_TOTAL", "E_MIN", "E_MAX", "MAX_STRENGTH", "default_strength", "bigint_scale"]

DEFAULT_STRENGTH = 4.0
MAX_STRENGTH = 20.0
MAX_VOTE_TOTAL = 2 ** 62
E_MIN, E_MAX = -100, 100


def default_strength() -> float:
    """``ARB_BIGINT_CORR_STRENGTH`` from the environment (default 4.0), validated."""
    raw = os.environ.get("ARB_BIGINT_CORR_STRENGTH")
    if raw is None or raw.strip() == "":
        return DEFAULT_STRENGTH
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"ARB_BIGINT_CORR_STRENGTH must be a number, got {raw!r}") from None
    check_strength(value, "ARB_BIGINT_CORR_STRENGTH")
    return value


def check_strength(value: float, name: str = "strength") -> float:
    if not (0.0 <= value <= MAX_STRENGTH):
        raise ValueError(f"{name} must be in [0, {MAX_STRENGTH}], got {value}")
    return float(value)


def bigint_scale(E: torch.Tensor, corr_accum: torch.Tensor, ballots: torch.Tensor | int,
                 group_size: int, strength: float) -> torch.Tensor:
    """Per-group scale ``S`` as float32, shape of ``E`` (``[out_features, n_groups]``).

    Args:
        E: int8 fixed exponents.
        corr_accum: int64 correlation accumulators, same shape as ``E``.
        ballots: int64 scalar tensor (or int): ballots counted so far.
        group_size: weights per scale group.
        strength: ``ARB_BIGINT_CORR_STRENGTH``.
    """
    denom = torch.as_tensor(ballots, device=corr_accum.device).to(torch.float64) * float(group_size)
    mean_corr = torch.where(denom > 0, corr_accum.to(torch.float64) / denom.clamp_min(1.0),
                            torch.zeros((), dtype=torch.float64, device=corr_accum.device))
    return torch.exp2(E.to(torch.float64) + strength * mean_corr).to(torch.float32)
