"""Step-size schedules: a pure function of the step, so a resumed run gets the same factors.

``rate_factor(schedule, step, steps, warmup_steps, min_rate_ratio)`` is the multiplier of the step that
follows ``step`` completed steps. The trainer applies it, before each step, to AdamW's learning rate
(float baselines) and -- through ``set_rate_factor(model, f)`` -- to every ternary rule's step size.

* ``constant``: 1.0 always.
* ``cosine`` (nanoGPT's ``get_lr``): linear warm-up from ``1/warmup_steps`` to 1 over ``warmup_steps``,
  then a half cosine down to ``min_rate_ratio`` at ``steps`` (nanoGPT's shakespeare_char: warm-up 100,
  floor 0.1). ``docs/quality.md``: cosine took the counter rule from +0.15 to +0.09 nats behind QAT at
  800 steps.
"""
from __future__ import annotations

import math

__all__ = ["SCHEDULES", "rate_factor"]

SCHEDULES = ("constant", "cosine")


def rate_factor(schedule: str, step: int, steps: int, warmup_steps: int = 0, min_rate_ratio: float = 0.1) -> float:
    """The factor for the step after ``step`` completed ones (module doc)."""
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_rate_ratio + (1.0 - min_rate_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
