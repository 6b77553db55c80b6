"""Launchers for the Triton ternary kernels (``ARB_TERNARY_BACKEND=triton``) and ``TRITON_OPS``.

Public launchers (all operands 2-D; ``TernaryScaleTensor`` flattens leading dims):

* ``ternary_forward(x, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength)``
  ``x [M, K] -> y [M, N]`` (x's dtype).
* ``ternary_grad_x(grad_y, T_packed, E, corr_accum, step_counter, pending, in_features, group_size, strength)``
  ``grad_y [M, N] -> grad_x [M, K]`` (grad_y's dtype).
* ``ternary_correlation_(grad_y, x, T_packed, corr_accum, in_features, group_size)``
  adds the int64 votes ``[N, K // group_size]`` into ``corr_accum`` in place.
* ``ternary_scale(E, corr_accum, step_counter, pending, group_size, strength)`` the in-kernel ``S``
  materialised as ``[N, G]`` float32 (tests / export; the linear kernels never write it).

Inputs are checked (device, dtype, shape, group size, contiguity of the state
buffers) and a clear ``TypeError``/``ValueError``/``RuntimeError`` is raised
before any kernel could read out of bounds. ``x`` and ``grad_y`` may have any
strides; ``T_packed``, ``E``, ``corr_accum`` must be contiguous.

Configs: on CUDA the forward and grad-x kernels are autotuned (``triton.autotune``)
over small config sets keyed by ``(bucketed M, N, K, group_size, dtypes)`` for M > 16.
M <= 16 (decode / GEMV) has its own memory-bound path: fixed tiles (one 16-row tile,
narrow output tiles) and a split of the reduction dimension so that several programs per
SM stream ``T_packed``; the fp32 partials are summed in a fixed order by a second small
kernel (``_decode_config``). The correlation kernel is *not* timed-autotuned: its tiles
come from a fixed table (``_corr_config``) so the fp32 reduction order behind every sign
is a pure function of (shape, dtype, GPU) and the votes are deterministic run to run.
Under ``TRITON_INTERPRET=1`` (CPU) a fixed small config is used, overridable per call
with ``config=`` for tests. See ``docs/kernels.md``.

fp32 inputs use ``input_precision="tf32x3"`` (about fp32 accuracy on tensor cores;
``ARB_TRITON_FP32_PRECISION=ieee|tf32x3|tf32`` overrides); bf16/fp16 inputs use
the tensor cores natively with fp32 accumulation, ``W_eff`` being rounded to the
input dtype in registers.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton

from .bigint_scale import MAX_STRENGTH
from .triton_kernels import (split_reduce_kernel, ternary_corr_kernel, ternary_fwd_kernel, ternary_gradx_kernel,
                             ternary_scale_kernel)

__all__ = ["ternary_forward", "ternary_grad_x", "ternary_correlation_", "ternary_scale", "TritonTernaryOps",
           "TRITON_OPS", "INTERPRETED"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)

#: True when the kernels were built for the CPU interpreter (``TRITON_INTERPRET=1`` at import time).
INTERPRETED: bool = type(ternary_fwd_kernel).__name__ == "InterpretedFunction"

_INTERP_DEFAULT = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32}


def _fp32_precision() -> str:
    value = os.environ.get("ARB_TRITON_FP32_PRECISION", "tf32x3").strip().lower() or "tf32x3"
    if value not in ("ieee", "tf32x3", "tf32"):
        raise ValueError(f"ARB_TRITON_FP32_PRECISION must be ieee, tf32x3 or tf32; got {value!r}")
    return value


def _dot_precision(dtype: torch.dtype) -> str:
    return _fp32_precision() if dtype == torch.float32 else "tf32"  # ignored for 16-bit inputs


def _m_key(M: int) -> int:
    """Bucket M for the autotuner key so varying token counts do not re-tune: 16 for every
    decode M <= 16 (one 16-row tile), else the next power of two."""
    return 16 if M <= 16 else 1 << (M - 1).bit_length()


def _autotune_enabled() -> bool:
    """``ARB_TRITON_AUTOTUNE=0`` launches the fixed default config instead of timing candidates."""
    return os.environ.get("ARB_TRITON_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no")


def _cfg(bm: int, bn: int, bk: int, warps: int, stages: int, group_m: int = 8) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                         num_warps=warps, num_stages=stages)


# Training shapes (M > 16), chosen from a sweep on H100 (docs/kernels.md). BLOCK_M = 256
# amortises the in-register decode of each weight tile over more rows. fp32 inputs
# (tf32x3) need smaller tiles; configs that do not fit in shared memory are skipped
# by the autotuner (OutOfResources).
_FWD_CONFIGS = [
    _cfg(256, 128, 64, 8, 3), _cfg(256, 64, 64, 8, 4), _cfg(128, 128, 64, 4, 4),
    _cfg(64, 64, 32, 4, 3), _cfg(128, 64, 32, 4, 3),
]
# grad-x tiles are (BLOCK_M, BLOCK_K) outputs with BLOCK_N the reduction step.
_GX_CONFIGS = [
    _cfg(256, 128, 128, 8, 3), _cfg(256, 64, 128, 8, 3), _cfg(128, 64, 128, 4, 4),
    _cfg(64, 32, 64, 4, 3), _cfg(128, 32, 64, 4, 3),
]
_KEY = ["M_KEY", "N", "K", "GS", "DOT_PRECISION"]

if not INTERPRETED:
    _fwd_tuned = triton.autotune(configs=_FWD_CONFIGS, key=_KEY)(ternary_fwd_kernel)
    _gx_tuned = triton.autotune(configs=_GX_CONFIGS, key=_KEY)(ternary_gradx_kernel)


def _default_config(M: int, dtype: torch.dtype, kind: str) -> dict:
    """The config used without autotuning (CUDA, ``ARB_TRITON_AUTOTUNE=0``), M > 16."""
    configs = _FWD_CONFIGS if kind == "fwd" else _GX_CONFIGS
    c = configs[3] if dtype == torch.float32 else configs[0]
    return dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)


def _n_sm(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _decode_config(red: int, out_tiles_of, kind: str, dtype: torch.dtype, device: torch.device) -> dict:
    """Decode / GEMV path (M <= 16): fixed tiles plus a split of the reduction dim.

    One 16-row tile (``BLOCK_M = 16``, tensor cores) and narrow output tiles;
    ``out_tiles_of(cfg)`` counts the output tiles. The reduction (K for the forward, N
    for grad-x) is split so that about 2 (forward) / 4 (grad-x) programs per SM stream
    ``T_packed`` concurrently, each split keeping >= 2 steps; the fp32 partials are
    summed in a fixed order by ``split_reduce_kernel`` (deterministic). Tiles and
    targets come from a sweep on H100 (docs/kernels.md).
    """
    if kind == "fwd":
        cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 256, "GROUP_M": 1, "num_warps": 4, "num_stages": 3}
        step, per_sm = "BLOCK_K", 2
    else:
        cfg = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 1, "num_warps": 4, "num_stages": 3}
        step, per_sm = "BLOCK_N", 4
    if dtype == torch.float32:
        cfg[step] //= 2
    if INTERPRETED:
        cfg.update(_INTERP_DEFAULT)
    tiles = out_tiles_of(cfg)
    want = max(1, (per_sm * _n_sm(device) + tiles - 1) // tiles)
    cfg["SPLIT"] = max(1, min(want, red // (2 * cfg[step])))
    return cfg


def _corr_config(M: int, N: int, K: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Fixed (never timed) tile table for the correlation kernel: deterministic per shape/dtype/GPU."""
    if INTERPRETED or device.type != "cuda":
        return dict(_INTERP_DEFAULT, num_warps=4, num_stages=1)
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    if dtype == torch.float32:
        bm, bn, bk, warps, stages = 32, 128, 128, 8, 3
        if triton.cdiv(N, bn) * triton.cdiv(K, bk) < n_sm:
            bn, bk, warps = 64, 64, 4
    else:
        bm, bn, bk, warps, stages = 64, 128, 128, 8, 3
        if triton.cdiv(N, bn) * triton.cdiv(K, bk) < n_sm:
            bn, bk, warps = 64, 128, 4
            if triton.cdiv(N, bn) * triton.cdiv(K, bk) < n_sm:
                bk = 64
    env = os.environ.get("ARB_TRITON_CORR_CONFIG", "").strip()
    if env:  # "BLOCK_M,BLOCK_N,BLOCK_K,num_warps,num_stages" -- for benchmarking the table itself
        try:
            bm, bn, bk, warps, stages = (int(v) for v in env.split(","))
        except ValueError:
            raise ValueError(f"ARB_TRITON_CORR_CONFIG must be 5 comma-separated ints, got {env!r}") from None
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages}


