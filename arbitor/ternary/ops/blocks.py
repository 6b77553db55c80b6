"""Row blocks: how the ops bound their float temporaries.

The torch reference ops (and the counter rule's ``grad_W`` pass on every backend) walk the output
features in row blocks, so that the largest float temporary is one ``[block_rows, in_features]`` tile
of ``W_eff`` or ``grad_W`` -- never the whole matrix. ``block_rows = max(1, ARB_TORCH_BLOCK_ELEMS //
in_features)`` with a default budget of 2**22 elements (16 MiB of float32).

The GPU ballots form ``grad_W`` with cuBLAS in row chunks of at most ``ARB_GRADW_CHUNK_ELEMS`` elements
(default 2**26: one whole layer of the ``3b`` preset, 128 MiB in bf16), each chunk freed before the next.

``expand_weight`` forms one such block of ``W_eff = T * S`` from its rows' ``T_packed`` and float32 ``S``;
``columns_last_first`` walks stacked layers' columns in autograd's order, and ``sum_last_first`` sums their grad-x
contributions in it (``sibling.py``).
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, Sequence

import torch

from ..format import unpack_ternary

__all__ = ["block_rows_for", "row_blocks", "gradw_chunk_rows", "expand_weight", "columns_last_first",
           "sum_last_first"]

_DEFAULT_BLOCK_ELEMS = 1 << 22
_DEFAULT_CHUNK_ELEMS = 1 << 26


def block_rows_for(in_features: int, out_features: int) -> int:
    """Rows of ``W_eff`` / ``grad_W`` handled per block (module doc)."""
    raw = os.environ.get("ARB_TORCH_BLOCK_ELEMS", "")
    try:
        budget = int(raw) if raw.strip() else _DEFAULT_BLOCK_ELEMS
    except ValueError:
        budget = 0
    if budget < 1:
        raise ValueError(f"ARB_TORCH_BLOCK_ELEMS must be a positive integer, got {raw!r}")
    return max(1, min(out_features, budget // max(1, in_features)))


def row_blocks(out_features: int, in_features: int):
    """``(n0, n1)`` row ranges covering ``[0, out_features)`` in ``block_rows_for`` steps."""
    step = block_rows_for(in_features, out_features)
    for n0 in range(0, out_features, step):
        yield n0, min(out_features, n0 + step)


def gradw_chunk_rows(out_features: int, in_features: int) -> int:
    """Rows of ``grad_W`` a GPU ballot forms at a time (module doc)."""
    raw = os.environ.get("ARB_GRADW_CHUNK_ELEMS", "")
    try:
        budget = int(raw) if raw.strip() else _DEFAULT_CHUNK_ELEMS
    except ValueError:
        budget = 0
    if budget < 1:
        raise ValueError(f"ARB_GRADW_CHUNK_ELEMS must be a positive integer, got {raw!r}")
    return max(1, min(out_features, budget // max(1, in_features)))


def expand_weight(T_packed: torch.Tensor, S: torch.Tensor, in_features: int, group_size: int,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``W_eff = T * S`` for the given rows: ``T_packed [rows, ceil(K/4)]``, ``S [rows, K/group_size]`` ->
    ``[rows, K]`` of ``dtype``."""
    t = unpack_ternary(T_packed, in_features, torch.float32)
    w = t.view(t.shape[0], -1, group_size) * S.unsqueeze(-1)
    return w.view(t.shape[0], in_features).to(dtype)


def columns_last_first(widths: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """``(i, n0, n1)`` of layers stacked along columns (``widths`` theirs), from the last layer to the first: the
    order in which autograd runs the layers' backwards when they run one by one."""
    n1 = sum(widths)
    for i in reversed(range(len(widths))):
        yield i, n1 - widths[i], n1
        n1 -= widths[i]


def sum_last_first(grad_y: torch.Tensor, widths: Sequence[int],
                   grad_x_of: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``sum_i grad_x_of(i, grad_y[:, cols_i])`` for layers stacked along ``grad_y``'s columns (``widths`` theirs),
    added from the last layer to the first (``columns_last_first``): the order in which autograd sums the layers'
    gradients when they run one by one, so a stack gives the same bits."""
    grad_x = None
    for i, n0, n1 in columns_last_first(widths):
        g = grad_x_of(i, grad_y[:, n0:n1])
        grad_x = g if grad_x is None else grad_x + g
    return grad_x
