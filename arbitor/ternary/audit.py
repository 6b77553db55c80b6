"""``ternary_audit``: what a model's training state really is, in bytes.

For any ``nn.Module`` it reports

* ``logical_ternary_weights`` -- ternary weights held packed (2 bits each);
* ``state_bytes`` -- bytes of every training-state buffer, by kind: ``T_packed``,
  ``E``, ``corr_accum``, ``step_counter`` (BigInt scales), ``C_packed`` (``counter`` rule) and the
  legacy sparse tables' ``T_accum``, ``E_accum``; other integer buffers (e.g. ``hash_key``) go under
  ``other_int``;
* ``training_state_bytes`` -- their sum, and ``state_bytes_per_weight``;
* ``trainable_float_params`` -- elements of float parameters with ``requires_grad``
  (0 for a pure ternary model: anything else is a latent float weight or optimizer target);
* ``frozen_float_elements`` / ``frozen_float_bytes`` -- float parameters without grad
  and float buffers (e.g. frozen LTI constants): constants, not training state. A module's
  ``setting_buffers`` (a ternary layer's ``rate``: its rule's step size as a float32 scalar on the device, set
  by the schedule, never saved) are settings, neither state nor constants, and are not counted.

One ``TernaryScaleTensor(K, N, group_size=g)`` reports ``N*ceil(K/4)`` bytes of
``T_packed`` (2 bits per weight), ``9 * N*K/g`` bytes of ``E`` + ``corr_accum``
(9 bytes per group) and 8 bytes of ``step_counter``.
"""
from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["STATE_KINDS", "ternary_audit", "format_audit"]

STATE_KINDS = ("T_packed", "E", "corr_accum", "step_counter", "T_accum", "E_accum", "C_packed")


def _logical_weights(module: nn.Module) -> int:
    fn = getattr(module, "logical_ternary_weights", None)
    if callable(fn):
        return int(fn())
    packed = module._buffers.get("T_packed")
    rows = packed.shape[0] if packed.dim() else 1
    in_features = getattr(module, "in_features", None)
    return int(rows * in_features) if in_features is not None else int(packed.numel() * 4)


def ternary_audit(model: nn.Module) -> dict[str, Any]:
    """Audit ``model``; returns a plain dict (see module doc for the keys)."""
    state_bytes = {kind: 0 for kind in STATE_KINDS}
    state_bytes["other_int"] = 0
    logical = 0
    ternary_modules = 0
    frozen_elems = frozen_bytes = 0
    for module in model.modules():
        if module._buffers.get("T_packed") is not None:
            logical += _logical_weights(module)
            ternary_modules += 1
        settings = getattr(module, "setting_buffers", ())
        for name, buf in module._buffers.items():
            if buf is None or name in settings:
                continue
            nbytes = buf.numel() * buf.element_size()
            if buf.is_floating_point() or buf.is_complex():
                frozen_elems += buf.numel()
                frozen_bytes += nbytes
            elif name in STATE_KINDS:
                state_bytes[name] += nbytes
            elif name not in module._non_persistent_buffers_set:
                state_bytes["other_int"] += nbytes
    trainable = frozen_params = 0
    trainable_names = []
    for name, p in model.named_parameters():
        if p.is_floating_point() and p.requires_grad:
            trainable += p.numel()
            trainable_names.append(name)
        else:
            frozen_params += p.numel()
            frozen_bytes += p.numel() * p.element_size()
            frozen_elems += p.numel()
    total = sum(state_bytes.values())
    return {
        "logical_ternary_weights": logical,
        "ternary_modules": ternary_modules,
        "state_bytes": state_bytes,
        "training_state_bytes": total,
        "training_state_mb": total / 2 ** 20,
        "state_bytes_per_weight": (total / logical) if logical else None,
        "trainable_float_params": trainable,
        "trainable_float_param_names": trainable_names,
        "frozen_float_elements": frozen_elems,
        "frozen_float_bytes": frozen_bytes,
        "pure_ternary": trainable == 0,
    }


def _fmt_bytes(n: int) -> str:
    return f"{n:,} B" if n < 1024 else f"{n:,} B ({n / 2 ** 20:,.2f} MiB)"


def format_audit(report: dict[str, Any], title: str = "ternary audit") -> str:
    """A readable table of a ``ternary_audit`` report."""
    rows = [("logical ternary weights", f"{report['logical_ternary_weights']:,}"),
            ("ternary modules", f"{report['ternary_modules']:,}")]
    for kind, nbytes in report["state_bytes"].items():
        if nbytes or kind in ("T_packed", "E", "corr_accum", "step_counter"):
            rows.append((f"  {kind}", _fmt_bytes(nbytes)))
    rows.append(("training state total", _fmt_bytes(report["training_state_bytes"])))
    bpw = report["state_bytes_per_weight"]
    rows.append(("state bytes / weight", f"{bpw:.4f}" if bpw is not None else "n/a"))
    rows.append(("trainable float params", f"{report['trainable_float_params']:,}"
                 + ("" if report["pure_ternary"] else "   <-- NOT pure ternary")))
    rows.append(("frozen float tensors", f"{report['frozen_float_elements']:,} elements, "
                 f"{_fmt_bytes(report['frozen_float_bytes'])}"))
    width = max(len(r[0]) for r in rows)
    lines = [title, "-" * (width + 32)] + [f"{k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)
