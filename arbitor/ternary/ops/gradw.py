"""How a ballot forms ``grad_W = grad_y.T @ x``: the one place both rules' ops take it from.

* ``gradw_chunks`` -- the Triton ops' form: row chunks of ``gradw_chunk_rows`` rows (``blocks.py``), each a
  ``[rows, K]`` tensor freed before the next; by cuBLAS in the activations' dtype, or with ``fp8`` by one fp8
  GEMM a chunk from operands quantised once a ballot (``fp8.py``, ``fp8_triton.py``), in bf16.
* ``fp32_operands`` -- the torch references' form: ``(gy [M', N], xf [M', K])`` float32, of which a reference takes
  ``gy[:, n0:n1].t() @ xf`` a row block: the inputs themselves, or with ``fp8`` the fp8 operands' exact values.
* ``use_fp8`` -- whether a layer's ``gradw_fp8`` setting applies to a ballot: the layer's shape must allow it
  (``fp8.fp8_shape_ok``; otherwise ``grad_W`` stays in the activations' dtype) and the device must have fp8
  tensor cores (a one-line error otherwise).
"""
from __future__ import annotations

from typing import Iterator

import torch

from .fp8 import check_fp8_device, dequantized_operands, fp8_shape_ok, scaled_gradw

__all__ = ["use_fp8", "gradw_chunks", "fp32_operands"]


def use_fp8(gradw_fp8: bool, out_features: int, in_features: int, device: torch.device) -> bool:
    """Whether this ballot forms ``grad_W`` in fp8 (module doc)."""
    if not gradw_fp8 or not fp8_shape_ok(out_features, in_features):
        return False
    check_fp8_device(device)
    return True


def gradw_chunks(grad_y: torch.Tensor, x: torch.Tensor, rows: int, fp8: bool,
                 bad: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """``(n0, grad_W[n0:n0 + rows])`` over the ``N`` output rows: ``grad_y [M, N]``, ``x [M, K]`` of one dtype.

    With ``fp8`` (``use_fp8``) the chunks are bf16 from the fp8 GEMM, ``rows`` is rounded down to a multiple of 16
    (the GEMM's output rows), and the quantiser raises the int32 0-d ``bad`` flag on a non-finite input; otherwise
    the chunks are cuBLAS products in ``x``'s dtype and ``bad`` is not touched."""
    N = grad_y.shape[1]
    if not fp8:
        for n0 in range(0, N, rows):
            yield n0, grad_y[:, n0:min(N, n0 + rows)].t() @ x
        return
    from .fp8_triton import quantize_t_triton
    if rows < N:
        rows = max(16, rows - rows % 16)
    # the quantiser reads rows with any stride but each row's entries side by side (an expanded or transposed
    # upstream gradient, e.g. of a sum, is copied once)
    gyq, sgy = quantize_t_triton(grad_y if grad_y.stride(-1) == 1 else grad_y.contiguous(), bad)
    xq, sx = quantize_t_triton(x if x.stride(-1) == 1 else x.contiguous(), bad)
    for n0 in range(0, N, rows):
        n1 = min(N, n0 + rows)
        yield n0, scaled_gradw(gyq[n0:n1], sgy[n0:n1], xq, sx)


def fp32_operands(grad_y: torch.Tensor, x: torch.Tensor, fp8: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gy, xf)`` float32 with ``gy[:, n0:n1].t() @ xf`` the reference's ``grad_W`` rows ``n0:n1`` (module doc)."""
    if fp8:
        return dequantized_operands(grad_y, x)
    return grad_y.to(torch.float32), x.to(torch.float32)
