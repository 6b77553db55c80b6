"""Sibling projections: ternary layers that read one input, multiplied as one.

Attention's ``q``, ``k``, ``v`` and ``gate`` all read ``norm(x)``. Run one by one, each expands its own ``W_eff``
and runs its own GEMM (and, with ``matmul_fp8``, quantises the same ``x`` again). ``sibling_forward(layers, x)``
stacks them along their outputs instead::

    y = cat_i(layer_i(x))                      [..., K] -> [..., sum N_i]

computed as one expansion into a transient ``[sum N_i, K]`` buffer and one GEMM (``ops.group_forward``); backward
forms ``grad_x`` by one GEMM as well (``ops.group_grad_x``) and then every layer casts its own ballot with its slice
of ``grad_y`` -- exactly the ballot it casts when called alone, last layer first, as autograd orders them. On the
``3b`` preset this turns four GEMMs of ``[4096, 3072] x [3072, 3072]`` a pass into one ``[4096, 3072] x [3072,
12288]``: with ``matmul_fp8`` the stack takes the fp8 GEMM when every layer asks for it and the stacked shape passes
``fp8_matmul_pays`` (``ops/fp8.py``; one weight exponent for the stack: ``ops/fp8_linear.py``).

Numbers: on the torch backend (the references) the stacked result equals the layers' own outputs bit for bit
(forward, grad-x summed in autograd's order, ballots);
on the Triton path the one GEMM may sum in another order than four (cuBLAS picks its kernel by shape), and with
fp8 the stack's exponent is the largest of the layers'. Layers that cannot be stacked (another type, other
input widths or group sizes, a bias, forward hooks, other backends) run one by one and are concatenated.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .layer import TernaryScaleTensor, check_linear_input
from .ops.blocks import columns_last_first
from .ops.fp8 import fp8_matmul_pays

__all__ = ["sibling_forward", "stackable", "stack_uses_matmul_fp8"]


def stackable(layers: Sequence[torch.nn.Module]) -> bool:
    """Whether ``layers`` (two or more) can run as one stacked layer (module doc)."""
    if len(layers) < 2 or not all(type(m) is TernaryScaleTensor for m in layers):
        return False
    first = layers[0]
    return all(m.in_features == first.in_features and m.group_size == first.group_size and m.bias is None
               and m.backend == first.backend and m.T_packed.device == first.T_packed.device
               and not m._forward_hooks and not m._forward_pre_hooks for m in layers)


def stack_uses_matmul_fp8(layers: Sequence[TernaryScaleTensor]) -> bool:
    """Whether the stack's forward and grad-x take fp8: every layer asks (``matmul_fp8``) and the stacked shape
    pays (``fp8_matmul_pays``)."""
    return all(m.matmul_fp8 for m in layers) and fp8_matmul_pays(sum(m.out_features for m in layers),
                                                          layers[0].in_features)


def _state_lists(layers: Sequence[TernaryScaleTensor]) -> list[list[torch.Tensor]]:
    """``[T_packed...], [E...], [corr_accum...], [step_counter...], [pending...]`` of ``layers``."""
    return [list(v) for v in zip(*(m._scale_state() for m in layers))]


class _SiblingFn(torch.autograd.Function):
    """``y = cat_i(x @ W_i.T)``; saves only ``x``; backward: one grad-x GEMM, then each layer's own ballot."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, anchor: Optional[torch.Tensor], layers: tuple):
        first = layers[0]
        K = first.in_features
        n_total = sum(m.out_features for m in layers)
        ops = first._ops(x.device)
        fp8 = stack_uses_matmul_fp8(layers)
        y = ops.group_forward(x.reshape(-1, K), *_state_lists(layers), K, first.group_size,
                              [m.strength for m in layers], matmul_fp8=fp8)
        ctx.save_for_backward(x)
        ctx.layers, ctx.fp8, ctx.n_total = layers, fp8, n_total
        return y.reshape(*x.shape[:-1], n_total)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        (x,) = ctx.saved_tensors
        layers = ctx.layers
        first = layers[0]
        K = first.in_features
        need_grad_x = ctx.needs_input_grad[0]
        if not (need_grad_x or any(m.voting for m in layers)):
            return None, None, None
        gy2 = grad_y.reshape(-1, ctx.n_total).to(x.dtype)
        x2 = x.reshape(-1, K)
        ops = first._ops(x.device)
        grad_x = None
        if need_grad_x:  # with the scales of the forward: the ballots are cast after
            grad_x = ops.group_grad_x(gy2, *_state_lists(layers), K, first.group_size, [m.strength for m in layers],
                                      matmul_fp8=ctx.fp8).reshape(x.shape)
        for i, n0, n1 in columns_last_first([m.out_features for m in layers]):
            if layers[i].voting:
                layers[i]._cast_ballot(gy2[:, n0:n1], x2, ops)
        return grad_x, None, None


def sibling_forward(layers: Sequence[torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``cat_i(layer_i(x))`` along the last dimension: ``x [..., K] -> [..., sum N_i]``, stacked into one GEMM
    where ``stackable(layers)`` (module doc), else the layers one by one."""
    if not stackable(layers):
        return torch.cat([m(x) for m in layers], dim=-1)
    check_linear_input(layers[0], x, layers[0].T_packed.device)    # stackable: one width and device for all
    anchors = [m.ballot_anchor(x) for m in layers]
    anchor = next((a for a in anchors if a is not None), None)
    return _SiblingFn.apply(x, anchor, tuple(layers))
