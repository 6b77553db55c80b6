"""``torch.library`` custom ops over the Triton launchers, with fake impls (shapes for ``torch.compile``).

Registered ops (namespace ``arbitor``; ``pending`` and the other counters are int64 0-d device tensors):

* ``arbitor::ternary_linear_forward(x, T_packed, E, corr_accum, step_counter, pending, in_features, group_size,
  strength, matmul_fp8=False) -> y``                    ``x [M, K] -> y [M, N]``, pure
* ``arbitor::ternary_linear_grad_x(grad_y, T_packed, E, corr_accum, step_counter, pending, in_features,
  group_size, strength, matmul_fp8=False) -> grad_x``   ``grad_y [M, N] -> grad_x [M, K]``, pure
* ``arbitor::bigint_ballot_(grad_y, x, T_packed, corr_accum, pending, nonfinite, in_features, group_size,
  gradw_fp8=False)`` mutates ``corr_accum``, ``pending``, ``nonfinite``
* ``arbitor::counter_ballot_(grad_y, x, T_packed, C_packed, corr_accum, step_counter, pending, nonfinite,
  hash_key, in_features, group_size, bits, rate, gradw_fp8=False)`` mutates ``T_packed``, ``C_packed``, ``corr_accum``,
  ``pending``, ``nonfinite``; ``rate`` is a float32 0-d device tensor (a schedule that changes it changes no
  compiled graph's constants: ``torch.compile`` guards a float argument by value and would recompile)
* ``arbitor::ternary_decode_forward(x, T_packed, S, in_features, group_size, relu_square) -> y``   a frozen layer
  (``inference.py``): ``x [M, K] -> y [M, N]`` from ``T_packed`` and the float32 group scale ``S``, pure
* ``arbitor::ternary_group_forward(x, T_packed[], E[], corr_accum[], step_counter[], pending[], in_features,
  group_size, strength[], matmul_fp8=False) -> y`` and ``arbitor::ternary_group_grad_x(grad_y, <same>) -> grad_x``:
  layers reading one input, stacked along their outputs (``linear_triton.ternary_group_forward``), pure

Going through these ops makes the Triton backend opaque to ``torch.compile`` (Dynamo records one node per
op and uses the fake impl for shapes; Inductor calls the real kernel), and lets ``torch.library.opcheck``
validate the schemas. The in-place ballots declare what they mutate, so functionalization orders them
after the grad-x read of the pre-ballot scale.
"""
from __future__ import annotations

import torch

from ..format import packed_out_features
from .counter import counter_ballot_ as _counter_ballot
from .decode_triton import decode_forward
from .linear_triton import ternary_forward, ternary_grad_x
from .linear_triton import ternary_group_forward as _group_forward
from .linear_triton import ternary_group_grad_x as _group_grad_x
from .votes_triton import bigint_ballot_triton_

__all__ = ["ternary_linear_forward", "ternary_linear_grad_x", "bigint_ballot_", "counter_ballot_",
           "ternary_decode_forward", "ternary_group_forward", "ternary_group_grad_x"]


@torch.library.custom_op("arbitor::ternary_linear_forward", mutates_args=())
def ternary_linear_forward(x: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                           step_counter: torch.Tensor, pending: torch.Tensor, in_features: int, group_size: int,
                           strength: float, matmul_fp8: bool = False) -> torch.Tensor:
    """``y [M, N] = x [M, K] @ (T * S).T`` (``linear_triton.ternary_forward``)."""
    return ternary_forward(x, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength,
                           matmul_fp8=matmul_fp8)


@ternary_linear_forward.register_fake
def _(x, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength, matmul_fp8=False):
    torch._check(x.dim() == 2 and x.shape[1] == in_features, lambda: "x must be [M, in_features]")
    return x.new_empty(x.shape[0], T_packed.shape[0])


@torch.library.custom_op("arbitor::ternary_linear_grad_x", mutates_args=())
def ternary_linear_grad_x(grad_y: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                          step_counter: torch.Tensor, pending: torch.Tensor, in_features: int, group_size: int,
                          strength: float, matmul_fp8: bool = False) -> torch.Tensor:
    """``grad_x [M, K] = grad_y [M, N] @ (T * S)`` (``linear_triton.ternary_grad_x``)."""
    return ternary_grad_x(grad_y, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength,
                          matmul_fp8=matmul_fp8)


@ternary_linear_grad_x.register_fake
def _(grad_y, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength, matmul_fp8=False):
    torch._check(grad_y.dim() == 2 and grad_y.shape[1] == T_packed.shape[0], lambda: "grad_y must be [M, out_features]")
    return grad_y.new_empty(grad_y.shape[0], in_features)


