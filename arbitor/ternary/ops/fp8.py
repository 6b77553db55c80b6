"""``grad_W`` from fp8 operands (``TernaryConfig.gradw_fp8``): the format, the plain-torch reference, the GEMM.

A ballot needs ``grad_W = grad_y.T @ x`` (``[N, K]``) only for its signs (``bigint``'s votes) and, in the
``counter`` rule, for magnitudes relative to the row's RMS (a stochastically rounded step). With ``gradw_fp8`` the
two operands are rounded to fp8 e4m3 and multiplied on the fp8 tensor cores (twice bf16's rate on Hopper):

* ``gyq [N, Mp] = e4m3(grad_y.T * 2**-eg[n])`` -- one scale per output feature ``n`` (a row of ``grad_W``);
* ``xq  [K, Mp] = e4m3(x.T * 2**-ex[k])``      -- one scale per input feature ``k`` (a column);
* ``grad_W[n, k] = 2**eg[n] * 2**ex[k] * sum_m gyq[n, m] * xq[k, m]``, fp32 accumulation
  (``torch._scaled_mm`` with row-wise scales, ``scaled_gradw``), written in bf16.

Bit by bit:

* ``Mp`` is the token count rounded up to a multiple of 16 (the fp8 GEMM's reduction length must be one); the
  columns ``m >= tokens`` are 0 and add nothing.
* The exponent of a feature is the smallest ``e`` with ``amax * 2**-e <= 448`` (e4m3's largest finite value),
  ``amax`` the largest ``|value|`` of that feature over the tokens: with ``amax = f * 2**E``, ``f`` in ``[1, 2)``,
  ``e = E - 8 + (f > 1.75)``, read off the float32 bits, and at least ``-126`` (``amax`` 0 or subnormal), so
  both ``2**e`` and ``2**-e`` are normal float32 numbers and scaling by them is exact.
* Rounding to e4m3 is round-to-nearest-even with subnormals (steps of ``2**-9``), as torch's
  ``.to(torch.float8_e4m3fn)``; no value is above 448 after scaling, so none saturates or becomes NaN.
* Stored as ``torch.float8_e4m3fn``; the scales ``2**e`` as float32 ``[features]``.

So an operand keeps 4 significant bits (relative error ``<= 2**-4``, half that on average) with the range of its
feature's largest value; features whose values span more than ``2**17`` lose their smallest ones to 0. Measured on
the H200 (``benchmarks/results/speed/h200-gradw-fp8/``): the GEMM runs at 1.7-2.1x the bf16 one; the votes' agreement
with the bf16 ``grad_W``'s and the learning curves are in that folder and ``docs/kernels.md``.

The plain-torch reference (``quantize_t_torch``, ``dequantized_operands``) builds the same fp8 operands and
multiplies their exact float32 values; the Triton quantiser (``fp8_triton.py``) gives the same bytes and scales.
Votes stay deterministic run to run on one device (the GEMM's algorithm is fixed by the shape; the quantiser's
maxima do not depend on order) but are not the votes of the bf16 ``grad_W``: entries within the fp8 rounding of 0
may change sign.

Where it is used. The ops take the fp8 path when asked (``gradw_fp8=True``) and the layer's features are multiples
of 16 (the fp8 GEMM's output dimensions: ``fp8_shape_ok``); the layer asks only where it pays (``fp8_pays``): the
quantiser is a memory pass over ``tokens x (N + K)`` entries and its four launches cost a few microseconds, while
the GEMM saves time in proportion to ``tokens x N x K``. Measured on the H200 (one bigint ballot, bf16 against fp8,
``benchmarks/results/speed/h200-gradw-fp8/ballot_sweep.json``): fp8 is 0.25-0.79x as fast from 384 x 384 to
2048 x 2048 and 0.88-0.97x at 3072 x 3072 (4096 and 16384 tokens); 0.94-1.15x at 2048 x 8192; in the layer rows
(``bench_speed.py``) it gains at 4096 x 4096, 3072 x 12288 and 8192 x 8192. So a layer uses it from
``FP8_MIN_WEIGHTS`` weights with both dimensions at least ``FP8_MIN_FEATURES``; below that, ``grad_W`` stays in
the activations' dtype.

The forward and grad-x GEMMs of ``matmul_fp8`` (``fp8_linear.py``) pay from smaller layers
(``fp8_matmul_pays``: both dimensions at least ``FP8_MIN_FEATURES``, so 3072 x 3072 too): their extra pass is
one read of the activations (the weight is expanded either way, to bf16 or to e4m3), where a ballot's is two.
Measured in the `3b` step on the H200 (``benchmarks/results/speed/h200-step-launches/``).

``gradw_fp8`` and ``matmul_fp8`` need an sm_89+ GPU on CUDA (Ada, Hopper and later), which ``check_fp8_device``
says in one line.
"""
from __future__ import annotations

import torch

__all__ = ["FP8_MAX", "FP8_DTYPE", "TOKEN_MULTIPLE", "FP8_MIN_WEIGHTS", "FP8_MIN_FEATURES", "padded_tokens",
           "fp8_exponents", "pow2", "quantize_t_torch", "dequantize", "dequantized_operands", "scaled_mm_nt",
           "scaled_gradw", "fp8_shape_ok", "fp8_pays", "fp8_matmul_pays", "check_fp8_device"]

