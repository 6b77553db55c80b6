"""Seeded initial integer state: trits and per-group exponents.

Every ternary table (``TernaryScaleTensor``, ``SparseTernaryEmbedding``) starts from these two draws,
made on the CPU from its own ``torch.Generator`` so a model is reproducible from its seed alone.

* ``T``: each weight is 0 with probability ``zero_fraction`` (default 1/3) and +1 / -1 with equal
  probability otherwise.
* ``E``: given the target variance ``s2`` of one entry's scale (``S**2``), each group draws
  ``E = a`` or ``a + 1`` with ``a = floor(log4(s2))`` and ``P(a + 1) = (s2 / 4**a - 1) / 3``, which makes
  the expected ``S**2 = 4**E`` exactly ``s2``. A dense layer wants ``Var(W_eff) = 1 / in_features``; with
  ``T`` as above ``Var(W_eff) = (1 - zero_fraction) * S**2``, so ``s2 = 1 / (in_features * (1 -
  zero_fraction))`` (e.g. ``in_features=512``: ``s2 = 2.93e-3``, ``a = -5``, ``P = 0.69``).
"""
from __future__ import annotations

import math

import torch

from .format import pack_ternary, packed_shape
from .scale import E_MAX, E_MIN

__all__ = ["draw_trits", "draw_exponents", "draw_packed_trits", "dense_scale_variance", "fit_ternary",
           "FIT_THRESHOLDS"]

# thresholds tried by fit_ternary, as multiples of each group's mean |w|
FIT_THRESHOLDS = tuple(i / 16 for i in range(0, 25))

# rows of T drawn (as float) at a time, so a 3B-weight model never materialises a whole float T
_DRAW_ELEMS = 1 << 22


def draw_trits(rows: int, cols: int, zero_fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Seeded initial trits ``[rows, cols]``: 0 with probability ``zero_fraction``, else +-1 equally likely."""
    u = torch.rand(rows, cols, generator=gen, device="cpu")
    return torch.where(u < zero_fraction, 0, torch.where(u < zero_fraction + (1.0 - zero_fraction) / 2, 1, -1))


def draw_packed_trits(rows: int, cols: int, zero_fraction: float, gen: torch.Generator) -> torch.Tensor:
    """``draw_trits`` packed into ``T_packed`` ``[rows, ceil(cols/4)]`` uint8, drawn in row chunks."""
    packed = torch.empty(packed_shape(rows, cols), dtype=torch.uint8, device="cpu")
    step = max(1, _DRAW_ELEMS // cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        packed[r0:r1] = pack_ternary(draw_trits(r1 - r0, cols, zero_fraction, gen))
    return packed


def draw_exponents(s2: float, rows: int, groups: int, gen: torch.Generator) -> torch.Tensor:
    """Seeded int8 exponents ``[rows, groups]`` whose ``4 ** E`` has expectation exactly ``s2``.

    Raises ``ValueError`` if the result would leave ``[E_MIN, E_MAX]``.
    """
    a = math.floor(math.log(s2, 4))
    p_up = (s2 / 4.0 ** a - 1.0) / 3.0
    E = a + (torch.rand(rows, groups, generator=gen, device="cpu") < p_up).to(torch.int64)
    if E.numel() and (E.min() < E_MIN or E.max() > E_MAX):
        raise ValueError(f"initial exponents out of [{E_MIN}, {E_MAX}] (target S**2 = {s2:g})")
    return E.to(torch.int8)


def dense_scale_variance(in_features: int, zero_fraction: float) -> float:
    """The ``S**2`` that gives a dense layer ``Var(W_eff) = 1 / in_features`` (module doc)."""
    return 1.0 / (in_features * (1.0 - zero_fraction))


def fit_ternary(W: torch.Tensor, group_size: int, rows_per_chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T int8 [N, K], E int8 [N, K // group_size])`` whose ``T * 2**E`` is closest to a float weight ``W [N, K]``.

    Per scale group (``group_size`` consecutive entries of a row): for each threshold ``c`` in
    ``FIT_THRESHOLDS`` (multiples of the group's mean ``|w|``), ``T = sign(w) * (|w| > c * mean|w|)``; the best
    continuous scale for that ``T`` is the mean ``|w|`` over its non-zeros, and ``E`` is the better of the two
    powers of two around it. The (threshold, exponent) pair with the smallest squared error wins -- an exact
    search over 25 thresholds x 2 exponents, done on float32 row chunks on ``W``'s device (a 7B model's weights
    on a GPU fit in seconds; on the CPU it takes minutes). An all-zero group gets ``T = 0``.
    """
    if W.dim() != 2 or W.shape[1] % group_size:
        raise ValueError(f"fit_ternary: W must be [N, K] with K divisible by group_size={group_size}, got "
                         f"{tuple(W.shape)}")
    N, K = W.shape
    G = K // group_size
    dev = W.device
    T_out = torch.empty(N, K, dtype=torch.int8, device=dev)
    E_out = torch.empty(N, G, dtype=torch.int8, device=dev)
    cs = FIT_THRESHOLDS
    for r0 in range(0, N, rows_per_chunk):
        w = W[r0:r0 + rows_per_chunk].detach().to(torch.float32).reshape(-1, G, group_size)
        a = w.abs()
        mean = a.mean(-1, keepdim=True)                                          # [R, G, 1]
        best_err = torch.full(w.shape[:2], float("inf"), device=dev)
        best_t = torch.zeros_like(w, dtype=torch.int8)
        best_e = torch.zeros(w.shape[:2], dtype=torch.int64, device=dev)
        total = (w * w).sum(-1)
        for c in cs:
            keep = a > c * mean                                                  # [R, G, gs]
            nnz = keep.sum(-1)
            s = (a * keep).sum(-1) / nnz.clamp_min(1)
            lo = torch.floor(torch.log2(s.clamp_min(2.0 ** E_MIN))).clamp(E_MIN, E_MAX - 1)
            for e in (lo, lo + 1):
                sc = torch.exp2(e)
                # ||w - T * sc||^2 = sum w^2 - 2 sc sum_{kept} |w| + nnz sc^2
                err = total - 2 * sc * (a * keep).sum(-1) + nnz * sc * sc
                err = torch.where(nnz > 0, err, total)
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_e = torch.where(better, e.to(torch.int64), best_e)
                best_t = torch.where(better[..., None], (torch.sign(w) * keep).to(torch.int8), best_t)
        T_out[r0:r0 + w.shape[0]] = best_t.reshape(-1, K)
        E_out[r0:r0 + w.shape[0]] = best_e.to(torch.int8)
    return T_out, E_out


@torch.no_grad()
def load_fit_(T_packed: torch.Tensor, E: torch.Tensor, weight: torch.Tensor, group_size: int) -> None:
    """``fit_ternary(weight)`` written in place into a module's packed trits ``T_packed [N, ceil(K/4)]`` and
    exponents ``E [N, K // group_size]`` (``load_float_weight`` of the layer and of the embedding table)."""
    T, E_fit = fit_ternary(weight, group_size)
    T_packed.copy_(pack_ternary(T).to(T_packed.device))
    E.copy_(E_fit.to(E.device))


def relative_error(approx: torch.Tensor, weight: torch.Tensor) -> float:
    """``||approx - weight|| / ||weight||`` in float32 on ``approx``'s device (the error ``load_float_weight``
    reports)."""
    w = weight.detach().to(approx.device, torch.float32)
    return float((approx.to(torch.float32) - w).norm() / w.norm().clamp_min(1e-30))
