"""The ``counter`` rule's per-weight step (``update_rules.py``), one ballot at a time.

``counter_update_(grad_y, x, T_packed, C_packed, corr_accum, key, ballot, ...)`` walks the
output rows in blocks; for each block it forms ``grad_W = grad_y.T @ x`` (``[rows,
in_features]`` float32, freed after the block), adds the BigInt scale votes
``-sum_group sign(grad_W) * T`` (with the trits of the forward) into ``corr_accum``, draws
the counter-hashed uniforms and moves every position ``p = (T + 1) * L + C`` by its
stochastically rounded, row-normalised step (``update_rules.counter_block``), writing
``T_packed`` / ``C_packed`` back in place. One ``grad_W`` pass serves both the scales and
the trits, so the layer skips the backend's separate correlation kernel.

The block keeps the float temporaries to ``ARB_TORCH_BLOCK_ELEMS`` elements (default 2**22,
``reference_ops.block_rows_for``), as the reference backward does. On CUDA the ``grad_W``
block comes from cuBLAS (tf32/bf16 as torch's matmul settings say); the step itself is
elementwise and exact integer arithmetic given ``grad_W`` and the uniforms.
"""
from __future__ import annotations

import torch

from .packing import pack_counters, pack_ternary, unpack_counters, unpack_ternary
from .reference_ops import block_rows_for
from .update_rules import counter_block, counter_uniform

__all__ = ["counter_update_"]


def counter_update_(grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor, C_packed: torch.Tensor,
                    corr_accum: torch.Tensor, key: int, ballot: int, in_features: int, group_size: int, bits: int,
                    rate: float) -> None:
    """Apply one ballot of the ``counter`` rule in place.

    Args:
        grad_y: ``[tokens, out_features]`` upstream gradient.
        x: ``[tokens, in_features]`` the layer's input.
        T_packed: ``[out_features, ceil(in_features/4)]`` uint8 (moved in place).
        C_packed: ``[out_features, ceil(in_features*bits/8)]`` uint8 (moved in place).
        corr_accum: ``[out_features, in_features/group_size]`` int64 (this ballot's votes are added).
        key, ballot: the hash key (``flip_key``) and this ballot's index (``step_counter + pending``).
    """
    n_out = T_packed.shape[0]
    dt = torch.float32 if x.dtype == torch.float32 else x.dtype
    gy = grad_y.to(dt)
    xx = x.to(dt)
    step = block_rows_for(in_features, n_out)
    for n0 in range(0, n_out, step):
        n1 = min(n_out, n0 + step)
        gw = (gy[:, n0:n1].t() @ xx).to(torch.float32)
        t = unpack_ternary(T_packed[n0:n1], in_features)
        vote = (torch.sign(gw).to(torch.int8) * t).view(n1 - n0, -1, group_size).sum(-1, dtype=torch.int64)
        corr_accum[n0:n1] -= vote
        if rate == 0:
            continue
        c = unpack_counters(C_packed[n0:n1], in_features, bits)
        u = counter_uniform(key, ballot, n0, n1, in_features, gw.device)
        t_new, c_new = counter_block(t, c, gw, u, rate, bits)
        T_packed[n0:n1] = pack_ternary(t_new, check=False)  # in range by construction
        C_packed[n0:n1] = pack_counters(c_new, bits, check=False)
