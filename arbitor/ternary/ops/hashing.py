"""Counter-based uniforms: a pure function of (key, ballot, row, column), no RNG state.

The ``counter`` rule rounds each weight's step stochastically with a uniform drawn here. Drawing it
from a hash of the weight's coordinates instead of a generator keeps the draw a function of the
integer state alone: runs are reproducible, resume bit-exactly, and a ballot gives the same draws on
any device and in any process (the Triton kernel ``counter_triton.py`` computes the same hash with
``triton_common.mix32u``).

    base = hash_base(key, ballot)
    h    = mix32(mix32(lo32(idx) ^ base) ^ hi32(idx))      idx = row * in_features + column
    u    = (h >> 8) * 2**-24                               exact in float32, in [0, 1 - 2**-24]
"""
from __future__ import annotations

import torch

__all__ = ["mix32", "hash_base", "counter_uniform", "uniform_from_base"]

_M32 = 0xFFFFFFFF


def mix32(x):
    """lowbias32 (C. Wellons): a bijective 32-bit hash; works on Python ints and on int64 tensors in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def hash_base(key, ballot):
    """The per-ballot 32-bit hash seed of ``counter_uniform``, in ``[0, 2**32)``: Python ints, or int64 tensors
    (0-d, on the layer's device: ``key`` the layer's ``hash_key``, ``ballot`` its ballot index) computed there."""
    return mix32(mix32((key & _M32) ^ mix32((key >> 32) & _M32)) ^ (ballot & _M32) ^ mix32((ballot >> 32) & _M32))


def counter_uniform(key, ballot, n0: int, n1: int, in_features: int, device: torch.device) -> torch.Tensor:
    """Uniform floats in [0, 1) for rows ``n0 .. n1`` of a layer: float32 ``[n1-n0, in_features]`` (module doc).

    ``key`` and ``ballot``: Python ints or int64 tensors (see ``hash_base``)."""
    return uniform_from_base(hash_base(key, ballot), n0, n1, in_features, device)


def uniform_from_base(base, n0: int, n1: int, in_features: int, device: torch.device) -> torch.Tensor:
    """``counter_uniform`` given the ballot's ``hash_base`` (a Python int or an int64 0-d tensor)."""
    idx = torch.arange(n0 * in_features, n1 * in_features, dtype=torch.int64, device=device)
    h = mix32(mix32((idx & _M32) ^ base) ^ ((idx >> 32) & _M32))
    return ((h >> 8).to(torch.float32) * 2.0 ** -24).view(n1 - n0, in_features)
