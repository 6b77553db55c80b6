"""The ``counter`` rule's per-ballot op, plain-torch reference (the rule itself: ``rules/counter.py``).

``counter_ballot_(grad_y, x, T_packed, C_packed, corr_accum, step_counter, pending, nonfinite, hash_key, ...,
impl)`` walks the output rows in blocks (``blocks.py``). For each block it forms ``grad_W = grad_y.T @ x`` (``[rows,
in_features]`` float32, cuBLAS on CUDA, freed after the block) and the per-row step scale
``rate / rms(grad_W[n, :])``, then, per weight:

* adds the BigInt scale votes (``votes.group_votes``, with the trits of the forward) into ``corr_accum``;
* draws the counter-hashed uniform ``u`` (``hashing.counter_uniform``) and moves the ladder position
  ``p = (T + 1) * L + C`` by its stochastically rounded, row-normalised step (``counter_block``);
* writes ``T_packed`` / ``C_packed`` back in place.

One ``grad_W`` pass serves both the scales and the trits, so this rule needs no separate vote op. The
ballot's index (``step_counter + pending``) and its hash base stay on the device, and a ballot with a
non-finite ``grad_y`` or ``x`` moves nothing and is counted in ``nonfinite`` (``votes.ballot_ok``).
``impl="torch"`` does the per-weight part with plain torch ops (``counter_block_torch_``, the
reference); ``impl="triton"`` with one fused kernel (``counter_triton.py``). Both give the same
integers for the same ``grad_W``.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..format import pack_counters, pack_ternary, unpack_counters, unpack_ternary
from .blocks import block_rows_for, gradw_chunk_rows
from .gradw import fp32_operands, gradw_chunks, use_fp8
from .hashing import hash_base, uniform_from_base
from .votes import ballot_ok, count_ballot_, group_votes

__all__ = ["counter_step_scale", "counter_block", "counter_block_torch_", "counter_ballot_"]


def counter_step_scale(gw: torch.Tensor, rate: float | torch.Tensor) -> torch.Tensor:
    """``rate / rms(gw[n, :])`` per row, ``[rows]`` float32 (shared by the torch and Triton steps). ``rate``: a
    float or a float32 0-d tensor on ``gw``'s device (the same bits: a float is rounded to float32 as well)."""
    rms = gw.pow(2).mean(dim=1).sqrt_().clamp_min_(1e-30)
    if isinstance(rate, torch.Tensor):
        return torch.div(rate, rms)
    return torch.full_like(rms, rate).div_(rms)


