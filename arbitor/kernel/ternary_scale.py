"""``TernaryScaleTensor``: the dense pure-ternary linear layer with BigInt correlation scaling.

Persistent state (buffers, no ``nn.Parameter``)::

    T_packed     uint8 [out_features, ceil(in_features/4)]   ternary weights, 2 bits each (packing.py)
    E            int8  [out_features, n_groups]               fixed exponent per scale group
    corr_accum   int64 [out_features, n_groups]               summed correlation votes
    step_counter int64 []                                     ballots counted so far

with ``n_groups = in_features // group_size``. A scale group is ``group_size``
consecutive weights along ``in_features`` within one output row. The effective
weight is ``W_eff = T * S`` with ``S`` from ``bigint_scale.py``. ``T`` and ``E``
never change after initialisation; training moves only the integers
``corr_accum`` and ``step_counter``.

Ballots (the vote unit)
-----------------------
One *ballot* is one backward pass through the layer that casts votes. A ballot
adds to each group ``vote = -sum_{k in group} sign(dL/dW_eff[k]) * T[k]``, an
integer in ``[-group_size, group_size]`` (positive: a larger ``S`` lowers the
loss). ``step_counter`` counts ballots, so ``mean_corr = corr_accum /
(ballots * group_size)`` is the average vote per weight and always lies in
[-1, 1] -- with one backward per step, with gradient accumulation (k micro-batch
backwards = k ballots), and with several loss components (one ballot each).

Streaming: votes go straight into ``corr_accum`` during backward (no float
gradient buffer is ever kept). The ballot is counted as *pending* and folded
into ``step_counter`` by the explicit per-step call ``ternary_step()`` (or the
module-level ``ternary_step(model)``). Until then ``S`` is computed with
``step_counter + pending`` so ``mean_corr`` stays in [-1, 1] at every moment.
Because updates are streamed, a forward run after a backward in the same step
(the next micro-batch, or the next loss component's backward) already sees that
ballot: the rule is online, applied the moment a ballot is cast.

Update rules
------------
``update="bigint"`` is the spec's rule above (the default). ``"legacy"`` (per-weight
``T_accum`` / per-group ``E_accum`` threshold flips), ``"flip"`` (BigInt scales plus
stateless stochastic trit flips) and ``"counter"`` (BigInt scales plus trits on small packed
per-weight counters ``C_packed``) are described in ``update_rules.py``. ``legacy`` and
``flip`` run on the torch reference ops on every device; ``counter`` uses the backend's
forward and grad_x ops, and one ``grad_W`` pass per row block (``counter_ops.py``) casts the
scale votes and moves the trits, in place of the backend's correlation op.

Initialisation (seeded)
-----------------------
* ``T``: each weight is 0 with probability ``zero_fraction`` (default 1/3) and
  +1 / -1 with equal probability otherwise.
* ``E``: the variance of ``W_eff`` should start near ``1/in_features``. With
  ``T`` as above, ``Var(W_eff) = (1 - zero_fraction) * S**2``, so the target is
  ``S**2 = s2 = 1 / (in_features * (1 - zero_fraction))``. An integer exponent
  gives ``S**2 = 4**E``; each group draws ``E = a`` or ``a + 1`` with
  ``a = floor(log4(s2))`` and ``P(a + 1) = (s2 / 4**a - 1) / 3``, which makes the
  expected ``S**2`` exactly ``s2`` (e.g. ``in_features=512``: ``s2 = 2.93e-3``,
  ``a = -5``, ``P = 0.69``).
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
from torch import nn

from . import backend as _backend
from .bigint_scale import (E_MAX, E_MIN, MAX_VOTE_TOTAL, bigint_scale, check_strength, default_strength)
from .packing import (COUNTER_BITS, counter_packed_shape, pack_counters, pack_ternary, packed_shape, unpack_ternary,
                      validate_packed)
from . import counter_ops, reference_ops
from .reference_ops import block_rows_for, expand_weight
from .update_rules import UPDATE_RULES, counter_uniform, flip_block, legacy_accumulate_block, legacy_apply

__all__ = ["TernaryScaleTensor", "ternary_step", "ternary_layers", "check_group_size"]

_FLOAT_INPUTS = (torch.float32, torch.float16, torch.bfloat16)
_BUFFER_DTYPES = {"T_packed": torch.uint8, "E": torch.int8, "corr_accum": torch.int64, "step_counter": torch.int64,
                  "flip_key": torch.int64, "T_accum": torch.int8, "E_accum": torch.int16, "C_packed": torch.uint8}


def check_group_size(in_features: int, group_size: int) -> None:
    """Raise ``ValueError`` unless ``group_size`` is a power of two >= 4 dividing ``in_features``.

    A power of two keeps every group on whole bytes of ``T_packed`` and lets the GPU
    kernels tile groups evenly; ragged last groups are not supported.
    """
    if not isinstance(group_size, int) or group_size < 4 or group_size & (group_size - 1):
        raise ValueError(f"group_size must be a power of two >= 4, got {group_size!r}")
    if in_features % group_size:
        raise ValueError(
            f"in_features={in_features} is not a multiple of group_size={group_size}; "
            f"pick a group_size dividing it (e.g. {math.gcd(in_features, 1 << 12) if in_features % 4 == 0 else 'none'}) "
            "or pad the features")


def draw_trits(rows: int, cols: int, zero_fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Seeded initial trits ``[rows, cols]``: 0 with probability ``zero_fraction``, else +-1 equally likely."""
    u = torch.rand(rows, cols, generator=gen, device="cpu")
    return torch.where(u < zero_fraction, 0, torch.where(u < zero_fraction + (1.0 - zero_fraction) / 2, 1, -1))