# ----------------------------------------------------------------------------- checks
def _check_device(t: torch.Tensor, name: str, device: torch.device) -> None:
    if t.device != device:
        raise RuntimeError(f"triton ternary op: {name} is on {t.device} but the weights are on {device}")


def _check_kernel_device(device: torch.device) -> None:
    if device.type == "cuda":
        if INTERPRETED:
            raise RuntimeError("triton ternary op: arbitor.kernel.triton_kernels was imported with TRITON_INTERPRET=1 "
                               "(CPU interpreter); restart without it to run on CUDA")
        return
    if device.type == "cpu" and INTERPRETED:
        return
    raise RuntimeError(
        f"triton ternary op: tensors on {device} need CUDA, or TRITON_INTERPRET=1 set before "
        "arbitor.kernel.triton_kernels is first imported (CPU interpreter); use ARB_TERNARY_BACKEND=torch otherwise")


def _check_group_size(in_features: int, group_size: int) -> None:
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 4 or group_size & (group_size - 1):
        raise ValueError(f"triton ternary op: group_size must be a power of two >= 4, got {group_size!r}")
    if not isinstance(in_features, int) or in_features <= 0 or in_features % group_size:
        raise ValueError(f"triton ternary op: in_features={in_features!r} must be a positive multiple of "
                         f"group_size={group_size}")


