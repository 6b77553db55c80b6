"""Gap-closing variants of the BigInt rule that need no new state (issue 6).

``leaky_window(model, window)`` -- a *windowed* ``corr_accum``
----------------------------------------------------------------
Under the spec's rule ``mean_corr = corr_accum / (step_counter * group_size)`` averages
every ballot ever cast, so a scale's response to one new ballot shrinks like
``1 / step_counter``: learning slows down as training goes on. ``leaky_window`` turns the
running mean into an (integer, power-of-two) exponentially weighted one: after the
per-step update, every scale group whose ballot count reached ``window`` has its
count and its vote sum halved::

    if step_counter >= window:
        corr_accum   <- trunc(corr_accum / 2)          (rounds toward zero)
        step_counter <- ceil(step_counter / 2)

``mean_corr`` is unchanged up to the rounding (so ``S`` does not jump), but later ballots
weigh as much as the last ``window/2 .. window`` before them: late training still moves
the scales. Rounding toward zero for the sum and up for the count keeps the invariant
``|corr_accum| <= step_counter * group_size`` that ``validate_state`` checks. The state
is exactly the BigInt state (same buffers, same bytes per weight); the operation is
integer-only and deterministic, so a checkpointed run resumes bit-exactly.

It applies to every module holding ``corr_accum`` + ``step_counter`` buffers
(``TernaryScaleTensor`` with update "bigint"/"flip": one scalar counter per layer; the
BigInt ``SparseTernaryEmbedding``: one counter per row). Call it between steps (after
``ternary_step(model)``), never with ballots pending. It is a trainer-level hook: the
study script (``benchmarks/quality.py``) calls it after each ``Trainer.train_step()``.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["leaky_window", "halve_state"]


def halve_state(corr_accum: torch.Tensor, step_counter: torch.Tensor, window: int) -> int:
    """Halve (in place) the groups whose ``step_counter >= window``; returns how many counters were halved.

    ``step_counter`` is a 0-d tensor (one counter for all of ``corr_accum``) or ``[rows]``
    (one per row of ``corr_accum [rows, groups]``).
    """
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    mask = step_counter >= window
    n = int(mask.sum())
    if n == 0:
        return 0
    halved_c = torch.div(corr_accum, 2, rounding_mode="trunc")
    m = mask if step_counter.dim() == 0 else mask.unsqueeze(1)
    corr_accum.copy_(torch.where(m, halved_c, corr_accum))
    step_counter.copy_(torch.where(mask, (step_counter + 1) // 2, step_counter))
    return n


@torch.no_grad()
def leaky_window(model: nn.Module, window: int) -> int:
    """Apply ``halve_state`` to every module of ``model`` with BigInt state; returns counters halved."""
    total = 0
    for module in model.modules():
        corr = module._buffers.get("corr_accum")
        sc = module._buffers.get("step_counter")
        if corr is None or sc is None:
            continue
        if getattr(module, "_pending_ballots", 0):
            raise RuntimeError("leaky_window: ballots pending; call ternary_step(model) first")
        n = halve_state(corr, sc, window)
        if n and hasattr(module, "_host_counter"):
            module._host_counter = None  # host mirror of step_counter: re-read on next use
        total += n
    return total
