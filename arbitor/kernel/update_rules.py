"""The integer update rules besides the spec's BigInt default (torch reference implementations).

``TernaryScaleTensor(update=...)`` picks one:

``"bigint"`` (default, the spec): ``T`` and ``E`` fixed; per-group votes stream into
    ``corr_accum`` (``ternary_scale.py``).

``"legacy"`` (the spec's original rule, kept for comparison): per-weight int8
    ``T_accum`` and per-group int16 ``E_accum`` sign accumulators; ``S = 2 ** E``.
    Backward adds ``-sign(dL/dW)`` to ``T_accum`` (saturating at +-127) and the group
    vote ``-sum sign(dL/dW) * T`` to ``E_accum`` (saturating at +-32767). The per-step
    call moves a trit one step (-1 -> 0 -> +1 or back) where ``|T_accum| >= t_threshold``
    and resets that accumulator, and steps ``E`` by +-1 where ``|E_accum| >= e_threshold``
    (then resets it). A trit already at the end it is pushed to keeps its accumulator.
    Defaults ``t_threshold = 4``, ``e_threshold = 4 * group_size`` -- the same rule and
    numbers as the legacy sparse embedding (``arbitor/embedding.py``).
    State: 0.25 + 1 byte per weight + 3 bytes per group.

``"flip"`` (arbitor's gap-closing mode): BigInt scales as in ``"bigint"``, plus trits that
    move by stochastic rounding of a normalised gradient step, drawn from a counter-based
    hash so that no per-weight state exists at all. For each weight of row ``n``::

        g        = dL/dW_eff[n, k]                    (one block of grad_W, never stored)
        p        = min(1, flip_rate * |g| / rms(g[n, :]))
        u        = hash(flip_key, ballot, n, k) / 2**32   (uniform in [0, 1))
        T[n, k] <- clamp(T[n, k] - sign(g), -1, 1)   if u < p

    In expectation that is a step of ``flip_rate`` trits per unit of row-normalised
    gradient (an RMS-normalised SGD step rounded stochastically to the ternary grid).
    ``ballot`` is ``step_counter + pending``, so the draw is a pure function of the
    integer state: runs are reproducible and resume bit-exactly. State: the BigInt
    state (0.25 bytes per weight + 9 bytes per group) + one int64 ``flip_key``.

``"counter"`` (arbitor's gap-closing mode, issue 6): BigInt scales as in ``"bigint"``, plus
    trits driven by a small packed per-weight counter ``C`` of ``b = counter_bits`` bits
    (``C_packed``, ``packing.py``). Trit and counter together are one integer *position* on a
    ladder of ``3 * L`` rungs, ``L = 2**b``::

        p = (T + 1) * L + C          T = p // L - 1,  C = p % L,   p in [0, 3L)

    so each trit value owns ``L`` consecutive rungs. Every ballot moves each position by a
    stochastically rounded, row-normalised gradient step::

        g     = dL/dW_eff[n, k]                      (one block of grad_W, never stored)
        a     = counter_rate * |g| / rms(g[n, :])    (rungs; its expectation is the step)
        steps = floor(a + u),  u = hash(flip_key, ballot, n, k) / 2**32
        p    <- clamp(p - sign(g) * steps, 0, 3L - 1)

    ``E[steps] = a`` exactly (for ``a < 3L``), so in expectation this is SGD with a per-row
    RMS-normalised step of ``counter_rate`` rungs on a latent integer weight, whose
    ternary read-out is ``T``. The ``L`` rungs inside a trit are what ``"flip"`` lacks: a
    weight must collect about ``L`` rungs of net drift before its trit changes, so gradient
    noise no longer flips trits back and forth, and a saturated ``+-1`` needs ``L`` opposite
    rungs to come back (hysteresis, like the clipped latent weight of QAT). Initial ``C`` is
    ``L // 2`` (the middle of each trit's rungs). State: the BigInt state + ``b / 8`` bytes
    per weight + ``flip_key``; ``b = 2`` with group 32 is 0.25 + 0.25 + 9/32 = 0.78 bytes
    per weight.
"""
from __future__ import annotations

import torch

from .bigint_scale import E_MAX, E_MIN
from .packing import pack_ternary, unpack_ternary

__all__ = ["UPDATE_RULES", "hash_base", "counter_uniform", "flip_block", "counter_step_scale", "counter_block",
           "legacy_accumulate_block", "legacy_apply"]

UPDATE_RULES = ("bigint", "legacy", "flip", "counter")
_M32 = 0xFFFFFFFF