def draw_exponents(s2: float, rows: int, groups: int, gen: torch.Generator) -> torch.Tensor:
    """Seeded int8 exponents ``[rows, groups]`` whose ``4 ** E`` has expectation exactly ``s2``.

    Each group draws ``a = floor(log4(s2))`` or ``a + 1``, the latter with ``P = (s2 / 4**a - 1) / 3``
    (module doc). Raises ``ValueError`` if the result would leave ``[E_MIN, E_MAX]``.
    """
    a = math.floor(math.log(s2, 4))
    p_up = (s2 / 4.0 ** a - 1.0) / 3.0
    E = a + (torch.rand(rows, groups, generator=gen, device="cpu") < p_up).to(torch.int64)
    if E.numel() and (E.min() < E_MIN or E.max() > E_MAX):
        raise ValueError(f"initial exponents out of [{E_MIN}, {E_MAX}] (target S**2 = {s2:g})")
    return E.to(torch.int8)


def _check_env_check_finite() -> bool:
    return os.environ.get("ARB_CHECK_FINITE", "1").strip() not in ("0", "false", "no")


class _TernaryLinearFn(torch.autograd.Function):
    """``y = x @ W_eff.T``; saves only ``x``; backward recomputes ``W_eff`` block by block."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, vote_anchor: Optional[torch.Tensor], layer: "TernaryScaleTensor"):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, layer.in_features)
        if layer.update == "legacy":
            y = reference_ops.ternary_linear_forward(x2, layer.T_packed, layer._get_S(), layer.in_features,
                                                     layer.group_size)
        else:
            ops = layer._ops(x.device)
            y = ops.linear_forward(x2, layer.T_packed, layer.E, layer.corr_accum, layer.step_counter,
                                   layer._pending_ballots, layer.in_features, layer.group_size, layer.strength)
        ctx.save_for_backward(x)
        ctx.layer = layer
        return y.reshape(*lead, layer.out_features)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        (x,) = ctx.saved_tensors
        layer: TernaryScaleTensor = ctx.layer
        if layer.check_finite and not bool(torch.isfinite(grad_y).all()):
            raise FloatingPointError(
                f"non-finite (NaN/inf) gradient reaching {layer.extra_repr()}: refusing to cast votes "
                "(lower the loss scale / learning signal, or set ARB_CHECK_FINITE=0 to skip this check)")
        need_grad_x = ctx.needs_input_grad[0]
        cast_votes = layer.voting
        if not (need_grad_x or cast_votes):
            return None, None, None
        gy2 = grad_y.reshape(-1, layer.out_features).to(x.dtype)
        x2 = x.reshape(-1, layer.in_features)
        if layer.update in ("bigint", "counter"):
            ops = layer._ops(x.device)
            # counter: its own pass over grad_W casts the scale votes and moves the trits (after grad_x, which
            # must see the T of the forward), so the backend's correlation pass is skipped
            counter = layer.update == "counter" and cast_votes
            grad_x = None
            if need_grad_x or not counter:
                grad_x = ops.linear_backward(gy2, x2, layer.T_packed, layer.E, layer.corr_accum, layer.step_counter,
                                             layer._pending_ballots, layer.in_features, layer.group_size,
                                             layer.strength, need_grad_x, cast_votes and not counter)
            if counter:
                layer._counter_step(gy2, x2)
        else:
            grad_x = layer._backward_with_rule(gy2, x2, need_grad_x, cast_votes)
        if cast_votes:
            layer._pending_ballots += 1
        if grad_x is not None:
            grad_x = grad_x.reshape(x.shape)
        return grad_x, None, None


class TernaryScaleTensor(nn.Module):
    """Pure-ternary linear layer ``y = x @ (T * S).T`` with integer-only training state.

    Args:
        in_features: K, size of the last input dimension.
        out_features: N, size of the output's last dimension.
        group_size: weights per scale group along ``in_features`` (power of two >= 4 dividing K).
        zero_fraction: share of zeros in the initial ``T`` (default 1/3), in [0, 1).
        strength: ``ARB_BIGINT_CORR_STRENGTH`` override (default: the environment, else 4.0).
        seed: seed for ``T`` and ``E``; ``None`` draws one from torch's global RNG
            (so ``torch.manual_seed`` makes models reproducible).
        device: where the buffers live.
        backend: ``ARB_TERNARY_BACKEND`` override for this layer (``torch``/``triton``/``auto``).
        update: ``"bigint"`` (spec default), ``"legacy"``, ``"flip"`` or ``"counter"`` (``update_rules.py``).
        flip_rate: ``"flip"``: expected trit steps per unit of row-normalised gradient (a float
            setting, not state: a trainer may schedule it).
        t_threshold, e_threshold: ``"legacy"``: votes per trit move / per exponent step
            (``e_threshold`` default ``4 * group_size``).
        counter_bits: ``"counter"``: bits per weight of ``C_packed`` (1, 2, 4 or 8).
        counter_rate: ``"counter"``: expected rungs moved per unit of row-normalised gradient
            (a float setting, not state).

    Shapes: ``x [..., in_features] -> y [..., out_features]`` (fp32 / fp16 / bf16, y in x's dtype).
    """

    def __init__(self, in_features: int, out_features: int, group_size: int = 64, *,
                 zero_fraction: float = 1.0 / 3.0, strength: Optional[float] = None, seed: Optional[int] = None,
                 device: Optional[torch.device | str] = None, backend: Optional[str] = None,
                 update: str = "bigint", flip_rate: float = 0.02, t_threshold: int = 4,
                 e_threshold: Optional[int] = None, counter_bits: int = 4, counter_rate: float = 0.5) -> None:
        super().__init__()
        if not (isinstance(in_features, int) and in_features > 0 and isinstance(out_features, int) and out_features > 0):
            raise ValueError(f"in_features and out_features must be positive ints, got {in_features!r}, {out_features!r}")
        check_group_size(in_features, group_size)
        if not (0.0 <= zero_fraction < 1.0):
            raise ValueError(f"zero_fraction must be in [0, 1), got {zero_fraction}")
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.n_groups = in_features // group_size
        self.zero_fraction = float(zero_fraction)
        self.strength = check_strength(strength) if strength is not None else default_strength()
        self.backend = _backend.requested_backend(backend) if backend is not None else None
        if update not in UPDATE_RULES:
            raise ValueError(f"update must be one of {UPDATE_RULES}, got {update!r}")
        if not (0.0 <= flip_rate <= 1.0):
            raise ValueError(f"flip_rate must be in [0, 1], got {flip_rate}")
        e_threshold = 4 * group_size if e_threshold is None else e_threshold
        if not (isinstance(t_threshold, int) and 1 <= t_threshold <= 127):
            raise ValueError(f"t_threshold must be an int in [1, 127], got {t_threshold!r}")
        if not (isinstance(e_threshold, int) and 1 <= e_threshold <= 32767):
            raise ValueError(f"e_threshold must be an int in [1, 32767], got {e_threshold!r}")
        if counter_bits not in COUNTER_BITS:
            raise ValueError(f"counter_bits must be one of {COUNTER_BITS}, got {counter_bits!r}")
        if not (0.0 <= counter_rate <= 64.0 and math.isfinite(counter_rate)):
            raise ValueError(f"counter_rate must be in [0, 64], got {counter_rate}")
        self.update = update
        self.flip_rate = float(flip_rate)
        self.counter_bits, self.counter_rate = int(counter_bits), float(counter_rate)
        self.t_threshold, self.e_threshold = t_threshold, e_threshold
        self.voting = True          # False freezes the layer (no ballots cast)
        self.check_finite = _check_env_check_finite()
        self._pending_ballots = 0   # ballots cast since the last ternary_step()
        self._host_counter: Optional[int] = None  # host mirror of step_counter for the overflow check
        self._host_key: Optional[int] = None      # host mirror of flip_key (counter rule)
        dev = torch.device(device) if device is not None else None
        # meta: shapes only (``with torch.device("meta")`` or device="meta"): audits a 3B model instantly
        meta = (dev if dev is not None else torch.empty(0).device).type == "meta"
        if seed is None:
            seed = 0 if meta else int(torch.randint(0, 2 ** 62, (), dtype=torch.int64, device="cpu"))
        self.seed = int(seed)

        if meta:
            T_packed = torch.empty(packed_shape(out_features, in_features), dtype=torch.uint8, device="meta")
            E = torch.empty(out_features, self.n_groups, dtype=torch.int8, device="meta")
        else:
            T_packed, E = self._init_state(self.seed)
        self.register_buffer("T_packed", T_packed.to(dev))
        self.register_buffer("E", E.to(dev))
        if update == "legacy":
            self.register_buffer("T_accum", torch.zeros(out_features, in_features, dtype=torch.int8, device=dev))
            self.register_buffer("E_accum", torch.zeros(out_features, self.n_groups, dtype=torch.int16, device=dev))
        else:
            self.register_buffer("corr_accum", torch.zeros(out_features, self.n_groups, dtype=torch.int64, device=dev))
            self.register_buffer("step_counter", torch.zeros((), dtype=torch.int64, device=dev))
            self.register_state_dict_pre_hook(_refuse_pending_ballots)
        if update in ("flip", "counter"):
            self.register_buffer("flip_key", torch.tensor(self.seed ^ 0x5DEECE66D, dtype=torch.int64, device=dev))
        if update == "counter":
            mid = torch.full((out_features, in_features), 1 << (self.counter_bits - 1), dtype=torch.uint8,
                             device=dev)  # every counter starts mid-ladder: L // 2
            self.register_buffer("C_packed", pack_counters(mid, self.counter_bits, check=False))

    # ----------------------------------------------------------------- init
    def _init_state(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        K, N = self.in_features, self.out_features
        T_packed = torch.empty(packed_shape(N, K), dtype=torch.uint8, device="cpu")
        rows = max(1, (1 << 22) // K)  # chunked so a 3B-weight model never materialises a float T
        for n0 in range(0, N, rows):
            n1 = min(N, n0 + rows)
            T_packed[n0:n1] = pack_ternary(draw_trits(n1 - n0, K, self.zero_fraction, gen))
        E = draw_exponents(1.0 / (K * (1.0 - self.zero_fraction)), N, self.n_groups, gen)
        return T_packed, E

    # ------------------------------------------------------------- forward
    def _ops(self, device: torch.device) -> _backend.TernaryOps:
        return _backend.get_ops(device, self.backend)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"TernaryScaleTensor expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"TernaryScaleTensor({self.in_features}->{self.out_features}): input last dimension must be "
                             f"{self.in_features}, got shape {tuple(x.shape)}")
        if x.dtype not in _FLOAT_INPUTS:
            raise TypeError(f"TernaryScaleTensor: input dtype must be float32, float16 or bfloat16, got {x.dtype}")
        if x.device != self.T_packed.device:
            raise RuntimeError(f"TernaryScaleTensor: input is on {x.device} but the layer's buffers are on "
                               f"{self.T_packed.device}; move one of them (model.to(device))")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_features] -> [..., out_features]``."""
        self._check_input(x)
        anchor = None
        if self.training and self.voting and torch.is_grad_enabled() and not x.requires_grad:
            # Votes are cast in backward, which autograd runs only if some input requires grad:
            # an empty anchor makes the output part of the graph without computing grad_x.
            anchor = torch.empty(0, device=x.device, requires_grad=True)
        return _TernaryLinearFn.apply(x, anchor, self)

    # --------------------------------------------------------------- state
    @property
    def pending_ballots(self) -> int:
        """Ballots cast since the last ``ternary_step()``."""
        return self._pending_ballots

    def _get_S(self) -> torch.Tensor:
        """Per-group scale ``S`` ``[out_features, n_groups]`` float32 (bigint_scale.py; legacy: ``2 ** E``)."""
        if self.update == "legacy":
            return torch.exp2(self.E.to(torch.float32))
        return bigint_scale(self.E, self.corr_accum, self.step_counter + self._pending_ballots, self.group_size,
                            self.strength)

    def _backward_with_rule(self, grad_y: torch.Tensor, x: torch.Tensor, need_grad_x: bool,
                            cast_votes: bool) -> Optional[torch.Tensor]:
        """Backward for the ``legacy`` and ``flip`` rules (torch reference ops + a per-block hook)."""
        S = self._get_S() if need_grad_x else None
        hook = None
        if cast_votes and self.update == "legacy":
            def hook(n0, n1, gw, t):
                legacy_accumulate_block(self.T_accum[n0:n1], self.E_accum[n0:n1], gw, t, self.group_size)
        elif cast_votes and self.update == "flip" and self.flip_rate > 0:
            ballot = self._host_ballots()
            key = int(self.flip_key)

            def hook(n0, n1, gw, t):
                u = counter_uniform(key, ballot, n0, n1, self.in_features, gw.device)
                self.T_packed[n0:n1] = pack_ternary(flip_block(t, gw, u, self.flip_rate))
        grad_x, votes = reference_ops.ternary_linear_backward(
            grad_y, x, self.T_packed, S, self.in_features, self.group_size, need_grad_x=need_grad_x,
            need_votes=cast_votes and self.update == "flip", block_hook=hook)
        if votes is not None:
            self.corr_accum.add_(votes)
        return grad_x

    def _counter_step(self, grad_y: torch.Tensor, x: torch.Tensor) -> None:
        """One ballot of the ``counter`` rule: scale votes into ``corr_accum``, then the per-weight step."""
        if self._host_key is None:
            self._host_key = int(self.flip_key)  # constant: read from the device once, not every ballot
        counter_ops.counter_update_(grad_y, x, self.T_packed, self.C_packed, self.corr_accum, self._host_key,
                        self._host_ballots(), self.in_features, self.group_size, self.counter_bits, self.counter_rate,
                        backend=self._ops(x.device).name)

    def _host_ballots(self) -> int:
        if self._host_counter is None:
            self._host_counter = int(self.step_counter)
        return self._host_counter + self._pending_ballots

    def mean_corr(self) -> torch.Tensor:
        """``corr_accum / (ballots * group_size)`` as float64, 0 before any ballot."""
        n = float(self.step_counter) + self._pending_ballots
        if n == 0:
            return torch.zeros_like(self.corr_accum, dtype=torch.float64)
        return self.corr_accum.to(torch.float64) / (n * self.group_size)

    def ternary(self) -> torch.Tensor:
        """The ternary matrix ``T`` as int8 ``[out_features, in_features]``."""
        return unpack_ternary(self.T_packed, self.in_features)

    def effective_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense ``W_eff = T * S`` ``[out_features, in_features]`` (allocates the full matrix: debugging/export)."""
        return expand_weight(self.T_packed, self._get_S(), self.in_features, self.group_size, dtype)

    def ternary_step(self) -> int:
        """Fold the pending ballots into ``step_counter``; returns how many were folded.

        Raises ``OverflowError`` before ``ballots * group_size`` could pass 2**62.
        """
        pending = self._pending_ballots
        if pending == 0:
            return 0
        if self.update == "legacy":
            legacy_apply(self.T_packed, self.E, self.T_accum, self.E_accum, self.in_features, self.t_threshold,
                         self.e_threshold, block_rows_for(self.in_features, self.out_features))
            self._pending_ballots = 0
            return pending
        if self._host_counter is None:
            self._host_counter = int(self.step_counter)
        total = self._host_counter + pending
        if total * self.group_size > MAX_VOTE_TOTAL:
            raise OverflowError(
                f"{self.extra_repr()}: step_counter would reach {total} ballots; ballots*group_size must stay "
                f"below 2**62 so corr_accum cannot overflow int64")
        self.step_counter.add_(pending)
        self._host_counter = total
        self._pending_ballots = 0
        return pending

    def discard_pending_ballots(self) -> None:
        """Forget the count of pending ballots (after restoring ``corr_accum`` from elsewhere)."""
        self._pending_ballots = 0

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name, dtype in _BUFFER_DTYPES.items():
            key = prefix + name
            if key in state_dict and state_dict[key].dtype != dtype:
                error_msgs.append(f"{key}: expected dtype {dtype}, got {state_dict[key].dtype} (a float or "
                                  "re-typed checkpoint cannot be loaded into integer ternary state)")
        n_err = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if len(error_msgs) == n_err and all(prefix + n in state_dict for n in self._buffers):
            problem = self.validate_state()
            if problem:
                error_msgs.append(f"{prefix}: {problem}")
        self._pending_ballots = 0
        self._host_counter = None
        self._host_key = None

    def validate_state(self) -> Optional[str]:
        """Check the integer state's invariants; returns a description of the first violation or None."""
        try:
            validate_packed(self.T_packed, self.in_features)
        except ValueError as exc:
            return str(exc)
        if self.E.numel() and (int(self.E.min()) < E_MIN or int(self.E.max()) > E_MAX):
            return f"E outside [{E_MIN}, {E_MAX}]"
        if self.update == "legacy":
            if self.T_accum.numel() and int(self.T_accum.abs().max()) > 127:
                return "T_accum outside [-127, 127]"
            return None
        if self.update == "counter":
            problem = self._validate_counters()
            if problem:
                return problem
        n = int(self.step_counter)
        if n < 0:
            return f"step_counter is negative ({n})"
        if n * self.group_size > MAX_VOTE_TOTAL:
            return f"step_counter={n} exceeds the bound 2**62/group_size"
        if self.corr_accum.numel() and int(self.corr_accum.abs().max()) > n * self.group_size:
            return (f"|corr_accum| exceeds step_counter*group_size={n * self.group_size} "
                    "(each ballot adds at most group_size): corrupt or mismatched state")
        return None

    def _validate_counters(self) -> Optional[str]:
        shape = counter_packed_shape(self.out_features, self.in_features, self.counter_bits)
        if tuple(self.C_packed.shape) != shape:
            return f"C_packed has shape {tuple(self.C_packed.shape)}, {self.counter_bits}-bit counters need {shape}"
        tail = self.in_features % (8 // self.counter_bits)
        if tail and self.C_packed.numel() and bool((self.C_packed[:, -1] >> (tail * self.counter_bits)).any()):
            return "C_packed has non-zero padding counters after in_features (corrupt counter state)"
        return None

    def extra_repr(self) -> str:
        extra = {"bigint": f"strength={self.strength}", "flip": f"strength={self.strength}, flip_rate={self.flip_rate}",
                 "counter": f"strength={self.strength}, counter_bits={self.counter_bits}, "
                            f"counter_rate={self.counter_rate}",
                 "legacy": f"t_threshold={self.t_threshold}, e_threshold={self.e_threshold}"}[self.update]
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
                f"update={self.update!r}, {extra}")


def _refuse_pending_ballots(module: TernaryScaleTensor, prefix: str, keep_vars: bool) -> None:
    if module._pending_ballots:
        raise RuntimeError(
            f"{prefix or 'TernaryScaleTensor'}: {module._pending_ballots} ballot(s) cast since the last ternary_step(); "
            "call ternary_step(model) before state_dict() so step_counter matches corr_accum")


def ternary_layers(model: nn.Module):
    """All modules of ``model`` that hold integer ternary training state (have ``ternary_step``)."""
    return [m for m in model.modules() if callable(getattr(m, "ternary_step", None))]


def ternary_step(model: nn.Module) -> int:
    """The per-step update: fold every layer's pending ballots into its ``step_counter``.

    Returns the number of layers that had ballots.
    """
    return sum(1 for m in ternary_layers(model) if m.ternary_step())
