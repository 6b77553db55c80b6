"""``counter``: BigInt scales plus trits that train on small packed per-weight counters.

The scales move exactly as in ``bigint`` (the same votes, cast with the trits of the forward). The
trits are driven by a packed per-weight counter ``C`` of ``b = counter_bits`` bits (``C_packed``,
layout in ``format.py``). Trit and counter together are one integer *position* on a ladder of
``3 * L`` rungs, ``L = 2**b``::

    p = (T + 1) * L + C          T = p // L - 1,  C = p % L,   p in [0, 3L)

so each trit value owns ``L`` consecutive rungs. Every ballot moves each position by a
stochastically rounded, row-normalised gradient step::

    g     = dL/dW_eff[n, k]                      (one block of grad_W, never stored)
    a     = rate * |g| / rms(g[n, :])            (rungs; its expectation is the step)
    steps = floor(a + u),  u = hash(hash_key, ballot, n, k) * 2**-24     (ops/hashing.py; ballot =
                                                                          step_counter + pending, on the device)
    p    <- clamp(p - sign(g) * steps, 0, 3L - 1)

``E[steps] = a`` exactly (for ``a < 3L``), so in expectation this is SGD with a per-row
RMS-normalised step of ``rate`` rungs on a latent integer weight whose ternary read-out is ``T``.
A weight must collect about ``L`` rungs of net drift before its trit changes, so gradient noise no
longer flips trits back and forth, and a saturated ``+-1`` needs ``L`` opposite rungs to come back
(hysteresis, like the clipped latent weight of QAT). Initial ``C`` is ``L // 2`` (the middle of each
trit's rungs). ``rate = counter_rate * rate_factor``: a schedule scales it through
``set_rate_factor``, and the layer keeps its float32 value on the device (its ``rate`` buffer), which the ballot
reads: a compiled or CUDA-graphed step sees a new rate without a recompile or a new launch constant. The draw
is keyed by the integer state (``hash_key``, the ballot index), so runs are reproducible and resume bit-exactly.

State: the BigInt state + ``b / 8`` bytes per weight (``C_packed``) + the int64 ``hash_key``; ``b = 4``
with group 64 is 0.25 + 0.5 + 9/64 = 0.89 bytes per weight, ``b = 5`` (two planes, ``format.py``) with group
128 is 0.25 + 0.625 + 9/128 = 0.95. A longer ladder (more bits) rounds each step more finely: at the same
step size in trit units (``rate / L``) the CPU study of ``docs/quality.md`` ends 0.034 nats lower with ``b = 5``
than with ``b = 4`` and 0.047 lower with ``b = 8``. The op is ``ops.counter_ballot_``: one
``grad_W`` pass per row block casts the scale votes and moves the trits (torch reference or one fused
Triton kernel per block).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from ..format import check_counter_bits, counter_packed_shape, counter_padding_ok, pack_counters
from ..ops.gather import apply_moves_, counter_gather_, move_cap
from .base import TernaryState, UpdateRule

__all__ = ["CounterRule", "MAX_COUNTER_RATE", "AUTO_RATE_PASSES", "AUTO_RATE_MANY", "AUTO_RATE_FEW",
           "auto_counter_rate"]

MAX_COUNTER_RATE = 64.0
# ``counter_rate="auto"`` (the trainer's default, ``train/run.py``) picks the rate from how often a run will repeat
# its training tokens. Evidence (issue 18, 5-bit counters):
# * CPU grid, benchmarks/results/quality/cpu-issue18-rule-variants.md (last section; 0.59 M weights, 2000 steps):
#   at 76 passes rate 0.5 beats rate 1 by 0.09-0.17 nats on both Shakespeare and Python source (2.0366 vs
#   2.2048, 1.4288 vs 1.5164); at 23 passes (Shakespeare 100 KB) and 0.2 passes (Python source 10 MB) rate 2 is
#   best and rate 1 beats rate 0.5.
# * GPU, docs/quality.md: shakespeare_char with nanoGPT's recipe (82 passes) ends at 1.5125 +- 0.0034 with rate 0.5,
#   0.010 below QAT's 1.5220, where rate 1 ends 0.015 above it (1.5366); Python source at 14 M weights (about 8
#   passes) ends 0.003 below QAT with rate 1 and 0.020 above with rate 0.5; at 59 M weights (10 passes) rate 1
#   ends at 0.8652 against the best QAT's 0.9193 (rate 0.5 there: 0.8606, the one case below 30 passes where 0.5
#   is ahead, by 0.005).
# The threshold was read off these same runs, not fitted on held-out ones. One held-out GPU run since
# (benchmarks/results/quality/h200-issue18-heldout/: the first 1.5 MB of the Python source, 60.7 passes, seed 0)
# agreed: rate 0.5 1.1216, rate 1 1.1504. Where between 23 and 76 passes the best rate turns is not measured.
AUTO_RATE_PASSES = 30.0     # more planned passes than this: AUTO_RATE_MANY, else AUTO_RATE_FEW
AUTO_RATE_MANY = 0.5        # a run that repeats its corpus many times (overfitting regime)
AUTO_RATE_FEW = 1.0         # a run that sees its data a few times (TernaryConfig's default)
_KEY_SALT = 0x5DEECE66D  # hash_key = seed ^ salt: a layer's draws differ from its init draws


def auto_counter_rate(passes: Optional[float]) -> float:
    """The ``counter_rate`` that ``"auto"`` resolves to for a run planned to make ``passes`` passes over its training
    tokens (``steps * tokens per step / training tokens``): ``AUTO_RATE_MANY`` (0.5) above ``AUTO_RATE_PASSES``
    (30) passes, else ``AUTO_RATE_FEW`` (1.0); the evidence is in the comment above. ``passes=None`` -- the
    number cannot be computed meaningfully, e.g. a multimodal run, whose modalities are drawn at random and
    counted in different units (bytes, patches) -- gives ``AUTO_RATE_FEW``."""
    if passes is None or not math.isfinite(passes):
        return AUTO_RATE_FEW
    return AUTO_RATE_MANY if passes > AUTO_RATE_PASSES else AUTO_RATE_FEW


class CounterRule(UpdateRule):
    """Trits on packed ``counter_bits``-bit counters, stepped by ``counter_rate`` rungs (module doc)."""

    name = "counter"
    buffer_dtypes = {"C_packed": torch.uint8, "hash_key": torch.int64}

    def __init__(self, counter_bits: int = 5, counter_rate: float = 1.0) -> None:
        super().__init__()
        check_counter_bits(counter_bits)
        if not (isinstance(counter_rate, (int, float)) and math.isfinite(counter_rate)
                and 0.0 <= counter_rate <= MAX_COUNTER_RATE):
            raise ValueError(f"counter_rate must be in [0, {MAX_COUNTER_RATE:g}], got {counter_rate!r}")
        self.counter_bits = int(counter_bits)
        self.counter_rate = float(counter_rate)

    @property
    def rate(self) -> float:
        """The step size of the next ballots: ``counter_rate * rate_factor`` rungs per unit of row-RMS gradient."""
        return self.counter_rate * self.rate_factor

    def buffers(self, out_features: int, in_features: int, seed: int,
                device: Optional[torch.device]) -> dict[str, torch.Tensor]:
        bits = self.counter_bits
        if device is not None and torch.device(device).type == "meta":
            C = torch.empty(counter_packed_shape(out_features, in_features, bits), dtype=torch.uint8, device="meta")
        else:  # every counter starts mid-ladder: L // 2
            mid = torch.full((out_features, in_features), 1 << (bits - 1), dtype=torch.uint8, device=device)
            C = pack_counters(mid, bits, check=False)
        key = torch.tensor(seed ^ _KEY_SALT, dtype=torch.int64, device=device)
        return {"C_packed": C, "hash_key": key}

    def ballot(self, state: TernaryState, grad_y: torch.Tensor, x: torch.Tensor, ops: Any) -> None:
        ops.counter_ballot_(grad_y, x, state.T_packed, state.extra["C_packed"], state.corr_accum, state.step_counter,
                            state.pending, state.nonfinite, state.extra["hash_key"], state.in_features,
                            state.group_size, self.counter_bits, state.rate, gradw_fp8=state.gradw_fp8)

    def gather_buffers(self, state: TernaryState, max_ballots: int) -> dict[str, torch.Tensor]:
        out = super().gather_buffers(state, max_ballots)
        move_cap(self.counter_bits, max_ballots)          # max_ballots <= 127: a step's moves fit int8
        out["move_sum"] = torch.zeros(state.out_features, state.in_features, dtype=torch.int8,
                                      device=state.corr_accum.device)
        self._cap = move_cap(self.counter_bits, max_ballots)
        return out

    def wire_dtypes(self, max_ballots: int) -> dict[str, torch.dtype]:
        return {**super().wire_dtypes(max_ballots), "move_sum": torch.int8}

    def gather(self, state: TernaryState, gathered: dict[str, torch.Tensor], grad_y: torch.Tensor, x: torch.Tensor,
               ops: Any, ballot: torch.Tensor) -> None:
        counter_gather_(grad_y, x, state.T_packed, gathered["vote_sum"], gathered["move_sum"], ballot, state.pending,
                        state.nonfinite, state.extra["hash_key"], state.in_features, state.group_size, state.rate,
                        self._cap, impl="triton" if ops.name == "triton" else "torch", gradw_fp8=state.gradw_fp8)

    def apply_gathered(self, state: TernaryState, gathered: dict[str, torch.Tensor]) -> None:
        super().apply_gathered(state, gathered)
        apply_moves_(state.T_packed, state.extra["C_packed"], gathered["move_sum"], state.in_features,
                     self.counter_bits)

    def validate(self, state: TernaryState) -> Optional[str]:
        C = state.extra["C_packed"]
        bits = self.counter_bits
        shape = counter_packed_shape(state.out_features, state.in_features, bits)
        if tuple(C.shape) != shape:
            return f"C_packed has shape {tuple(C.shape)}, {bits}-bit counters need {shape}"
        if not counter_padding_ok(C, state.in_features, bits):
            return "C_packed has non-zero padding counters after in_features (corrupt counter state)"
        return None

    def settings(self) -> dict[str, Any]:
        return {"counter_bits": self.counter_bits, "counter_rate": self.counter_rate}

