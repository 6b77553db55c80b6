"""``TernaryScaleTensor``: the dense pure-ternary linear layer with BigInt correlation scaling.

Persistent state (buffers, no ``nn.Parameter``)::

    T_packed     uint8 [out_features, ceil(in_features/4)]   ternary weights, 2 bits each (format.py)
    E            int8  [out_features, n_groups]               fixed exponent per scale group
    corr_accum   int64 [out_features, n_groups]               summed correlation votes
    step_counter int64 []                                     ballots counted so far
    + the update rule's own buffers (``counter``: C_packed, hash_key; rules/)

and two non-persistent device counters of the current step: ``pending`` (ballots cast since the last
``ternary_step()``) and ``nonfinite`` (ballots skipped because ``grad_y`` or ``x`` held a NaN or an
infinity -- such a ballot casts no vote at all).

with ``n_groups = in_features // group_size``. A scale group is ``group_size`` consecutive weights
along ``in_features`` within one output row. The effective weight is ``W_eff = T * S`` with ``S`` from
``scale.py``.

Layers: kernel -> op (``ops/``: torch reference or Triton, one signature) -> ``_TernaryLinearFn``
(the autograd function: saves only ``x``, recomputes ``W_eff`` in backward) -> ``TernaryScaleTensor``
(the module: owns the buffers, holds one ``UpdateRule`` object).

Ballots (the vote unit)
-----------------------
One *ballot* is one backward pass through the layer that casts votes. Every rule adds to each group
``vote = -sum_{k in group} sign(dL/dW_eff[k]) * T[k]``, an integer in ``[-group_size, group_size]``
(``ops/votes.py``; positive: a larger ``S`` lowers the loss); the ``counter`` rule also moves trits.
``step_counter`` counts ballots, so ``mean_corr = corr_accum / (ballots * group_size)`` is the average
vote per weight and always lies in [-1, 1] -- with one backward per step, with gradient accumulation
(k micro-batch backwards = k ballots), and with several loss components (one ballot each).

Streaming: votes go straight into ``corr_accum`` during backward (no float gradient buffer is ever
kept). The ballot is counted as *pending* and folded into ``step_counter`` by the explicit per-step
call ``ternary_step()`` (or the module-level ``ternary_step(model)``). Until then ``S`` is computed
with ``step_counter + pending`` so ``mean_corr`` stays in [-1, 1] at every moment. Both counters live
on the device and no op reads a value back to the host, so a training step has no host-device sync and
no Python side effect inside autograd (``torch.compile`` traces it). A forward that may lead to a
ballot (training, voting, grad enabled) marks the layer *dirty* on the host: ``ternary_step()`` folds only
dirty layers, and ``state_dict()`` refuses a dirty layer (its pending ballots are not folded yet). The
overflow bound of ``step_counter`` is asserted on the device (``scale.py``). Because updates are
streamed, a forward run after a backward in the same step (the next micro-batch, or the next loss
component's backward) already sees that ballot: the rule is online, applied the moment a ballot is cast.

Initialisation (seeded): ``T`` and ``E`` from ``init.py`` (``Var(W_eff)`` near ``1/in_features``);
``step_counter`` starts at ``ballot_prior`` zero-vote ballots.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import nn

from .ballots import StepBoundaryBallots
from .config import TernaryConfig
from .format import check_group_size, packed_shape, unpack_ternary, validate_packed
from .init import dense_scale_variance, draw_exponents, draw_packed_trits, load_fit_, relative_error
from .ops.backend import TernaryOps, get_ops, requested_backend
from .ops.fp8 import fp8_matmul_pays, fp8_pays
from .ops.linear import expand_weight
from .rules import TernaryState, UpdateRule, make_rule
from .scale import E_MAX, E_MIN, MAX_VOTE_TOTAL, bigint_scale, check_strength, default_strength

__all__ = ["TernaryScaleTensor"]

_FLOAT_INPUTS = (torch.float32, torch.float16, torch.bfloat16)
_BUFFER_DTYPES = {"T_packed": torch.uint8, "E": torch.int8, "corr_accum": torch.int64, "step_counter": torch.int64}


def check_linear_input(layer: nn.Module, x: torch.Tensor, device: torch.device) -> None:
    """One-line ``TypeError`` / ``ValueError`` / ``RuntimeError`` unless ``x`` is a float tensor ``[...,
    layer.in_features]`` on ``device`` (the layer's buffers); the message names the layer's class."""
    name = type(layer).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != layer.in_features:
        raise ValueError(f"{name}({layer.in_features}->{layer.out_features}): input last dimension must be "
                         f"{layer.in_features}, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_INPUTS:
        raise TypeError(f"{name}: input dtype must be float32, float16 or bfloat16, got {x.dtype}")
    if x.device != device:
        raise RuntimeError(f"{name}: input is on {x.device} but the layer's buffers are on {device}; move one of "
                           "them (model.to(device))")


class _TernaryLinearFn(torch.autograd.Function):
    """``y = x @ W_eff.T``; saves only ``x``; backward recomputes ``W_eff`` and casts the layer's ballot."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, vote_anchor: Optional[torch.Tensor], layer: "TernaryScaleTensor"):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, layer.in_features)
        y = layer._ops(x.device).linear_forward(x2, *layer._scale_state(), layer.in_features, layer.group_size,
                                                layer.strength, matmul_fp8=layer.uses_matmul_fp8)
        ctx.save_for_backward(x)
        ctx.layer = layer
        return y.reshape(*lead, layer.out_features)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        (x,) = ctx.saved_tensors
        layer: TernaryScaleTensor = ctx.layer
        need_grad_x = ctx.needs_input_grad[0]
        cast_votes = layer.voting
        if not (need_grad_x or cast_votes):
            return None, None, None
        gy2 = grad_y.reshape(-1, layer.out_features).to(x.dtype)
        x2 = x.reshape(-1, layer.in_features)
        ops = layer._ops(x.device)
        grad_x = None
        if need_grad_x:  # with the scale of the forward: this ballot is cast after
            grad_x = ops.linear_grad_x(gy2, *layer._scale_state(), layer.in_features, layer.group_size,
                                       layer.strength, matmul_fp8=layer.uses_matmul_fp8).reshape(x.shape)
        if cast_votes:
            layer._cast_ballot(gy2, x2, ops)
        return grad_x, None, None


class TernaryScaleTensor(StepBoundaryBallots, nn.Module):
    """Pure-ternary linear layer ``y = x @ (T * S).T`` with integer-only training state.

    Args:
        in_features: K, size of the last input dimension.
        out_features: N, size of the output's last dimension.
        group_size: weights per scale group along ``in_features`` (power of two >= 4 dividing K).
        update_rule: ``"bigint"`` (the spec's default) or ``"counter"`` (``rules/``), or an ``UpdateRule``.
        counter_bits, counter_rate: settings of the ``counter`` rule (``rules/counter.py``).
        strength: ``ARB_BIGINT_CORR_STRENGTH`` override (default: the environment, else 4.0).
        zero_fraction: share of zeros in the initial ``T`` (default 1/3), in [0, 1).
        ballot_prior: zero-vote ballots ``step_counter`` starts with (damps the first ballots).
        seed: seed for ``T`` and ``E``; ``None`` draws one from torch's global RNG
            (so ``torch.manual_seed`` makes models reproducible).
        device: where the buffers live (``"meta"``: shapes only, for audits of huge models).
        backend: ``ARB_TERNARY_BACKEND`` override for this layer (``torch``/``triton``/``auto``).
        gradw_fp8: the ballots form ``grad_W`` from fp8 operands where that pays (``ops/fp8.py``, ``fp8_pays``: at
            least 4096 x 4096 weights, both dimensions >= 3072; a 1.7-2.1x faster GEMM on the H200, votes within fp8
            rounding of the bf16 ones); a smaller layer keeps ``grad_W`` in the activations' dtype
            (``uses_gradw_fp8`` says which).
        matmul_fp8: the forward and grad-x multiply fp8 operands where that pays (``fp8_matmul_pays``: both
            dimensions >= 3072; above 16 rows): ``ops/fp8_linear.py``. Unlike ``gradw_fp8`` this rounds what the loss is
            computed from (activations and group scales to 4 significant bits); ``uses_matmul_fp8`` says where.

    Shapes: ``x [..., in_features] -> y [..., out_features]`` (fp32 / fp16 / bf16, y in x's dtype).
    """

    #: buffers that hold a setting, not state (never saved; ``ternary_audit`` does not count them)
    setting_buffers = ("rate",)

    def __init__(self, in_features: int, out_features: int, group_size: int = 64, *,
                 update_rule: Union[str, UpdateRule] = "bigint", strength: Optional[float] = None,
                 zero_fraction: float = 1.0 / 3.0, ballot_prior: int = 0, seed: Optional[int] = None,
                 device: Optional[Union[torch.device, str]] = None, backend: Optional[str] = None,
                 bias: bool = False, gradw_fp8: bool = False, matmul_fp8: bool = False,
                 **rule_settings: Any) -> None:
        super().__init__()
        if not (isinstance(in_features, int) and in_features > 0 and isinstance(out_features, int) and out_features > 0):
            raise ValueError(f"in_features and out_features must be positive ints, got {in_features!r}, {out_features!r}")
        check_group_size(in_features, group_size)
        if not (0.0 <= zero_fraction < 1.0):
            raise ValueError(f"zero_fraction must be in [0, 1), got {zero_fraction}")
        if not (isinstance(ballot_prior, int) and ballot_prior >= 0):
            raise ValueError(f"ballot_prior must be a non-negative int, got {ballot_prior!r}")
        if isinstance(update_rule, UpdateRule):
            if rule_settings:
                raise ValueError(f"give the settings {sorted(rule_settings)} to the UpdateRule object, not the layer")
            self.rule = update_rule
        else:
            self.rule = make_rule(update_rule, **rule_settings)
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.n_groups = in_features // group_size
        self.zero_fraction = float(zero_fraction)
        self._ballot_prior = ballot_prior
        self.strength = check_strength(strength) if strength is not None else default_strength()
        self.backend = requested_backend(backend) if backend is not None else None
        for name, value in (("gradw_fp8", gradw_fp8), ("matmul_fp8", matmul_fp8)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, got {value!r}")
        self.gradw_fp8, self.matmul_fp8 = gradw_fp8, matmul_fp8
        self._voting = True          # False: backward passes grad_x on but casts no ballot
        self._dirty = False          # a forward since the last ternary_step() may have cast ballots
        self._anchors: dict[torch.device, torch.Tensor] = {}
        self._init_ballots()         # step-boundary mode (ballots.py): online until set_step_mode
        self._slot_base = 0          # global index of this process's first ballot of the step
        self._slot: Optional[int] = None  # set_ballot_slot: the next ballot's global index in the step
        dev = torch.device(device) if device is not None else None
        meta = (dev if dev is not None else torch.empty(0).device).type == "meta"
        if seed is None:
            seed = 0 if meta else int(torch.randint(0, 2 ** 62, (), dtype=torch.int64, device="cpu"))
        self.seed = int(seed)

        if meta:
            T_packed = torch.empty(packed_shape(out_features, in_features), dtype=torch.uint8, device="meta")
            E = torch.empty(out_features, self.n_groups, dtype=torch.int8, device="meta")
        else:
            gen = torch.Generator(device="cpu").manual_seed(self.seed)
            T_packed = draw_packed_trits(out_features, in_features, self.zero_fraction, gen)
            E = draw_exponents(dense_scale_variance(in_features, self.zero_fraction), out_features, self.n_groups, gen)
        self.register_buffer("T_packed", T_packed.to(dev))
        self.register_buffer("E", E.to(dev))
        self.register_buffer("corr_accum", torch.zeros(out_features, self.n_groups, dtype=torch.int64, device=dev))
        self.register_buffer("step_counter", torch.full((), ballot_prior, dtype=torch.int64, device=dev))
        self.register_buffer("pending", torch.zeros((), dtype=torch.int64, device=dev), persistent=False)
        self.register_buffer("nonfinite", torch.zeros((), dtype=torch.int64, device=dev), persistent=False)
        # the rule's step size on the device (float32; not state: set_rate_factor refills it), so a schedule
        # changes neither a torch.compile graph (a float would be guarded by value: a recompile per change, inside
        # a CUDA-graph capture an error) nor a captured graph's launch constants
        self.register_buffer("rate", torch.full((), self.rule.rate, dtype=torch.float32, device=dev),
                             persistent=False)
        for name, buf in self.rule.buffers(out_features, in_features, self.seed, dev).items():
            self.register_buffer(name, buf)
        # a frozen float bias (a converted nn.Linear's, convert/): a buffer, so still no trainable parameter
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=dev) if bias else None)
        self.register_state_dict_pre_hook(_refuse_pending_ballots)

    @classmethod
    def from_config(cls, in_features: int, out_features: int, cfg: TernaryConfig, *, seed: Optional[int] = None,
                    device: Optional[Union[torch.device, str]] = None) -> "TernaryScaleTensor":
        """A layer with every setting from a ``TernaryConfig``."""
        return cls(in_features, out_features, cfg.group_size, update_rule=cfg.update_rule, strength=cfg.strength,
                   zero_fraction=cfg.zero_fraction, ballot_prior=cfg.ballot_prior, seed=seed, device=device,
                   backend=cfg.backend, gradw_fp8=cfg.gradw_fp8, matmul_fp8=cfg.matmul_fp8, **cfg.rule_settings())

    # ------------------------------------------------------------- forward
    def _ops(self, device: torch.device) -> TernaryOps:
        return get_ops(device, self.backend)

    def _scale_state(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(T_packed, E, corr_accum, step_counter, pending)``: what every linear op reads (step-boundary mode:
        no pending ballots -- the step-start state)."""
        pending = self.pending if self._max_ballots is None else self.no_pending
        return self.T_packed, self.E, self.corr_accum, self.step_counter, pending

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_features] -> [..., out_features]``."""
        check_linear_input(self, x, self.T_packed.device)
        y = _TernaryLinearFn.apply(x, self.ballot_anchor(x), self)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def ballot_anchor(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """For a forward of ``x`` about to run: mark the layer dirty if it may cast a ballot (training, voting, grad
        enabled), and return the empty anchor its autograd function takes when ``x`` itself does not require grad
        (else ``None``). ``forward`` and ``sibling.sibling_forward`` call it."""
        if self.training and self._voting and torch.is_grad_enabled():
            if not self._dirty:    # stored only when unset: see expect_ballot
                self._dirty = True
            if not x.requires_grad:
                # Votes are cast in backward, which autograd runs only if some input requires grad:
                # an empty anchor makes the output part of the graph without computing grad_x.
                return self._anchor(x.device)
        return None

    def expect_ballot(self) -> None:
        """Mark the layer dirty now if its next forward may cast a ballot (training, voting, grad enabled), as that
        forward would. For a caller about to run the layer inside ``torch.utils.checkpoint``
        (``step.expect_ballots``): under ``torch.compile`` a checkpointed region is one higher-order op, inside
        which Dynamo refuses a store to a module attribute and runs the whole region eagerly instead (the ``3b``
        preset's blocks: unfused norms and activations, ~1.6x the GPU time of the compiled step); the forward
        stores the flag only when it is unset, so a marked layer's forward stores nothing."""
        if self.training and self._voting and torch.is_grad_enabled():
            self._dirty = True

    def _anchor(self, device: torch.device) -> torch.Tensor:
        """An empty leaf that requires grad, made once per device (so a compiled forward creates none)."""
        if device not in self._anchors:
            self._anchors[device] = torch.empty(0, device=device, requires_grad=True)
        return self._anchors[device]

    # ------------------------------------------------------------- ballots
    @property
    def uses_gradw_fp8(self) -> bool:
        """Whether this layer's ballots form ``grad_W`` in fp8: ``gradw_fp8`` and a shape where it pays."""
        return self.gradw_fp8 and fp8_pays(self.out_features, self.in_features)

    @property
    def uses_matmul_fp8(self) -> bool:
        """Whether this layer's forward and grad-x (above 16 rows) multiply fp8 operands: ``matmul_fp8`` and a shape
        where it pays (``fp8_matmul_pays``)."""
        return self.matmul_fp8 and fp8_matmul_pays(self.out_features, self.in_features)

    def _state(self) -> TernaryState:
        return TernaryState(self.T_packed, self.E, self.corr_accum, self.step_counter, self.pending, self.nonfinite,
                            self.in_features, self.out_features, self.group_size, self.rate,
                            {name: getattr(self, name) for name in self.rule.buffer_dtypes}, self.uses_gradw_fp8)

    def _cast_ballot(self, grad_y: torch.Tensor, x: torch.Tensor, ops: TernaryOps) -> None:
        """One ballot of ``grad_y [M, N]`` and ``x [M, K]`` through the rule (counted on the device)."""
        if self._max_ballots is None:
            self.rule.ballot(self._state(), grad_y, x, ops)
            return
        if self._ballots_in_step >= self._max_ballots:
            raise RuntimeError(f"TernaryScaleTensor: more than max_ballots={self._max_ballots} ballots in one step "
                               "(step-boundary mode); call ternary_step() or raise max_ballots")
        slot = self._slot if self._slot is not None else self._slot_base + self._ballots_in_step
        if slot >= self._max_ballots:
            raise RuntimeError(f"TernaryScaleTensor: ballot slot {slot} >= max_ballots={self._max_ballots} (step-boundary "
                               "mode): a micro-batch casts more ballots than its passes allow -- a chunked loss casts "
                               "one per chunk (ModelConfig.ballots_per_pass)")
        self._slot = slot + 1        # a second ballot of the same pass (the next loss chunk) takes the next slot
        self.rule.gather(self._state(), self.gathered(), grad_y, x, ops, self.step_counter + slot)
        self._ballots_in_step += 1
        if self._ballot_hook is not None:
            self._ballot_hook(self)

    # ------------------------------------------------------------- step-boundary mode
    def _step_mode_buffers(self, max_ballots: int) -> dict[str, torch.Tensor]:
        """The rule's gather buffers (``rules/base.py``, ``ops/gather.py``); a gathering forward reads a zero
        ``pending`` (``no_pending``): every micro-batch of a step computes against the step-start state."""
        if "no_pending" not in self._buffers:
            self.register_buffer("no_pending", torch.zeros_like(self.pending), persistent=False)
        return self.rule.gather_buffers(self._state(), max_ballots)

    def set_ballot_slot(self, slot: int) -> None:
        """The global index, within the step, of the next ballot this layer casts (its counter-hash draw is keyed
        by ``step_counter + slot``); set by a data-parallel loop so draws do not depend on the rank."""
        self._slot = int(slot)

    def set_slot_base(self, base: int) -> None:
        """Without ``set_ballot_slot``, the k-th ballot of a step takes slot ``base + k`` (a rank's offset)."""
        self._slot_base = int(base)

    def reduce_tensors(self) -> list[tuple[torch.Tensor, torch.dtype]]:
        """What a data-parallel all-reduce sums for this layer, with the dtype to send it in: the gather buffers
        and the ballot counts (``pending``, ``nonfinite``)."""
        wire = self.rule.wire_dtypes(self._max_ballots or 1)
        return [(buf, wire[name]) for name, buf in self.gathered().items()] + [
            (self.pending, torch.int64), (self.nonfinite, torch.int64)]

    @property
    def voting(self) -> bool:
        """Whether a backward through this layer casts a ballot (``set_voting``)."""
        return self._voting

    def set_voting(self, on: bool) -> None:
        """Let backward passes cast ballots (``True``, default) or only pass ``grad_x`` on (``False``)."""
        self._voting = bool(on)

    def set_rate_factor(self, factor: float) -> None:
        """Scale the rule's step size for the following ballots (a schedule's one door into a layer)."""
        self.rule.set_rate_factor(factor)
        self.rate.fill_(self.rule.rate)                  # in place: compiled and captured steps read this tensor

    def _apply(self, fn, recurse: bool = True):
        """``.to()`` / ``.half()`` / ``.to_empty()`` move ``rate`` and refill it from the rule, the source of
        truth: it stays float32 (a half-precision step size would round every ballot's steps) and is defined after
        ``to_empty`` (which leaves buffers uninitialised)."""
        super()._apply(fn, recurse)
        if self.rate.dtype != torch.float32:
            self.rate = torch.full((), self.rule.rate, dtype=torch.float32, device=self.rate.device)
        else:
            self.rate.fill_(self.rule.rate)              # in place: a tensor a captured graph reads keeps its address
        return self

    @property
    def update_rule(self) -> str:
        """The name of the layer's update rule."""
        return self.rule.name

    @property
    def pending_ballots(self) -> int:
        """Ballots counted since the last ``ternary_step()`` (reads the device counter: a sync)."""
        return int(self.pending)

    @property
    def dirty(self) -> bool:
        """A forward since the last ``ternary_step()`` may have cast ballots (host flag, no sync)."""
        return self._dirty

    def ternary_step(self) -> int:
        """Fold the pending ballots into ``step_counter`` (and run the rule's per-step part), on the device.

        Returns 1 if the layer was dirty (a forward may have cast ballots), else 0 -- no sync. That
        ``step_counter * group_size`` stays below 2**62 (``scale.py``: ``corr_accum`` cannot overflow int64) is
        asserted on the device: a breach stops the run with a device-side assertion.
        """
        return type(self).ternary_step_many([self])

    @classmethod
    def ternary_step_many(cls, layers: list["TernaryScaleTensor"]) -> int:
        """``ternary_step()`` of several layers at once (``step.ternary_step(model)`` calls it with all of a model's):
        each layer's ballots fold as its own ``ternary_step()`` would, but with one multi-tensor launch per operation
        for all the layers of a device and group size (``torch._foreach_add_`` / ``_foreach_zero_``, one bound check)
        instead of four tiny launches a layer -- about 200 of the nanoGPT-shape step's 850 launches, each a
        microsecond or more of a CUDA-graph replay. Returns the number of dirty layers."""
        dirty = [m for m in layers if m._dirty]
        groups: dict[tuple, list[TernaryScaleTensor]] = {}
        for m in dirty:
            groups.setdefault((m.step_counter.device, m.group_size), []).append(m)
        for (_, group_size), ms in groups.items():
            counters, pending = [m.step_counter for m in ms], [m.pending for m in ms]
            torch._foreach_add_(counters, pending)
            torch._foreach_zero_(pending)
            top = counters[0] if len(ms) == 1 else torch.stack(counters).max()
            torch._assert_async(top <= MAX_VOTE_TOTAL // group_size,
                                "TernaryScaleTensor: step_counter * group_size would pass 2**62 (corr_accum overflow)")
        for m in dirty:
            m._dirty = False
            if m._max_ballots is not None:
                m.rule.apply_gathered(m._state(), m.gathered())
                m._clear_gathered()
            m.rule.fold(m._state())
        return len(dirty)

    def discard_pending_ballots(self) -> None:
        """Forget the pending ballots (after restoring ``corr_accum`` from elsewhere)."""
        self._dirty = False
        self.pending.zero_()
        self._clear_gathered()

    def _clear_gathered(self) -> None:
        """Empty the step-boundary buffers for the next step (nothing in the online mode)."""
        for buf in self.gathered().values():
            buf.zero_()
        self._ballots_in_step = 0
        self._slot = None

    @torch.no_grad()
    def load_float_weight(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> float:
        """Set ``T`` and ``E`` from a float weight ``[out_features, in_features]`` (``init.fit_ternary``: per group,
        the ternary pattern and power-of-two scale closest to it), reset the votes (``corr_accum = 0``,
        ``step_counter = ballot_prior``, so ``S = 2**E`` exactly) and copy ``bias`` into the frozen bias buffer.
        Returns the relative error ``||W_eff - W|| / ||W||``."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"load_float_weight: weight must be [{self.out_features}, {self.in_features}], got "
                             f"{tuple(weight.shape)}")
        if self._dirty:
            raise RuntimeError("load_float_weight: ballots are pending; call ternary_step() first")
        load_fit_(self.T_packed, self.E, weight, self.group_size)
        self.corr_accum.zero_()
        prior = self.step_counter.new_tensor(self._ballot_prior)
        self.step_counter.copy_(prior)
        if bias is not None:
            if self.bias is None:
                raise ValueError("load_float_weight: this layer has no bias (build it with bias=True)")
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(f"load_float_weight: bias must be [{self.out_features}], got {tuple(bias.shape)}")
            self.bias.copy_(bias.detach().to(self.bias.device, torch.float32))
        return relative_error(self.effective_weight(), weight)

    # --------------------------------------------------------------- views
    def scale(self) -> torch.Tensor:
        """Per-group scale ``S`` ``[out_features, n_groups]`` float32 (``scale.py``)."""
        return bigint_scale(self.E, self.corr_accum, self.step_counter + self._scale_state()[4], self.group_size,
                            self.strength)

    def mean_corr(self) -> torch.Tensor:
        """``corr_accum / (ballots * group_size)`` as float64, 0 before any ballot."""
        n = float(self.step_counter + self._scale_state()[4])
        if n == 0:
            return torch.zeros_like(self.corr_accum, dtype=torch.float64)
        return self.corr_accum.to(torch.float64) / (n * self.group_size)

    def ternary(self) -> torch.Tensor:
        """The ternary matrix ``T`` as int8 ``[out_features, in_features]``."""
        return unpack_ternary(self.T_packed, self.in_features)

    def effective_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense ``W_eff = T * S`` ``[out_features, in_features]`` (allocates the full matrix: debugging/export)."""
        return expand_weight(self.T_packed, self.scale(), self.in_features, self.group_size, dtype)

    # --------------------------------------------------------- state dicts
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name, dtype in {**_BUFFER_DTYPES, **self.rule.buffer_dtypes}.items():
            key = prefix + name
            if key in state_dict and state_dict[key].dtype != dtype:
                error_msgs.append(f"{key}: expected dtype {dtype}, got {state_dict[key].dtype} (a float or "
                                  "re-typed checkpoint cannot be loaded into integer ternary state)")
        n_err = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        persistent = [n for n, b in self._buffers.items() if b is not None and n not in self._non_persistent_buffers_set]
        if len(error_msgs) == n_err and all(prefix + n in state_dict for n in persistent):
            problem = self.validate_state()
            if problem:
                error_msgs.append(f"{prefix}: {problem}")
        self.discard_pending_ballots()
        self.nonfinite.zero_()

    def validate_state(self) -> Optional[str]:
        """Check the integer state's invariants; returns a description of the first violation or None."""
        try:
            validate_packed(self.T_packed, self.in_features)
        except ValueError as exc:
            return str(exc)
        if self.E.numel() and (int(self.E.min()) < E_MIN or int(self.E.max()) > E_MAX):
            return f"E outside [{E_MIN}, {E_MAX}]"
        problem = self.rule.validate(self._state())
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

    def extra_repr(self) -> str:
        settings = "".join(f", {k}={v}" for k, v in self.rule.settings().items())
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
                f"update_rule={self.rule.name!r}, strength={self.strength}{settings}"
                + (f", gradw_fp8=True (used: {self.uses_gradw_fp8})" if self.gradw_fp8 else "")
                + (f", matmul_fp8=True (used: {self.uses_matmul_fp8})" if self.matmul_fp8 else ""))


def _refuse_pending_ballots(module: TernaryScaleTensor, prefix: str, keep_vars: bool) -> None:
    if module._dirty:
        raise RuntimeError(
            f"{prefix or 'TernaryScaleTensor'}: ballots may have been cast since the last ternary_step(); "
            "call ternary_step(model) before state_dict() so step_counter matches corr_accum")