def _check_state(T_packed: torch.Tensor, in_features: int, group_size: int, E: Optional[torch.Tensor],
                 corr_accum: torch.Tensor, step_counter: Optional[torch.Tensor]) -> tuple[int, int]:
    """Validate the integer state; returns ``(N, G)``."""
    _check_group_size(in_features, group_size)
    if not isinstance(T_packed, torch.Tensor) or T_packed.dtype != torch.uint8 or T_packed.dim() != 2:
        raise TypeError(f"triton ternary op: T_packed must be a 2-D uint8 tensor, got "
                        f"{getattr(T_packed, 'dtype', type(T_packed))} {tuple(getattr(T_packed, 'shape', ()))}")
    N = T_packed.shape[0]
    G = in_features // group_size
    if T_packed.shape[1] != in_features // 4:
        raise ValueError(f"triton ternary op: T_packed has {T_packed.shape[1]} bytes per row, in_features="
                         f"{in_features} needs {in_features // 4}")
    if not T_packed.is_contiguous():
        raise ValueError("triton ternary op: T_packed must be contiguous")
    device = T_packed.device
    _check_kernel_device(device)
    named = [("corr_accum", corr_accum, torch.int64)] + ([("E", E, torch.int8)] if E is not None else [])
    for name, t, dtype in named:
        if not isinstance(t, torch.Tensor) or t.dtype != dtype:
            raise TypeError(f"triton ternary op: {name} must be a {dtype} tensor, got {getattr(t, 'dtype', type(t))}")
        if tuple(t.shape) != (N, G):
            raise ValueError(f"triton ternary op: {name} must have shape {(N, G)} (out_features, in_features // "
                             f"group_size), got {tuple(t.shape)}")
        if not t.is_contiguous():
            raise ValueError(f"triton ternary op: {name} must be contiguous")
        _check_device(t, name, device)
    if step_counter is not None:
        if not isinstance(step_counter, torch.Tensor) or step_counter.dtype != torch.int64 or step_counter.numel() != 1:
            raise TypeError("triton ternary op: step_counter must be a one-element int64 tensor")
        _check_device(step_counter, "step_counter", device)
    return N, G


