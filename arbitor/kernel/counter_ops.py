"""The ``counter`` rule's per-ballot work (``update_rules.py``): launcher and torch reference.

``counter_update_(grad_y, x, T_packed, C_packed, corr_accum, key, ballot, ..., backend)`` walks
the output rows in blocks. For each block it forms ``grad_W = grad_y.T @ x`` (``[rows,
in_features]`` float32, cuBLAS on CUDA, freed after the block) and the per-row step scale
``rate / rms(grad_W[n, :])``, then, per weight:

* adds the BigInt scale votes ``-sum_group sign(grad_W) * T`` (with the trits of the forward)
  into ``corr_accum``;
* draws the counter-hashed uniform ``u`` and moves the ladder position ``p = (T + 1) * L + C``
  by its stochastically rounded, row-normalised step (``update_rules.counter_block``);
* writes ``T_packed`` / ``C_packed`` back in place.

One ``grad_W`` pass serves both the scales and the trits, so the layer skips the backend's
separate correlation kernel. ``backend="torch"`` does the per-weight part with plain torch ops
(``torch_counter_block_``, the reference); ``backend="triton"`` with one fused kernel
(``counter_triton.py``). Both give the same integers for the same ``grad_W``.

Blocks keep the float temporaries to ``ARB_TORCH_BLOCK_ELEMS`` elements (default 2**22,
``reference_ops.block_rows_for``).
"""
from __future__ import annotations

import torch

from .packing import pack_counters, pack_ternary, unpack_counters, unpack_ternary
from .reference_ops import block_rows_for
from .update_rules import counter_block, counter_step_scale, counter_uniform

__all__ = ["counter_update_", "torch_counter_block_"]


def torch_counter_block_(gw: torch.Tensor, scale: torch.Tensor, T_packed: torch.Tensor, C_packed: torch.Tensor,
                         corr_accum: torch.Tensor, key: int, ballot: int, row0: int, in_features: int,
                         group_size: int, bits: int) -> None:
    """The reference per-weight step of one row block (same contract as ``triton_counter_block_``)."""
    rows = gw.shape[0]
    t = unpack_ternary(T_packed, in_features)
    vote = (torch.sign(gw).to(torch.int8) * t).view(rows, -1, group_size).sum(-1, dtype=torch.int64)
    corr_accum -= vote
    c = unpack_counters(C_packed, in_features, bits)
    u = counter_uniform(key, ballot, row0, row0 + rows, in_features, gw.device)
    t_new, c_new = counter_block(t, c, gw, u, 0.0, bits, scale=scale)
    T_packed.copy_(pack_ternary(t_new, check=False))  # in range by construction
    C_packed.copy_(pack_counters(c_new, bits, check=False))


def counter_update_(grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor, C_packed: torch.Tensor,
                    corr_accum: torch.Tensor, key: int, ballot: int, in_features: int, group_size: int, bits: int,
                    rate: float, backend: str = "torch") -> None:
    """Apply one ballot of the ``counter`` rule in place.

    Args:
        grad_y: ``[tokens, out_features]`` upstream gradient.
        x: ``[tokens, in_features]`` the layer's input.
        T_packed: ``[out_features, ceil(in_features/4)]`` uint8 (moved in place).
        C_packed: ``[out_features, ceil(in_features*bits/8)]`` uint8 (moved in place).
        corr_accum: ``[out_features, in_features/group_size]`` int64 (this ballot's votes are added).
        key, ballot: the hash key (``flip_key``) and this ballot's index (``step_counter + pending``).
        rate: rungs per unit of row-RMS gradient (0: only the scale votes are cast).
        backend: ``"torch"`` or ``"triton"`` for the per-weight step.
    """
    if backend == "triton":
        from .counter_triton import triton_counter_block_ as block_fn
    elif backend == "torch":
        block_fn = torch_counter_block_
    else:
        raise ValueError(f"counter_update_: backend must be 'torch' or 'triton', got {backend!r}")
    n_out = T_packed.shape[0]
    gy = grad_y.to(x.dtype)
    step = block_rows_for(in_features, n_out)
    for n0 in range(0, n_out, step):
        n1 = min(n_out, n0 + step)
        gw = (gy[:, n0:n1].t() @ x).to(torch.float32).contiguous()
        scale = counter_step_scale(gw, rate)  # rate 0: scale 0, every floor(0 + u) is 0 -- votes only
        block_fn(gw, scale, T_packed[n0:n1], C_packed[n0:n1], corr_accum[n0:n1], key, ballot, n0, in_features,
                 group_size, bits)
