"""``SparseTernaryEmbedding``: a ternary embedding table trained on the rows a batch touched.

Each row ``v`` of the table is ``T[v] * S[v]`` with ternary ``T[v]`` (packed 2 bits
per entry, ``packing.py``) and one scale per group of ``group_size`` consecutive
entries. Only rows that appear in a batch receive votes and ballots; the rest of the
table is untouched. A large table reads and votes only the touched rows (``torch.unique``:
its float gradient is ``[touched_rows, dim]``, never ``[vocab, dim]``); a small one
(``DENSE_TABLE_ELEMS``: the byte and character vocabularies) reads and votes all rows,
untouched rows having a zero gradient and no ballot, which avoids the host sync of
``torch.unique``. Both give the same integers. A ballot whose gradient holds a NaN or an
infinity casts nothing and is counted in ``nonfinite``.

Two update rules (``update_rule=``), selectable per model (``ModelConfig.embedding_update_rule``):

``"bigint"`` -- the spec's follow-up: the same BigInt correlation scaling as the dense
``TernaryScaleTensor`` layers (the vote of ``ops/votes.py``), with the ballot counted per row::

    buffers:  T_packed uint8 [V, ceil(D/4)], E int8 [V, G], corr_accum int64 [V, G],
              step_counter int64 [V]   (ballots *this row* took part in)
    S[v, g] = 2 ** (E[v, g] + strength * corr_accum[v, g] / (step_counter[v] * group_size))

A backward that touches row ``v`` is one ballot for that row: it adds the group vote
``-sum_{k in g} sign(dL/dW[v, k]) * T[v, k]`` (in ``[-G, G]``) to ``corr_accum[v, g]`` and 1
to ``step_counter[v]`` -- both at once, streamed during the backward, so
``mean_corr`` is in [-1, 1] at every moment and ``state_dict()`` is always consistent.
A per-row counter keeps rare tokens' scales as responsive as frequent ones'.
``T`` and ``E`` stay fixed.

``"legacy"`` -- the spec's original sparse tables (the spec keeps them for embeddings and VQ
codebooks): integer sign accumulators that flip a trit or step an exponent when a threshold is
crossed::

    buffers:  T_packed uint8 [V, ceil(D/4)], E int8 [V, G], T_accum int8 [V, D], E_accum int16 [V, G]
    S[v, g] = 2 ** E[v, g]

During backward every touched entry adds ``-sign(dL/dW[v, k])`` to ``T_accum[v, k]``
(saturating at +-127) and every touched group adds its group vote
``-sum sign(dL/dW) * T`` to ``E_accum[v, g]`` (saturating at the int16 range). The
per-step update (``ternary_step()``, once per optimisation step, on the touched rows):

* ``T_accum[v, k] >= t_threshold`` and ``T[v, k] < +1``: the trit moves up one
  (-1 -> 0 or 0 -> +1), ``T_accum[v, k] = 0``;
  ``T_accum[v, k] <= -t_threshold`` and ``T[v, k] > -1``: it moves down one, reset to 0.
  (A saturated trit keeps its accumulator: its push goes to the group's exponent.)
* ``E_accum[v, g] >= e_threshold``: ``E[v, g] += 1`` (the group scale doubles),
  ``E_accum[v, g] = 0``; ``<= -e_threshold``: ``E[v, g] -= 1``; reset to 0.

Defaults: ``t_threshold = 4`` consistent ballots per flip and ``e_threshold = 4 *
group_size`` (a group-wide unanimous push held for four ballots). Both are integers.

Initialisation (seeded, ``init.py``): ``T`` as in ``TernaryScaleTensor`` (``zero_fraction`` zeros,
+-1 equally likely otherwise); ``E`` drawn per group as ``a`` or ``a+1`` so that the
expected entry variance is ``init_var`` (default 1: unit-variance embeddings). A ``bigint`` table's
per-row ``step_counter`` starts at ``ballot_prior`` zero-vote ballots.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .ballots import StepBoundaryBallots
from .format import check_group_size, pack_ternary, packed_shape, unpack_ternary, validate_packed
from .init import draw_exponents, draw_trits, load_fit_, relative_error
from .ops.votes import group_votes
from .scale import E_MAX, E_MIN, bigint_scale, check_strength, default_strength

__all__ = ["SparseTernaryEmbedding", "EMBEDDING_RULES"]

EMBEDDING_RULES = ("bigint", "legacy")
_INT16_MAX = 32767


# Tables of at most this many entries are read and voted whole (no torch.unique, so no host sync; rows a
# batch did not touch get a zero gradient, hence no vote, and no ballot).
DENSE_TABLE_ELEMS = 1 << 22


class _EmbeddingFn(torch.autograd.Function):
    """``out[b, t] = W[idx[b, t]]``; backward sends votes of the touched rows into the integer state."""

    @staticmethod
    def forward(ctx, anchor: torch.Tensor, idx: torch.Tensor, module: "SparseTernaryEmbedding") -> torch.Tensor:
        flat = idx.reshape(-1)
        if module.dense:   # every row: no data-dependent shapes
            rows, inv = torch.arange(module.num_embeddings, device=idx.device), flat
        else:              # only the rows the batch touches (torch.unique: one host sync)
            rows, inv = torch.unique(flat, return_inverse=True)
        w = module.rows_weight(rows)                       # [U, D] float32
        out = w.index_select(0, inv).view(*idx.shape, module.dim)
        ctx.save_for_backward(rows, inv)
        ctx.module = module
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        rows, inv = ctx.saved_tensors
        module: SparseTernaryEmbedding = ctx.module
        if module.voting:
            grad_rows = torch.zeros(rows.numel(), module.dim, dtype=torch.float32, device=grad_out.device)
            grad_rows.index_add_(0, inv, grad_out.reshape(-1, module.dim).to(torch.float32))
            touched = torch.zeros(rows.numel(), dtype=torch.int64, device=grad_out.device)
            touched.index_add_(0, inv, torch.ones_like(inv))
            module._cast_ballot(rows, grad_rows, (touched > 0).to(torch.int64), torch.isfinite(grad_out).all())
        return None, None, None


class SparseTernaryEmbedding(StepBoundaryBallots, nn.Module):
    """Ternary embedding table ``[num_embeddings, dim]`` with integer-only training state.

    Args:
        num_embeddings: V, vocabulary size.
        dim: D, embedding width (multiple of ``group_size``).
        group_size: entries per scale group (power of two >= 4).
        update_rule: ``"bigint"`` or ``"legacy"`` (module doc).
        zero_fraction: share of zero trits at init.
        strength: BigInt strength (``"bigint"`` mode); default from ``ARB_BIGINT_CORR_STRENGTH``.
        t_threshold, e_threshold: legacy flip thresholds (``e_threshold`` default ``4 * group_size``).
        init_var: target variance of the initial entries.
        ballot_prior: zero-vote ballots each row's ``step_counter`` starts with (``bigint``).
        seed: seed of the ``T``/``E`` draw.

    Shapes: ``idx`` int64 ``[...]`` -> float32 ``[..., dim]``.
    """

    def __init__(self, num_embeddings: int, dim: int, group_size: int = 8, *, update_rule: str = "bigint",
                 zero_fraction: float = 1.0 / 3.0, strength: Optional[float] = None, t_threshold: int = 4,
                 e_threshold: Optional[int] = None, init_var: float = 1.0, ballot_prior: int = 0, seed: int = 0,
                 device: Optional[torch.device | str] = None) -> None:
        super().__init__()
        if update_rule not in EMBEDDING_RULES:
            raise ValueError(f"embedding update_rule must be one of {', '.join(EMBEDDING_RULES)}, got {update_rule!r}")
        check_group_size(dim, group_size)
        if not (isinstance(ballot_prior, int) and ballot_prior >= 0):
            raise ValueError(f"ballot_prior must be a non-negative int, got {ballot_prior!r}")
        if not (isinstance(t_threshold, int) and 1 <= t_threshold <= 127):
            raise ValueError(f"t_threshold must be an int in [1, 127], got {t_threshold!r}")
        e_threshold = 4 * group_size if e_threshold is None else e_threshold
        if not (isinstance(e_threshold, int) and 1 <= e_threshold <= _INT16_MAX):
            raise ValueError(f"e_threshold must be an int in [1, {_INT16_MAX}], got {e_threshold!r}")
        self.num_embeddings, self.dim, self.group_size = num_embeddings, dim, group_size
        self.in_features = dim  # rows * in_features == logical weights (audit convention)
        self.n_groups = dim // group_size
        self.update_rule = update_rule
        self.zero_fraction = float(zero_fraction)
        self.strength = check_strength(strength) if strength is not None else default_strength()
        self.t_threshold, self.e_threshold = t_threshold, e_threshold
        self._ballot_prior = ballot_prior
        self.dense = num_embeddings * dim <= DENSE_TABLE_ELEMS  # see DENSE_TABLE_ELEMS
        self._voting = True
        self._anchors: dict = {}
        self._dirty = False          # a forward since the last ternary_step() may have cast ballots
        self._touched: list[torch.Tensor] = []  # legacy: rows touched since the last ternary_step()
        self._init_ballots()         # step-boundary mode (ballots.py): online until set_step_mode

        dev = torch.device(device) if device is not None else None
        if (dev if dev is not None else torch.empty(0).device).type == "meta":  # shapes only (audits)
            packed = torch.empty(packed_shape(num_embeddings, dim), dtype=torch.uint8, device="meta")
            E = torch.empty(num_embeddings, self.n_groups, dtype=torch.int8, device="meta")
        else:
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
            packed = pack_ternary(draw_trits(num_embeddings, dim, zero_fraction, gen))
            E = draw_exponents(init_var / (1.0 - zero_fraction), num_embeddings, self.n_groups, gen)
        self.register_buffer("T_packed", packed.to(dev))
        self.register_buffer("E", E.to(dev))
        if update_rule == "bigint":
            self.register_buffer("corr_accum", torch.zeros(num_embeddings, self.n_groups, dtype=torch.int64, device=dev))
            self.register_buffer("step_counter", torch.full((num_embeddings,), ballot_prior, dtype=torch.int64,
                                                            device=dev))
        else:
            self.register_buffer("T_accum", torch.zeros(num_embeddings, dim, dtype=torch.int8, device=dev))
            self.register_buffer("E_accum", torch.zeros(num_embeddings, self.n_groups, dtype=torch.int16, device=dev))
        # ballots skipped because the gradient held a NaN or an infinity (such a ballot casts nothing)
        self.register_buffer("nonfinite", torch.zeros((), dtype=torch.int64, device=dev), persistent=False)

    # ------------------------------------------------------------------ weights
    def logical_ternary_weights(self) -> int:
        return self.num_embeddings * self.dim

    @torch.no_grad()
    def load_float_weight(self, weight: torch.Tensor) -> float:
        """Set ``T`` and ``E`` from a float table ``[num_embeddings, dim]`` (``init.fit_ternary``), reset the votes
        and counters; returns the relative error of ``T * S`` against it (``convert/``)."""
        if tuple(weight.shape) != (self.num_embeddings, self.dim):
            raise ValueError(f"load_float_weight: weight must be [{self.num_embeddings}, {self.dim}], got "
                             f"{tuple(weight.shape)}")
        if self._dirty:
            raise RuntimeError("load_float_weight: ballots are pending; call ternary_step() first")
        load_fit_(self.T_packed, self.E, weight, self.group_size)
        for name in ("corr_accum", "T_accum", "E_accum"):
            if getattr(self, name, None) is not None:
                getattr(self, name).zero_()
        if self.update_rule == "bigint":
            self.step_counter.fill_(self._ballot_prior)
        return relative_error(self.rows_weight(torch.arange(self.num_embeddings, device=self.E.device)), weight)

    def rows_scale(self, rows: torch.Tensor) -> torch.Tensor:
        """``S`` of the given rows: float32 ``[len(rows), n_groups]``."""
        E = self.E.index_select(0, rows)
        if self.update_rule == "legacy":
            return torch.exp2(E.to(torch.float32))
        ballots = self.step_counter.index_select(0, rows).unsqueeze(1)
        return bigint_scale(E, self.corr_accum.index_select(0, rows), ballots, self.group_size, self.strength)

    def rows_weight(self, rows: torch.Tensor) -> torch.Tensor:
        """Effective rows ``T * S``: float32 ``[len(rows), dim]``."""
        t = unpack_ternary(self.T_packed.index_select(0, rows), self.dim, torch.float32)
        S = self.rows_scale(rows)
        return (t.view(-1, self.n_groups, self.group_size) * S.unsqueeze(-1)).view(-1, self.dim)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx`` int64 ``[...]`` -> ``[..., dim]`` float32."""
        if idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"SparseTernaryEmbedding expects integer token ids, got {idx.dtype}")
        if idx.numel() and idx.device.type == "cpu":
            if int(idx.min()) < 0 or int(idx.max()) >= self.num_embeddings:
                raise IndexError(f"token id out of range [0, {self.num_embeddings}): min {int(idx.min())}, "
                                 f"max {int(idx.max())}")
        elif idx.numel():  # checked on the device, no host sync
            torch._assert_async(((idx >= 0) & (idx < self.num_embeddings)).all(),
                                f"SparseTernaryEmbedding: token id out of range [0, {self.num_embeddings})")
        idx = idx.to(torch.int64)
        train = self.training and self.voting and torch.is_grad_enabled()
        if train:
            self._dirty = True
        anchor = self._anchor(idx.device, train)
        out = _EmbeddingFn.apply(anchor, idx, self)
        return out if train else out.detach()

    # ------------------------------------------------------------------ training
    @property
    def voting(self) -> bool:
        """Whether a backward through this table casts a ballot (``set_voting``)."""
        return self._voting

    def set_voting(self, on: bool) -> None:
        """Let backward passes cast ballots (``True``, default) or not (``False``)."""
        self._voting = bool(on)

    def set_rate_factor(self, factor: float) -> None:
        """Neither embedding rule has a step size: schedules leave the table alone."""

    def _anchor(self, device: torch.device, train: bool) -> torch.Tensor:
        """An empty leaf (requiring grad when training) made once per device and mode: no tensor creation in a
        compiled forward."""
        key = (device, train)
        if key not in self._anchors:
            self._anchors[key] = torch.empty(0, device=device, requires_grad=train)
        return self._anchors[key]

    @property
    def pending_ballots(self) -> int:
        """Ballots whose update waits for ``ternary_step()``: the legacy flips of a dirty table (the ``bigint``
        ballots are counted at once, per row)."""
        return int(self._dirty and self.update_rule == "legacy")

    @property
    def dirty(self) -> bool:
        """A forward since the last ``ternary_step()`` may have cast ballots (host flag, no sync)."""
        return self._dirty

    def _cast_ballot(self, rows: torch.Tensor, grad_rows: torch.Tensor, touched: torch.Tensor,
                     ok: torch.Tensor) -> None:
        """One ballot of ``rows`` with their summed gradient ``grad_rows [U, D]``; ``touched [U]`` (0/1) marks the
        rows the batch used, ``ok`` (0-d bool) that the gradient is finite -- otherwise nothing is cast and the
        ballot is counted in ``nonfinite``. No host sync."""
        t = unpack_ternary(self.T_packed.index_select(0, rows), self.dim)
        okl = ok.to(torch.int64)
        group_vote = group_votes(grad_rows, t, self.group_size) * okl  # [U, G]; untouched rows: no gradient, 0
        if self._max_ballots is not None:
            self._gather_ballot(rows, grad_rows, touched, okl, group_vote)
        elif self.update_rule == "bigint":
            self.corr_accum.index_add_(0, rows, group_vote)
            self.step_counter.index_add_(0, rows, touched * okl)
        else:
            sgn = torch.sign(grad_rows).to(torch.int16) * okl.to(torch.int16)
            ta = self.T_accum.index_select(0, rows).to(torch.int16) - sgn
            self.T_accum.index_copy_(0, rows, ta.clamp_(-127, 127).to(torch.int8))
            ea = self.E_accum.index_select(0, rows).to(torch.int32) + group_vote.to(torch.int32)
            self.E_accum.index_copy_(0, rows, ea.clamp_(-_INT16_MAX, _INT16_MAX).to(torch.int16))
            self._touched.append(rows)
        self.nonfinite.add_(1 - okl)

    # ------------------------------------------------------------------ step-boundary mode
    def _step_mode_buffers(self, max_ballots: int) -> dict[str, torch.Tensor]:
        """Gathered per step: ``bigint``: ``vote_sum [V, G]`` and ``touch_sum [V]`` (ballots per row), sent as
        int32; ``legacy``: ``sign_sum [V, D]`` (sent as int8: at most 127 ballots) and ``vote_sum [V, G]`` int32."""
        from .rules.base import check_wire_bound
        dev = self.T_packed.device
        V, G = self.num_embeddings, self.n_groups
        check_wire_bound("vote_sum", max_ballots * self.group_size, torch.int32)
        if self.update_rule == "bigint":
            return {"vote_sum": torch.zeros(V, G, dtype=torch.int64, device=dev),
                    "touch_sum": torch.zeros(V, dtype=torch.int64, device=dev)}
        check_wire_bound("sign_sum", max_ballots, torch.int8)
        return {"vote_sum": torch.zeros(V, G, dtype=torch.int32, device=dev),
                "sign_sum": torch.zeros(V, self.dim, dtype=torch.int16, device=dev)}

    def _gather_ballot(self, rows: torch.Tensor, grad_rows: torch.Tensor, touched: torch.Tensor, okl: torch.Tensor,
                       group_vote: torch.Tensor) -> None:
        if self._ballots_in_step >= self._max_ballots:
            raise RuntimeError(f"SparseTernaryEmbedding: more than max_ballots={self._max_ballots} ballots in one "
                               "step (step-boundary mode); call ternary_step() or raise max_ballots")
        g = self.gathered()
        g["vote_sum"].index_add_(0, rows, group_vote.to(g["vote_sum"].dtype))
        if self.update_rule == "bigint":
            g["touch_sum"].index_add_(0, rows, touched * okl)
        else:
            g["sign_sum"].index_add_(0, rows, torch.sign(grad_rows).to(torch.int16) * okl.to(torch.int16))
        self._ballots_in_step += 1
        if self._ballot_hook is not None:
            self._ballot_hook(self)

    def set_ballot_slot(self, slot: int) -> None:
        """Tables draw nothing at random: the slot of a ballot does not matter (``TernaryScaleTensor``'s does)."""

    def set_slot_base(self, base: int) -> None:
        """See ``set_ballot_slot``."""

    def reduce_tensors(self) -> list[tuple[torch.Tensor, torch.dtype]]:
        """What a data-parallel all-reduce sums for this table, with the dtype to send it in."""
        wire = {"vote_sum": torch.int32, "touch_sum": torch.int32, "sign_sum": torch.int8}
        return [(buf, wire[name]) for name, buf in self.gathered().items()] + [(self.nonfinite, torch.int64)]

    def _apply_gathered(self) -> None:
        g = self.gathered()
        if self.update_rule == "bigint":
            self.corr_accum += g["vote_sum"]
            self.step_counter += g["touch_sum"]
        else:   # the saturating accumulators take the step's sums once, then the thresholds act on every row
            ta = self.T_accum.to(torch.int32) - g["sign_sum"].to(torch.int32)
            self.T_accum.copy_(ta.clamp_(-127, 127).to(torch.int8))
            ea = self.E_accum.to(torch.int32) + g["vote_sum"]
            self.E_accum.copy_(ea.clamp_(-_INT16_MAX, _INT16_MAX).to(torch.int16))
            self._apply_legacy_thresholds(torch.arange(self.num_embeddings, device=self.T_packed.device))
        for buf in g.values():
            buf.zero_()
        self._ballots_in_step = 0

    def ternary_step(self) -> int:
        """Per-step update. Legacy: apply the threshold flips to the rows touched since the last call.
        Step-boundary mode: apply the step's gathered (and, data-parallel, all-reduced) ballots.

        Returns 1 if the table was dirty (a forward may have cast ballots), else 0.
        """
        n = int(self._dirty)
        self._dirty = False
        if self._max_ballots is not None:
            if n:
                self._apply_gathered()
            return n
        if self.update_rule == "legacy" and self._touched:
            # a dense table applies the thresholds to every row: an untouched row has nothing pending (its
            # accumulators were settled when it was last touched), so this equals the touched rows' update
            rows = self._touched[0] if self.dense else torch.unique(torch.cat(self._touched))
            self._touched = []
            self._apply_legacy_thresholds(rows)
        return n

    def _apply_legacy_thresholds(self, rows: torch.Tensor) -> None:
        t = unpack_ternary(self.T_packed.index_select(0, rows), self.dim, torch.int8).to(torch.int16)
        ta = self.T_accum.index_select(0, rows)
        up = (ta >= self.t_threshold) & (t < 1)
        down = (ta <= -self.t_threshold) & (t > -1)
        moved = up | down
        t = t + up.to(torch.int16) - down.to(torch.int16)
        self.T_packed.index_copy_(0, rows, pack_ternary(t.to(torch.int8)))
        self.T_accum.index_copy_(0, rows, ta.masked_fill(moved, 0))
        ea = self.E_accum.index_select(0, rows)
        e_up = ea >= self.e_threshold
        e_down = ea <= -self.e_threshold
        E = self.E.index_select(0, rows).to(torch.int16) + e_up.to(torch.int16) - e_down.to(torch.int16)
        self.E.index_copy_(0, rows, E.clamp_(E_MIN, E_MAX).to(torch.int8))
        self.E_accum.index_copy_(0, rows, ea.masked_fill(e_up | e_down, 0))

    def discard_pending_ballots(self) -> None:
        self._dirty = False
        self._touched = []
        for buf in self.gathered().values():
            buf.zero_()
        self._ballots_in_step = 0

    def validate_state(self) -> Optional[str]:
        """Invariants of the integer state; a description of the first violation, or None."""
        try:
            validate_packed(self.T_packed, self.dim)
        except ValueError as exc:
            return str(exc)
        if self.T_packed.shape != torch.Size(packed_shape(self.num_embeddings, self.dim)):
            return f"T_packed has shape {tuple(self.T_packed.shape)}"
        if self.E.numel() and (int(self.E.min()) < E_MIN or int(self.E.max()) > E_MAX):
            return f"E outside [{E_MIN}, {E_MAX}]"
        if self.update_rule == "bigint":
            if int(self.step_counter.min()) < 0:
                return "negative step_counter"
            bound = self.step_counter.unsqueeze(1) * self.group_size
            if bool((self.corr_accum.abs() > bound).any()):
                return "|corr_accum| exceeds step_counter*group_size for some row: corrupt or mismatched state"
        return None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name, buf in self._buffers.items():
            key = prefix + name
            if key in state_dict and state_dict[key].dtype != buf.dtype:
                error_msgs.append(f"{key}: expected dtype {buf.dtype}, got {state_dict[key].dtype}")
        n_err = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if len(error_msgs) == n_err:
            problem = self.validate_state()
            if problem:
                error_msgs.append(f"{prefix}: {problem}")
        self.discard_pending_ballots()
        self.nonfinite.zero_()

    def extra_repr(self) -> str:
        extra = (f", t_threshold={self.t_threshold}, e_threshold={self.e_threshold}" if self.update_rule == "legacy"
                 else f", strength={self.strength}")
        return (f"{self.num_embeddings}, {self.dim}, group_size={self.group_size}, "
                f"update_rule={self.update_rule!r}{extra}")