def _check_scalars(pending: int, strength: float) -> None:
    if not isinstance(pending, int) or isinstance(pending, bool) or not (0 <= pending < 2 ** 31):
        raise ValueError(f"triton ternary op: pending must be an int in [0, 2**31), got {pending!r}")
    if not isinstance(strength, (int, float)) or not (0.0 <= float(strength) <= MAX_STRENGTH):
        raise ValueError(f"triton ternary op: strength must be a number in [0, {MAX_STRENGTH}], got {strength!r}")


def _check_act(t: torch.Tensor, name: str, cols: int, colname: str, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"triton ternary op: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"triton ternary op: {name} must be float32, float16 or bfloat16, got {t.dtype}")
    if t.dim() != 2 or t.shape[1] != cols:
        raise ValueError(f"triton ternary op: {name} must be 2-D [M, {colname}={cols}], got {tuple(t.shape)}")
    _check_device(t, name, device)


def _launch_cfg(config: Optional[dict]) -> dict:
    """Fixed launch config (interpreter / explicit ``config=``)."""
    cfg = dict(_INTERP_DEFAULT, GROUP_M=1)
    if INTERPRETED:
        cfg.update(num_warps=4, num_stages=1)
    if config:
        unknown = set(config) - {"BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages", "SPLIT"}
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        cfg.update(config)
        if not (isinstance(cfg.get("SPLIT", 1), int) and cfg.get("SPLIT", 1) >= 1):
            raise ValueError(f"SPLIT must be a positive int, got {cfg['SPLIT']!r}")
    for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
        v = cfg[key]
        if v < 16 or v & (v - 1):
            raise ValueError(f"{key} must be a power of two >= 16, got {v}")
    return cfg


# ----------------------------------------------------------------------------- launchers
def _pick_config(config: Optional[dict], M: int, red: int, out_tiles_of, kind: str, dtype: torch.dtype,
                 device: torch.device) -> Optional[dict]:
    """Launch config: explicit ``config`` > decode path (M <= 16) > interpreter default >
    fixed default (``ARB_TRITON_AUTOTUNE=0``) > ``None`` (autotune)."""
    if config is not None:
        return _launch_cfg(config)
    if M <= 16:
        return _decode_config(red, out_tiles_of, kind, dtype, device)
    if INTERPRETED:
        return _launch_cfg(None)
    if not _autotune_enabled():
        return _launch_cfg(_default_config(M, dtype, kind))
    return None


def _split_len(red: int, split: int, step: int) -> tuple[int, int]:
    """``(length per split rounded up to whole steps, number of non-empty splits)``."""
    per = triton.cdiv(triton.cdiv(red, split), step) * step
    return per, triton.cdiv(red, per)


def _reduce_splits(ws: torch.Tensor, out: torch.Tensor) -> None:
    split, M, C = ws.shape
    block = 1024
    split_reduce_kernel[(triton.cdiv(M * C, block),)](ws, out, M * C, C, split, out.stride(0), out.stride(1),
                                                      BLOCK=block)


def _launch_linear(act: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                   step_counter: torch.Tensor, pending: int, group_size: int, strength: float, N: int, G: int,
                   K: int, kind: str, config: Optional[dict]) -> torch.Tensor:
    """The shared launch of the forward (``kind="fwd"``: ``act = x [M, K]``, out ``[M, N]``, reduction
    over K) and grad-x (``kind="gx"``: ``act = grad_y [M, N]``, out ``[M, K]``, reduction over N) kernels:
    autotuned when ``_pick_config`` returns None, else a fixed config with an optional split of the
    reduction into fp32 partials summed by ``split_reduce_kernel``."""
    fwd = kind == "fwd"
    M = act.shape[0]
    out_cols, red = (N, K) if fwd else (K, N)
    out_block, red_block = ("BLOCK_N", "BLOCK_K") if fwd else ("BLOCK_K", "BLOCK_N")
    res = torch.empty(M, out_cols, dtype=act.dtype, device=act.device)
    if M == 0:
        return res
    consts = {"GS": group_size, "DOT_PRECISION": _dot_precision(act.dtype)}
    head = (act, T_packed, E, corr_accum, step_counter)
    dims = (M, N, K, G, K // 4, act.stride(0), act.stride(1))
    tail = (pending, float(strength), _m_key(M))

    def out_tiles(c):
        return triton.cdiv(M, c["BLOCK_M"]) * triton.cdiv(out_cols, c[out_block])
    cfg = _pick_config(config, M, red, out_tiles, kind, act.dtype, act.device)
    if cfg is None:  # autotuned (CUDA only: the tuned wrappers do not exist under the interpreter)
        tuned = _fwd_tuned if fwd else _gx_tuned
        tuned[lambda meta: (out_tiles(meta), 1)](*head, res, *dims, res.stride(0), res.stride(1), 0, red, *tail,
                                                  **consts)
        return res
    red_per, split = _split_len(red, cfg.pop("SPLIT", 1), cfg[red_block])
    if split == 1:
        out, out_strides = res, (res.stride(0), res.stride(1), 0)
    else:
        out, out_strides = torch.empty(split, M, out_cols, dtype=torch.float32, device=act.device), \
            (out_cols, 1, M * out_cols)
    kernel = ternary_fwd_kernel if fwd else ternary_gradx_kernel
    kernel[(out_tiles(cfg), split)](*head, out, *dims, *out_strides, red_per, *tail, **consts, **cfg)
    if split > 1:
        _reduce_splits(out, res)
    return res


def ternary_forward(x: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                    step_counter: torch.Tensor, pending: int, in_features: int, group_size: int, strength: float,
                    *, config: Optional[dict] = None) -> torch.Tensor:
    """``y [M, N] = x [M, K] @ W_eff.T`` with ``W_eff = T * S`` expanded in-kernel (y in x's dtype).

    ``config`` (``BLOCK_M/N/K``, ``GROUP_M``, ``num_warps``, ``num_stages``, ``SPLIT``) bypasses
    the autotuner / decode heuristic.
    """
    N, G = _check_state(T_packed, in_features, group_size, E, corr_accum, step_counter)
    _check_scalars(pending, strength)
    _check_act(x, "x", in_features, "in_features", T_packed.device)
    return _launch_linear(x, T_packed, E, corr_accum, step_counter, pending, group_size, strength, N, G, in_features,
                          "fwd", config)


def ternary_grad_x(grad_y: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                   step_counter: torch.Tensor, pending: int, in_features: int, group_size: int, strength: float,
                   *, config: Optional[dict] = None) -> torch.Tensor:
    """``grad_x [M, K] = grad_y [M, N] @ W_eff`` with ``W_eff`` expanded in-kernel (grad_y's dtype)."""
    N, G = _check_state(T_packed, in_features, group_size, E, corr_accum, step_counter)
    _check_scalars(pending, strength)
    _check_act(grad_y, "grad_y", N, "out_features", T_packed.device)
    return _launch_linear(grad_y, T_packed, E, corr_accum, step_counter, pending, group_size, strength, N, G,
                          in_features, "gx", config)


def ternary_correlation_(grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor, corr_accum: torch.Tensor,
                         in_features: int, group_size: int, *, config: Optional[dict] = None) -> torch.Tensor:
    """Add ``vote[n, g] = -sum_{k in g} sign((grad_y.T @ x)[n, k]) * T[n, k]`` into ``corr_accum`` (in place).

    Args:
        grad_y: ``[M, N]`` float; x: ``[M, K]`` same dtype; T_packed ``[N, K/4]`` uint8;
        corr_accum: ``[N, K // group_size]`` int64, updated in place and returned.
    """
    N, G = _check_state(T_packed, in_features, group_size, None, corr_accum, None)
    _check_act(grad_y, "grad_y", N, "out_features", T_packed.device)
    _check_act(x, "x", in_features, "in_features", T_packed.device)
    if grad_y.shape[0] != x.shape[0]:
        raise ValueError(f"triton ternary op: grad_y has {grad_y.shape[0]} rows but x has {x.shape[0]}")
    if grad_y.dtype != x.dtype:
        raise TypeError(f"triton ternary op: grad_y ({grad_y.dtype}) and x ({x.dtype}) must share a dtype")
    M = x.shape[0]
    if M == 0:
        return corr_accum  # every grad_W entry is 0: sign 0, no votes
    if config is not None:
        cfg = _launch_cfg(config)
        cfg.pop("GROUP_M")
        if cfg.pop("SPLIT", 1) != 1:
            raise ValueError("the correlation kernel takes no SPLIT (each program reduces all of M)")
    else:
        cfg = _corr_config(M, N, in_features, x.dtype, x.device)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), triton.cdiv(in_features, cfg["BLOCK_K"]))
    ternary_corr_kernel[grid](grad_y, x, T_packed, corr_accum, M, N, in_features, G, in_features // 4,
                              grad_y.stride(0), grad_y.stride(1), x.stride(0), x.stride(1),
                              GS=group_size, DOT_PRECISION=_dot_precision(x.dtype), **cfg)
    return corr_accum


