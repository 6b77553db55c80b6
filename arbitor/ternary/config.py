"""``TernaryConfig``: every setting of a ternary layer in one place.

A model config nests one (``ModelConfig.ternary``); ``TernaryScaleTensor.from_config`` builds a layer
from it, so the model code never copies layer settings field by field.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

from .format import COUNTER_BITS
from .ops.backend import requested_backend
from .rules import RULE_SETTINGS, RULES
from .rules.counter import MAX_COUNTER_RATE
from .scale import MAX_STRENGTH

__all__ = ["TernaryConfig"]


@dataclass(frozen=True)
class TernaryConfig:
    group_size: int = 64             # weights per scale group (power of two >= 4 dividing in_features)
    strength: Optional[float] = None  # S = 2**(E + strength*mean_corr); None: ARB_BIGINT_CORR_STRENGTH, else 4.0
    zero_fraction: float = 1.0 / 3.0  # share of zero trits at init
    update_rule: str = "counter"     # "counter" (trits on packed counters: the better learner, 0.94-1.00 B/weight
                                     # at groups 128-64) or "bigint" (the spec: only scales move, 0.39-0.54
                                     # B/weight at groups 64-32); the default is
                                     # the winner of the full-budget study (docs/quality.md): on shakespeare_char
                                     # it ends at 1.495 nats/char against 1.522 for tuned BitNet QAT and 1.532
                                     # for tuned dense AdamW, where bigint ends at 1.965. The `3b` preset pins
                                     # bigint: counter state would pass its 2.04 GB budget. (TernaryScaleTensor
                                     # itself, the spec's layer, still defaults to bigint.)
    counter_bits: int = 5            # counter only: bits per weight of C_packed (1, 2, 4, 5 or 8): 5 bits
                                     # (32 rungs per trit) end 0.034-0.052 nats below 4 at the same step in
                                     # trit units, on two CPU corpora (docs/quality.md, "A longer ladder")
    counter_rate: float = 1.0        # counter only: rungs per ballot per unit of row-RMS gradient (times the
                                     # schedule's rate factor). A layer has no notion of a corpus, so it keeps
                                     # 1.0, the best rate where a run sees its data a few times (Python source,
                                     # 8-10 passes, docs/quality.md). The trainer's default is "auto"
                                     # (train/run.py): 0.5 when the run's planned passes over its training
                                     # tokens exceed 30, else 1.0 (rules/counter.py auto_counter_rate has the
                                     # evidence); the resolved float is what the run's config stores
    ballot_prior: int = 0            # step_counter starts at this many zero-vote ballots: damps the first
                                     # ballots' jump (one unanimous ballot otherwise moves S by 2**strength)
    backend: Optional[str] = None    # ARB_TERNARY_BACKEND override (None: environment / auto)
    gradw_fp8: bool = False          # ballots form grad_W from fp8 e4m3 operands in layers where that pays
                                     # (ops/fp8.py fp8_pays: >= 4096 x 4096 weights, both sides >= 3072): the
                                     # layer forward + backward gains 2-11 % on the H200, votes agree with the
                                     # bf16 grad_W's up to fp8 rounding (docs/kernels.md, "fp8 grad_W")
    matmul_fp8: bool = False         # the forward and grad-x multiply fp8 e4m3 operands in layers with both sides
                                     # >= 3072 (ops/fp8.py fp8_matmul_pays; ops/fp8_linear.py): activations per
                                     # token and group scales rounded to 4 significant bits -- what the loss is
                                     # computed from changes (docs/kernels.md, "fp8 matmuls", has the speed and
                                     # the learning curves)

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        g = self.group_size
        if not (isinstance(g, int) and not isinstance(g, bool) and g >= 4 and g & (g - 1) == 0):
            raise ValueError(f"group_size must be a power of two >= 4, got {g!r}")
        if self.strength is not None and not (0.0 <= self.strength <= MAX_STRENGTH):
            raise ValueError(f"strength must be in [0, {MAX_STRENGTH:g}], got {self.strength}")
        if not (0.0 <= self.zero_fraction < 1.0):
            raise ValueError(f"zero_fraction must be in [0, 1), got {self.zero_fraction}")
        if self.update_rule not in RULES:
            raise ValueError(f"update_rule must be one of {', '.join(RULES)}, got {self.update_rule!r}")
        if self.counter_bits not in COUNTER_BITS:
            raise ValueError(f"counter_bits must be one of {', '.join(map(str, COUNTER_BITS))}, got {self.counter_bits!r}")
        if not (math.isfinite(self.counter_rate) and 0.0 <= self.counter_rate <= MAX_COUNTER_RATE):
            raise ValueError(f"counter_rate must be in [0, {MAX_COUNTER_RATE:g}], got {self.counter_rate}")
        if not (isinstance(self.ballot_prior, int) and self.ballot_prior >= 0):
            raise ValueError(f"ballot_prior must be a non-negative int, got {self.ballot_prior!r}")
        if self.backend is not None:
            requested_backend(self.backend)
        for name in ("gradw_fp8", "matmul_fp8"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def rule_settings(self) -> dict[str, Any]:
        """The settings of the chosen rule (e.g. ``counter_bits``/``counter_rate`` for ``counter``)."""
        return {name: getattr(self, name) for name in RULE_SETTINGS[self.update_rule]}

    def replace(self, **changes: Any) -> "TernaryConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