FP8_MAX = 448.0                   # e4m3fn's largest finite value: 1.75 * 2**8
FP8_DTYPE = torch.float8_e4m3fn
TOKEN_MULTIPLE = 16               # the fp8 GEMM's reduction length must be a multiple of 16
_F175 = 0x600000                  # float32 mantissa bits of 1.75
FP8_MIN_WEIGHTS = 1 << 24         # fp8_pays: a layer of at least 4096 x 4096 weights ...
FP8_MIN_FEATURES = 3072           # ... with both dimensions at least this (3072 x 12288 pays, 2048 x 8192 does not);
                                  # fp8_matmul_pays: this alone


def padded_tokens(tokens: int) -> int:
    """``Mp``: ``tokens`` rounded up to a multiple of ``TOKEN_MULTIPLE`` (at least one multiple)."""
    return max(TOKEN_MULTIPLE, -(-tokens // TOKEN_MULTIPLE) * TOKEN_MULTIPLE)


def fp8_exponents(amax: torch.Tensor) -> torch.Tensor:
    """int32 ``e`` per feature from float32 ``amax >= 0`` (module doc): ``E - 8 + (f > 1.75)``, at least -126."""
    bits = amax.to(torch.float32).contiguous().view(torch.int32)
    biased = (bits >> 23) & 0xFF
    e = biased - 127 - 8 + ((bits & 0x7FFFFF) > _F175).to(torch.int32)
    return e.clamp_(min=-126)


def pow2(e: torch.Tensor) -> torch.Tensor:
    """float32 ``2**e`` for int32 ``e`` in ``[-126, 127]``, built from the exponent bits (exact)."""
    return ((e + 127) << 23).to(torch.int32).view(torch.float32)


def quantize_t_torch(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t [M, C]`` (any float dtype) -> ``(q [C, Mp] float8_e4m3fn, scale [C] float32 = 2**e)`` (module doc)."""
    M, C = t.shape
    tf = t.to(torch.float32)
    e = fp8_exponents(tf.abs().amax(dim=0) if M else torch.zeros(C, device=t.device))
    q = torch.zeros(C, padded_tokens(M), dtype=FP8_DTYPE, device=t.device)
    q[:, :M] = (tf * pow2(-e)).t().to(FP8_DTYPE)
    return q, pow2(e)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The exact float32 values of fp8 rows ``q [R, C]`` with their scales ``scale [R]``."""
    return q.to(torch.float32) * scale[:, None]


def dequantized_operands(grad_y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fp8 operands' exact float32 values, untransposed: ``(gy [Mp, N], xf [Mp, K])`` -- ``gy[:, n0:n1].t() @ xf``
    is the reference's ``grad_W`` block (the torch ops' form of ``scaled_gradw``)."""
    return dequantize(*quantize_t_torch(grad_y)).t(), dequantize(*quantize_t_torch(x)).t()


def scaled_mm_nt(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    """``(a * sa[:, None]) @ (b * sb[:, None]).T`` in bf16 from fp8 ``a [rows, R]`` and ``b [cols, R]`` (both with
    their reduction dimension side by side) and float32 scales ``sa [rows]``, ``sb [cols]``: one fp8 GEMM with
    row-wise scales, fp32 accumulation (``torch._scaled_mm``, whose second operand is ``b.T``, column-major)."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return torch.zeros(a.shape[0], b.shape[0], dtype=torch.bfloat16, device=a.device)
    return torch._scaled_mm(a, b.t(), scale_a=sa[:, None], scale_b=sb[None, :], out_dtype=torch.bfloat16)


def scaled_gradw(gyq: torch.Tensor, sgy: torch.Tensor, xq: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:
    """``grad_W [rows, K]`` bf16 from the quantised rows ``gyq [rows, Mp]`` (scales ``sgy [rows]``) and ``xq [K, Mp]``
    (``sx [K]``): ``scaled_mm_nt`` over the tokens."""
    return scaled_mm_nt(gyq, sgy, xq, sx)


def fp8_shape_ok(out_features: int, in_features: int) -> bool:
    """Whether a ``[out_features, in_features]`` layer can form its ``grad_W`` in fp8 (module doc)."""
    return out_features % 16 == 0 and in_features % 16 == 0


def fp8_pays(out_features: int, in_features: int) -> bool:
    """Whether a ``[out_features, in_features]`` layer's ballots gain from fp8 ``grad_W`` (module doc)."""
    return fp8_matmul_pays(out_features, in_features) and out_features * in_features >= FP8_MIN_WEIGHTS


def fp8_matmul_pays(out_features: int, in_features: int) -> bool:
    """Whether a ``[out_features, in_features]`` layer's forward and grad-x gain from the fp8 GEMM (``matmul_fp8``;
    module doc): sides that are multiples of 16, both at least ``FP8_MIN_FEATURES``."""
    return fp8_shape_ok(out_features, in_features) and min(out_features, in_features) >= FP8_MIN_FEATURES


def check_fp8_device(device: torch.device, setting: str = "gradw_fp8") -> None:
    """``ValueError`` in one line, naming ``setting``, unless ``device`` can run the fp8 GEMM (CPU, or CUDA
    sm_89+)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise ValueError(f"{setting} needs fp8 tensor cores (CUDA sm_89 or later); {device} is "
                             f"sm_{major}{minor}: train with {setting}=False")
    elif device.type != "cpu":
        raise ValueError(f"{setting} runs on CUDA (sm_89+) or the CPU, not on {device.type}")