def ternary_scale(E: torch.Tensor, corr_accum: torch.Tensor, step_counter: torch.Tensor, pending: int,
                  group_size: int, strength: float) -> torch.Tensor:
    """The kernels' ``S`` ``[N, G]`` float32 (same device function the linear kernels use)."""
    if not isinstance(E, torch.Tensor) or E.dim() != 2:
        raise ValueError("triton ternary op: E must be a 2-D int8 tensor")
    N, G = E.shape
    _check_group_size(G * group_size, group_size)
    _check_kernel_device(E.device)
    for name, t, dtype in (("E", E, torch.int8), ("corr_accum", corr_accum, torch.int64)):
        if t.dtype != dtype or tuple(t.shape) != (N, G) or not t.is_contiguous():
            raise ValueError(f"triton ternary op: {name} must be contiguous {dtype} of shape {(N, G)}")
        _check_device(t, name, E.device)
    if step_counter.dtype != torch.int64 or step_counter.numel() != 1:
        raise TypeError("triton ternary op: step_counter must be a one-element int64 tensor")
    _check_device(step_counter, "step_counter", E.device)
    _check_scalars(pending, strength)
    S = torch.empty(N, G, dtype=torch.float32, device=E.device)
    if S.numel():
        block = 1024
        ternary_scale_kernel[(triton.cdiv(S.numel(), block),)](E, corr_accum, step_counter, S, S.numel(), pending,
                                                               float(strength), GS=group_size, BLOCK=block)
    return S


