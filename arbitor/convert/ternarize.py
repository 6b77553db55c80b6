"""``ternarize``: turn a model you already have into a pure-ternary one, in place, from its float weights.

Every ``nn.Linear`` (and transformers' ``Conv1D``, GPT-2's projection layer, whose weight is stored
``[in, out]``) becomes a ``TernaryScaleTensor`` initialised from its weight (``init.fit_ternary``: per scale
group the ternary pattern and power-of-two scale closest to it) with its bias kept as a frozen float
buffer. Every other parameter (norms, embeddings, a kept head) is frozen (``requires_grad=False``), so
the model trains with zero trainable float parameters: only the ternary layers' integer state moves,
through ``loss.backward(); arbitor.ternary_step(model)``.

Rules (each reported, never silent):

* **group size** -- ``group_size`` when it divides the layer's ``in_features``, else the largest power
  of two below it that does (at least 4); a layer whose ``in_features`` is not a multiple of 4 cannot be
  ternarized and is refused with a message naming it and the fix (``exclude=[name]``).
* **tied weights** -- a ``Linear`` whose weight is shared with another module (an LM head tied to the
  embedding) stays float and frozen by default (``tied="skip"``): converting it would untie the two;
  ``tied="untie"`` converts it and leaves the other module its float copy.
* **include / exclude** -- ``fnmatch`` patterns on module names (``exclude=["lm_head"]``).
* **embeddings** (``embeddings=True``) -- each ``nn.Embedding`` becomes a ``SparseTernaryEmbedding`` (the
  ``bigint`` table: per-row ballots, trained on the rows a batch touches) fitted the same way; its output is
  float32 and ``padding_idx`` / ``max_norm`` are not kept (reported). Off by default: an embedding is a
  lookup, cheap in float, and often tied to the head.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
from torch import nn

from ..ternary.embedding import SparseTernaryEmbedding
from ..ternary.layer import TernaryScaleTensor

__all__ = ["ternarize", "ConversionReport", "LayerReport", "group_size_for", "CONVERTIBLE"]

CONVERTIBLE = ("Linear", "Conv1D")


@dataclass
class LayerReport:
    """One module's conversion: ``status`` is ``"ternary"`` or why it stayed float."""

    name: str
    kind: str
    shape: tuple[int, int]            # (out_features, in_features)
    status: str
    group_size: Optional[int] = None
    rel_error: Optional[float] = None  # ||W_eff - W|| / ||W||


@dataclass
class ConversionReport:
    layers: list[LayerReport]

    @property
    def converted(self) -> list[LayerReport]:
        return [r for r in self.layers if r.status.startswith("ternary")]

    def format(self) -> str:
        """A table: module, kind, shape, group size, relative error of ``T * S`` against the float weight."""
        lines = [f"{'module':<40} {'kind':<7} {'shape':>13} {'group':>5} {'rel.err':>8}  status"]
        for r in self.layers:
            err = f"{r.rel_error:.4f}" if r.rel_error is not None else "-"
            lines.append(f"{r.name:<40} {r.kind:<7} {r.shape[0]:>6}x{r.shape[1]:<6} {r.group_size or '-':>5} "
                         f"{err:>8}  {r.status}")
        conv = self.converted
        if conv:
            w = sum(r.shape[0] * r.shape[1] for r in conv)
            mean = sum(r.rel_error * r.shape[0] * r.shape[1] for r in conv) / w
            lines.append(f"{len(conv)} of {len(self.layers)} layers ternary, {w:,} weights, weighted mean relative "
                         f"error {mean:.4f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [dataclasses.asdict(r) for r in self.layers]}


def group_size_for(in_features: int, group_size: int) -> Optional[int]:
    """The group size used for a layer (module doc): ``group_size`` or the largest power of two below it that
    divides ``in_features``, at least 4; ``None`` when none does."""
    g = 1 << (max(group_size, 4).bit_length() - 1)
    while g >= 4:
        if in_features % g == 0:
            return g
        g //= 2
    return None


def _weight_of(module: nn.Module) -> tuple[torch.Tensor, str]:
    """``(W [out, in], kind)``: Conv1D stores its weight transposed; an Embedding's ``[num, dim]`` reads as
    ``out = num`` rows of ``in = dim``."""
    kind = type(module).__name__
    return (module.weight.t() if kind == "Conv1D" else module.weight), kind


def _matches(name: str, patterns: Optional[Iterable[str]]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())


@torch.no_grad()
def ternarize(model: nn.Module, *, group_size: int = 64, update_rule: str = "bigint",
              include: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None, tied: str = "skip",
              strength: Optional[float] = None, ballot_prior: int = 8, backend: Optional[str] = None,
              embeddings: bool = False, **rule_settings: Any) -> ConversionReport:
    """Replace ``model``'s ``Linear`` / ``Conv1D`` modules by ternary layers fitted to their weights, freeze every
    remaining parameter, and return the per-layer report (module doc). ``update_rule`` and ``rule_settings``
    (``counter_bits``, ``counter_rate``) configure the new layers."""
    if tied not in ("skip", "untie"):
        raise ValueError(f"ternarize: tied must be 'skip' or 'untie', got {tied!r}")
    owners: dict[int, list[str]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for pname, p in mod.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
    rows: list[LayerReport] = []
    kinds = CONVERTIBLE + (("Embedding",) if embeddings else ())
    targets = [(n, m) for n, m in model.named_modules() if type(m).__name__ in kinds and n]
    for index, (name, module) in enumerate(targets):
        W, kind = _weight_of(module)
        shape = (int(W.shape[0]), int(W.shape[1]))
        if include is not None and not _matches(name, include) or _matches(name, exclude):
            rows.append(LayerReport(name, kind, shape, "float (excluded)"))
            continue
        shared = [o for o in owners.get(id(module.weight), []) if not o.startswith(f"{name}.")]
        if shared and tied == "skip":
            rows.append(LayerReport(name, kind, shape, f"float (weight tied with {shared[0]}; tied='untie' converts)"))
            continue
        g = group_size_for(shape[1], group_size)
        if g is None:
            raise ValueError(f"ternarize: {name} ({kind} {shape[1]}->{shape[0]}) has in_features={shape[1]}, not a "
                             f"multiple of 4, so no scale group fits; pass exclude=[{name!r}] to keep it float")
        if kind == "Embedding":
            table = SparseTernaryEmbedding(shape[0], shape[1], g, update_rule="bigint", strength=strength,
                                           ballot_prior=ballot_prior, seed=index, device=W.device)
            err = table.load_float_weight(W)
            table.converted_from = kind
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], table)
            dropped = [a for a in ("padding_idx", "max_norm") if getattr(module, a, None) is not None]
            status = "ternary" + (f" ({', '.join(dropped)} not kept)" if dropped else "")
            rows.append(LayerReport(name, kind, shape, status, g, err))
            continue
        has_bias = getattr(module, "bias", None) is not None
        layer = TernaryScaleTensor(shape[1], shape[0], g, update_rule=update_rule, strength=strength,
                                   ballot_prior=ballot_prior, seed=index, device=W.device, backend=backend,
                                   bias=has_bias, **rule_settings)
        err = layer.load_float_weight(W, module.bias if has_bias else None)
        layer.converted_from = kind           # export.py writes the weight back in this module's layout
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], layer)
        rows.append(LayerReport(name, kind, shape, "ternary", g, err))
    for p in model.parameters():
        p.requires_grad_(False)
    return ConversionReport(rows)