def counter_block(t: torch.Tensor, c: torch.Tensor, gw: torch.Tensor, u: torch.Tensor, rate: float,
                  bits: int, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One ballot's ladder step for a row block (``rules/counter.py``).

    Args:
        t: ``[rows, K]`` trits (any real dtype holding -1/0/+1).
        c: ``[rows, K]`` counters in ``[0, 2**bits)``.
        gw: ``[rows, K]`` float32 block of ``dL/dW_eff``.
        u: ``[rows, K]`` float32 uniforms in ``[0, 1)``.
        scale: ``counter_step_scale(gw, rate)`` if already computed.
    Returns:
        ``(new trits int8 [rows, K], new counters int16 [rows, K])``.
    """
    levels = 1 << bits
    top = 3 * levels - 1
    if scale is None:
        scale = counter_step_scale(gw, rate)
    steps = torch.floor(gw.abs() * scale[:, None] + u).clamp_(max=top).to(torch.int32)
    p = (t.to(torch.int32) + 1) * levels + c.to(torch.int32)
    p = (p - torch.sign(gw).to(torch.int32) * steps).clamp_(0, top)
    t_new = torch.div(p, levels, rounding_mode="floor")
    return (t_new - 1).to(torch.int8), (p - t_new * levels).to(torch.int16)


def counter_block_torch_(gw: torch.Tensor, scale: torch.Tensor, T_packed: torch.Tensor, C_packed: torch.Tensor,
                         corr_accum: torch.Tensor, hash_key: torch.Tensor, step_counter: torch.Tensor,
                         pending: torch.Tensor, bad: torch.Tensor, row0: int, in_features: int, group_size: int,
                         bits: int) -> None:
    """The reference per-weight step of one row block, in place (same contract as ``counter_block_triton_``).

    ``gw [rows, K]`` float, ``scale [rows]`` float32; ``T_packed``/``C_packed``/``corr_accum`` are the block's
    rows; the ballot's hash base is ``hashing.hash_base(hash_key, step_counter + pending)``; ``bad``: 0-d,
    nonzero when the ballot does not count; ``row0`` is the block's first row in the layer (the hash index is
    global).
    """
    rows = gw.shape[0]
    gw = gw.to(torch.float32)
    ok = bad == 0
    base = hash_base(hash_key, step_counter + pending)
    t = unpack_ternary(T_packed, in_features)
    corr_accum += group_votes(gw, t, group_size) * ok
    c = unpack_counters(C_packed, in_features, bits)
    u = uniform_from_base(base, row0, row0 + rows, in_features, gw.device)
    t_new, c_new = counter_block(t, c, gw, u, 0.0, bits, scale=scale)
    T_packed.copy_(torch.where(ok, pack_ternary(t_new, check=False), T_packed))  # in range by construction
    C_packed.copy_(torch.where(ok, pack_counters(c_new, bits, check=False), C_packed))


def _block_fn(impl: str):
    if impl == "triton":
        from .counter_triton import counter_block_triton_
        return counter_block_triton_
    if impl == "torch":
        return counter_block_torch_
    raise ValueError(f"counter_ballot_: impl must be 'torch' or 'triton', got {impl!r}")


def counter_ballot_(grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor, C_packed: torch.Tensor,
                    corr_accum: torch.Tensor, step_counter: torch.Tensor, pending: torch.Tensor,
                    nonfinite: torch.Tensor, hash_key: torch.Tensor, in_features: int, group_size: int, bits: int,
                    rate: float | torch.Tensor, impl: str = "torch", gradw_fp8: bool = False) -> None:
    """Apply one ballot of the ``counter`` rule in place.

    Args:
        grad_y: ``[tokens, out_features]`` upstream gradient.
        x: ``[tokens, in_features]`` the layer's input.
        T_packed: ``[out_features, ceil(in_features/4)]`` uint8 (moved in place).
        C_packed: ``[out_features, ceil(in_features*bits/8)]`` uint8 (moved in place).
        corr_accum: ``[out_features, in_features/group_size]`` int64 (this ballot's votes are added).
        step_counter, pending, nonfinite: the layer's int64 0-d counters (``pending`` or ``nonfinite`` +1).
        hash_key: the layer's int64 0-d hash key; the ballot's index is ``step_counter + pending``.
        rate: rungs per unit of row-RMS gradient (0: only the scale votes are cast); a float or a float32 0-d
            tensor on the device (a layer passes its ``rate`` buffer: a schedule changes it without a recompile or
            a new CUDA graph).
        impl: ``"torch"`` or ``"triton"`` for the per-weight step.
        gradw_fp8: form ``grad_W`` from fp8 operands where the layer's shape allows (``gradw.py``).
    """
    block_fn = _block_fn(impl)
    bad, blocks = gradw_blocks(grad_y, x, T_packed.shape[0], in_features, rate, impl, gradw_fp8)
    for n0, gw, scale in blocks:
        n1 = n0 + gw.shape[0]
        block_fn(gw, scale, T_packed[n0:n1], C_packed[n0:n1], corr_accum[n0:n1], hash_key, step_counter, pending,
                 bad, n0, in_features, group_size, bits)
    if impl == "triton":
        from .counter_triton import count_ballot_triton_
        count_ballot_triton_(bad, pending, nonfinite)
    else:
        count_ballot_(bad == 0, pending, nonfinite)


def gradw_blocks(grad_y: torch.Tensor, x: torch.Tensor, out_features: int, in_features: int,
                 rate: float | torch.Tensor, impl: str,
                 gradw_fp8: bool = False) -> tuple[torch.Tensor, Iterator[tuple[int, torch.Tensor, torch.Tensor]]]:
    """One ballot's ``grad_W = grad_y.T @ x`` in row blocks, with each block's row scale (the counter rule's
    online step and its step-boundary gather share it).

    Returns ``bad`` (int32 0-d, nonzero when the ballot must not count) and an iterator of
    ``(row0, gw [rows, in_features], scale [rows] float32)``. Blocks of ``gradw_rows(impl, ...)`` rows, formed as
    ``gradw.py`` says (``gradw_fp8``: from fp8 operands where the layer's shape allows); on the GPU path a single
    16-bit chunk (always 16-bit with fp8) stays in its dtype and its row-scale kernel also sets ``bad`` on a
    non-finite entry (no separate check); otherwise ``gw`` is float32 and ``bad`` comes from ``ballot_ok``.
    ``bad`` is final only once the iterator is exhausted.
    """
    fp8 = use_fp8(gradw_fp8, out_features, in_features, x.device)
    step = gradw_rows(impl, out_features, in_features)
    fused_flag = impl == "triton" and (fp8 or x.dtype != torch.float32) and step >= out_features
    if fused_flag:   # one 16-bit grad_W chunk: its row-scale pass also finds a non-finite entry
        bad = torch.zeros((), dtype=torch.int32, device=x.device)
    else:
        bad = (~ballot_ok(grad_y, x)).to(torch.int32)

    def blocks() -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        if impl == "triton":
            chunks = gradw_chunks(grad_y.to(x.dtype), x, step, fp8, bad)
        else:
            gy, xf = fp32_operands(grad_y, x, True) if fp8 else (grad_y.to(x.dtype), x)
            chunks = ((n0, gy[:, n0:min(out_features, n0 + step)].t() @ xf) for n0 in range(0, out_features, step))
        for n0, gw in chunks:
            if fused_flag:
                from .counter_triton import row_scale_triton
                yield n0, gw, row_scale_triton(gw, rate, bad)
            else:
                gw = gw.to(torch.float32).contiguous()
                yield n0, gw, counter_step_scale(gw, rate)  # rate 0: scale 0, floor(0 + u) is 0 -- votes only
    return bad, blocks()


def gradw_rows(impl: str, out_features: int, in_features: int) -> int:
    """Rows of ``grad_W`` per block: the torch reference's float32 budget or the GPU path's chunk (``blocks.py``)."""
    if impl == "triton":
        return gradw_chunk_rows(out_features, in_features)
    return block_rows_for(in_features, out_features)