# ----------------------------------------------------------------------------- backend object
class TritonTernaryOps:
    """``TernaryOps`` implementation on the Triton kernels (through the ``arbitor::`` custom ops)."""

    name = "triton"

    def linear_forward(self, x: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor, corr_accum: torch.Tensor,
                       step_counter: torch.Tensor, pending: int, in_features: int, group_size: int,
                       strength: float) -> torch.Tensor:
        """``x [M, K] -> y [M, N]``."""
        from . import custom_ops
        return custom_ops.ternary_linear_forward(x, T_packed, E, corr_accum, step_counter, int(pending), in_features,
                                                 group_size, float(strength))

    def linear_backward(self, grad_y: torch.Tensor, x: torch.Tensor, T_packed: torch.Tensor, E: torch.Tensor,
                        corr_accum: torch.Tensor, step_counter: torch.Tensor, pending: int, in_features: int,
                        group_size: int, strength: float, need_grad_x: bool,
                        cast_votes: bool) -> Optional[torch.Tensor]:
        """``grad_x [M, K]`` with the pre-vote scale (or None), then votes added into ``corr_accum``."""
        from . import custom_ops
        grad_x = None
        if need_grad_x:
            grad_x = custom_ops.ternary_linear_grad_x(grad_y, T_packed, E, corr_accum, step_counter, int(pending),
                                                      in_features, group_size, float(strength))
        if cast_votes:
            custom_ops.ternary_correlation_accumulate_(grad_y, x, T_packed, corr_accum, in_features, group_size)
        return grad_x


TRITON_OPS = TritonTernaryOps()