@torch.library.custom_op("arbitor::bigint_ballot_", mutates_args=("corr_accum", "pending", "nonfinite"))
def bigint_ballot_(grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor, corr_accum: torch.Tensor,
                   pending: torch.Tensor, nonfinite: torch.Tensor, in_features: int, group_size: int,
                   gradw_fp8: bool = False) -> None:
    """One ``bigint`` ballot (``votes_triton.bigint_ballot_triton_``)."""
    bigint_ballot_triton_(grad_y, x, T_packed, corr_accum, pending, nonfinite, in_features, group_size, gradw_fp8)


@bigint_ballot_.register_fake
def _(grad_y, x, T_packed, corr_accum, pending, nonfinite, in_features, group_size, gradw_fp8=False):
    return None


@torch.library.custom_op("arbitor::counter_ballot_",
                         mutates_args=("T_packed", "C_packed", "corr_accum", "pending", "nonfinite"))
def counter_ballot_(grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor, C_packed: torch.Tensor,
                    corr_accum: torch.Tensor, step_counter: torch.Tensor, pending: torch.Tensor,
                    nonfinite: torch.Tensor, hash_key: torch.Tensor, in_features: int, group_size: int, bits: int,
                    rate: torch.Tensor, gradw_fp8: bool = False) -> None:
    """One ``counter`` ballot with the fused Triton step (``counter.counter_ballot_(impl="triton")``)."""
    _counter_ballot(grad_y, x, T_packed, C_packed, corr_accum, step_counter, pending, nonfinite, hash_key,
                    in_features, group_size, bits, rate, impl="triton", gradw_fp8=gradw_fp8)


@counter_ballot_.register_fake
def _(grad_y, x, T_packed, C_packed, corr_accum, step_counter, pending, nonfinite, hash_key, in_features,
      group_size, bits, rate, gradw_fp8=False):
    return None


@torch.library.custom_op("arbitor::ternary_decode_forward", mutates_args=())
def ternary_decode_forward(x: torch.Tensor, T_packed: torch.Tensor, S: torch.Tensor, in_features: int,
                           group_size: int, relu_square: bool = False) -> torch.Tensor:
    """``y [M, N] = x [M, K] @ (T * S).T`` of a frozen layer, or ``relu(y) ** 2`` (``decode_triton.decode_forward``)."""
    return decode_forward(x, T_packed, S, in_features, group_size, relu_square)


@ternary_decode_forward.register_fake
def _(x, T_packed, S, in_features, group_size, relu_square=False):
    torch._check(x.dim() == 2 and x.shape[1] == in_features, lambda: "x must be [M, in_features]")
    return x.new_empty(x.shape[0], packed_out_features(T_packed))


@torch.library.custom_op("arbitor::ternary_group_forward", mutates_args=())
def ternary_group_forward(x: torch.Tensor, T_packed: list[torch.Tensor], E: list[torch.Tensor],
                          corr_accum: list[torch.Tensor], step_counter: list[torch.Tensor], pending: list[torch.Tensor],
                          in_features: int, group_size: int, strength: list[float],
                          matmul_fp8: bool = False) -> torch.Tensor:
    """``y [M, sum N] = cat_i(x @ (T_i * S_i).T)`` (``linear_triton.ternary_group_forward``)."""
    return _group_forward(x, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength,
                          matmul_fp8)


@ternary_group_forward.register_fake
def _(x, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength, matmul_fp8=False):
    torch._check(x.dim() == 2 and x.shape[1] == in_features, lambda: "x must be [M, in_features]")
    return x.new_empty(x.shape[0], sum(t.shape[0] for t in T_packed))


@torch.library.custom_op("arbitor::ternary_group_grad_x", mutates_args=())
def ternary_group_grad_x(grad_y: torch.Tensor, T_packed: list[torch.Tensor], E: list[torch.Tensor],
                         corr_accum: list[torch.Tensor], step_counter: list[torch.Tensor], pending: list[torch.Tensor],
                         in_features: int, group_size: int, strength: list[float],
                         matmul_fp8: bool = False) -> torch.Tensor:
    """``grad_x [M, K] = sum_i grad_y[:, N_i] @ (T_i * S_i)`` (``linear_triton.ternary_group_grad_x``)."""
    return _group_grad_x(grad_y, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength,
                         matmul_fp8)


@ternary_group_grad_x.register_fake
def _(grad_y, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength, matmul_fp8=False):
    torch._check(grad_y.dim() == 2 and grad_y.shape[1] == sum(t.shape[0] for t in T_packed),
                 lambda: "grad_y must be [M, sum of out_features]")
    return grad_y.new_empty(grad_y.shape[0], in_features)