def _mix32(x):
    """lowbias32 (C. Wellons): a bijective 32-bit hash; works on Python ints and on int64 tensors in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def hash_base(key: int, ballot: int) -> int:
    """The per-ballot 32-bit hash seed of ``counter_uniform`` (a Python int in ``[0, 2**32)``)."""
    return _mix32(_mix32((key & _M32) ^ _mix32((key >> 32) & _M32)) ^ (ballot & _M32) ^ _mix32((ballot >> 32) & _M32))


def counter_uniform(key: int, ballot: int, n0: int, n1: int, in_features: int, device: torch.device) -> torch.Tensor:
    """Uniform floats in [0, 1), ``[n1-n0, in_features]``: a pure function of (key, ballot, row, column).

    ``u = (h >> 8) * 2**-24`` for the 32-bit hash ``h`` of the weight's global index
    ``row * in_features + column``: exact in float32, in ``[0, 1 - 2**-24]``.
    """
    base = hash_base(key, ballot)
    idx = torch.arange(n0 * in_features, n1 * in_features, dtype=torch.int64, device=device)
    h = _mix32(_mix32((idx & _M32) ^ base) ^ ((idx >> 32) & _M32))
    return ((h >> 8).to(torch.float32) * 2.0 ** -24).view(n1 - n0, in_features)


def flip_block(t: torch.Tensor, gw: torch.Tensor, u: torch.Tensor, flip_rate: float) -> torch.Tensor:
    """New trits for one row block: ``t``/``gw``/``u`` ``[rows, K]`` float32 -> int8 ``[rows, K]``."""
    rms = gw.pow(2).mean(dim=1, keepdim=True).sqrt_().clamp_min_(1e-30)
    p = (gw.abs() * (flip_rate / rms)).clamp_(max=1.0)
    move = torch.where(u < p, -torch.sign(gw), torch.zeros((), device=gw.device))
    return (t + move).clamp_(-1, 1).to(torch.int8)


def counter_step_scale(gw: torch.Tensor, rate: float) -> torch.Tensor:
    """``rate / rms(gw[n, :])`` per row, ``[rows]`` float32 (shared by the torch and Triton steps)."""
    rms = gw.pow(2).mean(dim=1).sqrt_().clamp_min_(1e-30)
    return torch.full_like(rms, rate).div_(rms)


def counter_block(t: torch.Tensor, c: torch.Tensor, gw: torch.Tensor, u: torch.Tensor, rate: float,
                  bits: int, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One ballot of the ``counter`` rule for a row block (module doc).

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


def legacy_accumulate_block(T_accum: torch.Tensor, E_accum: torch.Tensor, gw: torch.Tensor, t: torch.Tensor,
                            group_size: int) -> None:
    """Add one ballot into ``T_accum [rows, K]`` int8 and ``E_accum [rows, G]`` int16 (saturating)."""
    sgn = torch.sign(gw)
    ta = T_accum.to(torch.int16) - sgn.to(torch.int16)
    T_accum.copy_(ta.clamp_(-127, 127))
    vote = -(sgn * t).view(t.shape[0], -1, group_size).sum(-1)
    ea = E_accum.to(torch.int32) + vote.to(torch.int32)
    E_accum.copy_(ea.clamp_(-32767, 32767))


def legacy_apply(T_packed: torch.Tensor, E: torch.Tensor, T_accum: torch.Tensor, E_accum: torch.Tensor,
                 in_features: int, t_threshold: int, e_threshold: int, block_rows: int) -> int:
    """The legacy per-step update over all rows, block by block; returns the number of trits moved."""
    moved_total = 0
    for n0 in range(0, T_packed.shape[0], block_rows):
        n1 = min(T_packed.shape[0], n0 + block_rows)
        ta = T_accum[n0:n1]
        up = ta >= t_threshold
        down = ta <= -t_threshold
        if bool(up.any() or down.any()):
            t = unpack_ternary(T_packed[n0:n1], in_features, torch.int8)
            up &= t < 1
            down &= t > -1
            moved = up | down
            T_packed[n0:n1] = pack_ternary(t + up.to(torch.int8) - down.to(torch.int8))
            ta.masked_fill_(moved, 0)
            moved_total += int(moved.sum())
        ea = E_accum[n0:n1]
        e_up = ea >= e_threshold
        e_down = ea <= -e_threshold
        if bool(e_up.any() or e_down.any()):
            e = E[n0:n1].to(torch.int16) + e_up.to(torch.int16) - e_down.to(torch.int16)
            E[n0:n1] = e.clamp_(E_MIN, E_MAX).to(torch.int8)
            ea.masked_fill_(e_up | e_down, 0)
    return moved_total
