"""Which implementation runs the ternary ops: ``ARB_TERNARY_BACKEND`` and the ``TernaryOps`` table.

Every op the ternary layers call exists as a plain-torch reference and as a Triton kernel, with one
signature (``TernaryOps``):

========================  =====================================  =============================================
op                        torch reference                        Triton (CUDA)
========================  =====================================  =============================================
``linear_forward``        ``linear.linear_forward_torch``        ``linear_triton.ternary_forward``: fused kernel
                                                                 up to 16 rows, else expand ``W_eff`` + cuBLAS
``linear_grad_x``         ``linear.linear_grad_x_torch``         ``linear_triton.ternary_grad_x`` (the same)
``bigint_ballot_``        ``votes.bigint_ballot_torch_``         ``votes_triton.bigint_ballot_triton_``: cuBLAS
                                                                 ``grad_W`` chunks + a vote kernel
``counter_ballot_``       ``counter.counter_block_torch_``       ``counter_triton.counter_block_triton_``
========================  =====================================  =============================================

(the Triton ops go through the ``torch.library`` custom ops of ``library.py``, so ``torch.compile`` sees
one opaque node per op). No op reads a value back to the host: the ballot counters (``pending``,
``nonfinite``) and the decision to skip a non-finite ballot stay on the device.

Values of ``ARB_TERNARY_BACKEND`` (or a layer's ``backend=``):

* ``torch``    -- the references; any device.
* ``triton``   -- the kernels; CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (slow; tests).
* ``tilelang`` -- refused with an error: the spec disables the TileLang dense path for BigInt training
  until its kernels accept ``corr_accum`` and ``step_counter``; running the old fp16 TileLang path would
  silently stop ternary training, so arbitor never falls back to it.
* ``auto``     -- (default) ``triton`` for CUDA tensors when Triton imports, ``torch`` otherwise.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .counter import counter_ballot_
from .linear import (decode_forward_torch, linear_forward_torch, linear_grad_x_torch, linear_group_forward_torch,
                     linear_group_grad_x_torch)
from .votes import bigint_ballot_torch_

__all__ = ["BACKENDS", "TernaryOps", "TORCH_OPS", "requested_backend", "resolve_backend", "get_ops"]

BACKENDS = ("torch", "triton", "tilelang", "auto")


@dataclass(frozen=True)
class TernaryOps:
    """One implementation of every ternary op (module doc). All operands are 2-D.

    * ``linear_forward(x [M, K], T_packed, E, corr_accum, step_counter, pending, in_features, group_size,
      strength, matmul_fp8=False) -> y [M, N]``
    * ``linear_grad_x(grad_y [M, N], <same state>, matmul_fp8=False) -> grad_x [M, K]``

    ``matmul_fp8``: above 16 rows, both operands in fp8 and one fp8 GEMM (``fp8_linear.py``).
    * ``bigint_ballot_(grad_y [M, N], x [M, K], T_packed, corr_accum, pending, nonfinite, in_features,
      group_size, gradw_fp8=False) -> None`` (votes into ``corr_accum``; ``pending`` or ``nonfinite`` + 1)
    * ``counter_ballot_(grad_y, x, T_packed, C_packed, corr_accum, step_counter, pending, nonfinite, hash_key,
      in_features, group_size, bits, rate, gradw_fp8=False) -> None`` (votes + ladder step, in place)

    ``gradw_fp8``: the ballot forms ``grad_W`` from fp8 operands (``gradw.py``, ``fp8.py``).
    * ``decode_forward(x [M, K], T_packed, S [N, G] float32, in_features, group_size, relu_square=False) -> y [M, N]``
      (a frozen layer: ``inference.py``; ``relu_square``: ``relu(y) ** 2``, the MLP's activation taken over)
    * ``group_forward(x [M, K], [T_packed], [E], [corr_accum], [step_counter], [pending], in_features, group_size,
      [strength], matmul_fp8=False) -> y [M, sum N]`` -- layers reading one input, stacked along their outputs
      (``sibling.py``): one GEMM for all of them on the Triton path
    * ``group_grad_x(grad_y [M, sum N], <same lists>) -> grad_x [M, K]``
    """

    name: str
    linear_forward: Callable[..., torch.Tensor]
    linear_grad_x: Callable[..., torch.Tensor]
    bigint_ballot_: Callable[..., None]
    counter_ballot_: Callable[..., None]
    decode_forward: Callable[..., torch.Tensor]
    group_forward: Callable[..., torch.Tensor]
    group_grad_x: Callable[..., torch.Tensor]


TORCH_OPS = TernaryOps("torch", linear_forward_torch, linear_grad_x_torch, bigint_ballot_torch_,
                       functools.partial(counter_ballot_, impl="torch"), decode_forward_torch,
                       linear_group_forward_torch, linear_group_grad_x_torch)


_TRITON: dict[str, Optional[TernaryOps]] = {}  # built on first use: importing Triton costs seconds


def _triton_ops() -> Optional[TernaryOps]:
    """The Triton table, or None when Triton (or a kernel module) cannot be imported."""
    if "ops" not in _TRITON:
        try:
            from . import library
            _TRITON["ops"] = TernaryOps("triton", library.ternary_linear_forward, library.ternary_linear_grad_x,
                                        library.bigint_ballot_, library.counter_ballot_, library.ternary_decode_forward,
                                        library.ternary_group_forward, library.ternary_group_grad_x)
        except Exception:  # pragma: no cover - depends on the installation
            _TRITON["ops"] = None
    return _TRITON["ops"]


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


def resolve_backend(device: torch.device, name: Optional[str] = None) -> str:
    """Concrete backend (``torch`` or ``triton``) for tensors on ``device``."""
    value = requested_backend(name)
    if value == "auto":
        return "triton" if device.type == "cuda" and _triton_ops() is not None else "torch"
    if value == "triton":
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise RuntimeError(
                f"ARB_TERNARY_BACKEND=triton needs CUDA tensors (got device {device}); "
                "set TRITON_INTERPRET=1 to run the kernels on the CPU interpreter, or use 'torch'/'auto'")
        if _triton_ops() is None:
            raise RuntimeError("ARB_TERNARY_BACKEND=triton but the Triton kernels could not be imported "
                               "(is triton installed? pip install 'arbitor[triton]')")
    return value


def get_ops(device: torch.device, name: Optional[str] = None) -> TernaryOps:
    """The ops table for tensors on ``device`` and the requested backend."""
    return TORCH_OPS if resolve_backend(device, name) == "torch" else _triton_ops()
