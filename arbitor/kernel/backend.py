"""Backend choice for the ternary linear ops: ``ARB_TERNARY_BACKEND``.

Values:
* ``torch``    -- the plain-torch reference (``reference_ops.py``); any device.
* ``triton``   -- fused Triton kernels (``triton_ops.py``); CUDA tensors, or CPU
                  tensors under ``TRITON_INTERPRET=1`` (slow; for testing).
* ``tilelang`` -- refused with an error: the spec disables the TileLang dense path
                  for BigInt training until its kernels accept ``corr_accum`` and
                  ``step_counter``; running the old fp16 TileLang path would silently
                  stop ternary training, so arbitor never falls back to it.
* ``auto``     -- (default) ``triton`` for CUDA tensors when Triton imports, ``torch``
                  otherwise.

Every backend implements the same two calls (``TernaryOps``): a forward and a
backward that returns ``grad_x`` and *adds* the integer votes straight into
``corr_accum`` (after ``grad_x`` has been computed with the pre-vote scale).
"""
from __future__ import annotations

import functools
import os
from typing import Optional, Protocol

import torch

from . import reference_ops
from .bigint_scale import bigint_scale

__all__ = ["BACKENDS", "TernaryOps", "TorchTernaryOps", "requested_backend", "resolve_backend", "get_ops"]

BACKENDS = ("torch", "triton", "tilelang", "auto")


class TernaryOps(Protocol):
    name: str

    def linear_forward(self, x: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                       step_counter: torch.Tensor, pending: int, in_features: int, group_size: int,
                       strength: float) -> torch.Tensor:
        """``x [M, K] -> y [M, N]`` with ``W_eff`` expanded from the integer state."""

    def linear_backward(self, grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor,
                        corr_accum: torch.Tensor, step_counter: torch.Tensor, pending: int, in_features: int,
                        group_size: int, strength: float, need_grad_x: bool, cast_votes: bool) -> Optional[torch.Tensor]:
        """Return ``grad_x [M, K]`` (or None) and add the votes ``[N, G]`` into ``corr_accum``."""


class TorchTernaryOps:
    """The plain-torch reference backend (block by block, float32 math)."""

    name = "torch"

    def linear_forward(self, x, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength):
        S = bigint_scale(E, corr_accum, step_counter + pending, group_size, strength)
        return reference_ops.ternary_linear_forward(x, T_packed, S, in_features, group_size)

    def linear_backward(self, grad_y, x, T_packed, E, corr_accum, step_counter, pending, in_features, group_size,
                        strength, need_grad_x, cast_votes):
        S = bigint_scale(E, corr_accum, step_counter + pending, group_size, strength) if need_grad_x else None
        grad_x, votes = reference_ops.ternary_linear_backward(
            grad_y, x, T_packed, S, in_features, group_size, need_grad_x=need_grad_x, need_votes=cast_votes)
        if votes is not None:
            corr_accum.add_(votes)
        return grad_x


def requested_backend(name: Optional[str] = None) -> str:
    """The backend asked for (argument, else ``ARB_TERNARY_BACKEND``, else ``auto``), validated."""
    raw = name if name is not None else os.environ.get("ARB_TERNARY_BACKEND", "auto")
    value = raw.strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"ARB_TERNARY_BACKEND must be one of {', '.join(BACKENDS)}; got {raw!r}")
    if value == "tilelang":
        raise RuntimeError(
            "ARB_TERNARY_BACKEND=tilelang is disabled for BigInt training: the TileLang kernels do not yet read "
            "corr_accum/step_counter nor accumulate integer correlations, and the old fp16 TileLang path would "
            "silently stop ternary training. Use 'triton' (CUDA) or 'torch'.")
    return value


@functools.lru_cache(maxsize=None)
def _triton_available() -> bool:
    try:
        from . import triton_ops  # noqa: F401
    except Exception:  # pragma: no cover - depends on the installation
        return False
    return True


def resolve_backend(device: torch.device, name: Optional[str] = None) -> str:
    """Concrete backend (``torch`` or ``triton``) for tensors on ``device``."""
    value = requested_backend(name)
    if value == "auto":
        return "triton" if device.type == "cuda" and _triton_available() else "torch"
    if value == "triton":
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise RuntimeError(
                f"ARB_TERNARY_BACKEND=triton needs CUDA tensors (got device {device}); "
                "set TRITON_INTERPRET=1 to run the kernels on the CPU interpreter, or use 'torch'/'auto'")
        if not _triton_available():
            raise RuntimeError("ARB_TERNARY_BACKEND=triton but arbitor.kernel.triton_ops could not be imported "
                               "(is triton installed? pip install 'arbitor[triton]')")
    return value


_TORCH_OPS = TorchTernaryOps()


def get_ops(device: torch.device, name: Optional[str] = None) -> TernaryOps:
    """The ops object for ``device`` and the requested backend."""
    if resolve_backend(device, name) == "torch":
        return _TORCH_OPS
    from . import triton_ops
    return triton_ops.TRITON_OPS
