"""``torch.library`` custom ops over the Triton launchers (``linear_triton.py``, ``votes_triton.py``), with fake impls.

Registered ops (namespace ``arbitor``):

* ``arbitor::ternary_linear_forward(x, T_packed, E, corr_accum, step_counter, pending, in_features,
  group_size, strength) -> y``                                 ``x [M, K] -> y [M, N]``, pure
* ``arbitor::ternary_linear_grad_x(grad_y, T_packed, E, corr_accum, step_counter, pending, in_features,
  group_size, strength) -> grad_x``                            ``grad_y [M, N] -> grad_x [M, K]``, pure
* ``arbitor::ternary_correlation_accumulate_(grad_y, x, T_packed, corr_accum, in_features, group_size)``
  mutates ``corr_accum`` ``[N, K // group_size]`` int64 in place, returns nothing.

Going through these ops makes the Triton backend opaque to ``torch.compile``
(Dynamo records one node per op and uses the fake impl for shapes; Inductor
calls the real kernel), and lets ``torch.library.opcheck`` validate the schemas.
The in-place vote accumulation is declared with ``mutates_args=("corr_accum",)``
so functionalization orders it after the grad-x read of the pre-vote scale.
"""
from __future__ import annotations

import torch

from .linear_triton import ternary_forward, ternary_grad_x
from .votes_triton import ternary_correlation_

__all__ = ["ternary_linear_forward", "ternary_linear_grad_x", "ternary_correlation_accumulate_"]


@torch.library.custom_op("arbitor::ternary_linear_forward", mutates_args=())
def ternary_linear_forward(x: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                           step_counter: torch.Tensor, pending: int, in_features: int, group_size: int,
                           strength: float) -> torch.Tensor:
    """``y [M, N] = x [M, K] @ (T * S).T`` (Triton forward kernel)."""
    return ternary_forward(x, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength)


@ternary_linear_forward.register_fake
def _(x, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength):
    torch._check(x.dim() == 2 and x.shape[1] == in_features, lambda: "x must be [M, in_features]")
    return x.new_empty(x.shape[0], T_packed.shape[0])


@torch.library.custom_op("arbitor::ternary_linear_grad_x", mutates_args=())
def ternary_linear_grad_x(grad_y: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                          step_counter: torch.Tensor, pending: int, in_features: int, group_size: int,
                          strength: float) -> torch.Tensor:
    """``grad_x [M, K] = grad_y [M, N] @ (T * S)`` (Triton grad-x kernel)."""
    return ternary_grad_x(grad_y, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength)


@ternary_linear_grad_x.register_fake
def _(grad_y, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength):
    torch._check(grad_y.dim() == 2 and grad_y.shape[1] == T_packed.shape[0], lambda: "grad_y must be [M, out_features]")
    return grad_y.new_empty(grad_y.shape[0], in_features)


@torch.library.custom_op("arbitor::ternary_correlation_accumulate_", mutates_args=("corr_accum",))
def ternary_correlation_accumulate_(grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor,
                                    corr_accum: torch.Tensor, in_features: int, group_size: int) -> None:
    """``corr_accum += votes`` (Triton direct correlation kernel)."""
    ternary_correlation_(grad_y, x, T_packed, corr_accum, in_features, group_size)


@ternary_correlation_accumulate_.register_fake
def _(grad_y, x, T_packed, corr_accum, in_features, group_size):
    return None
