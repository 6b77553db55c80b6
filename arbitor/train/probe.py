"""The spec's 3-step memory probe: does allocated memory stay flat from step to step?

``probe_memory`` builds a model from a ``ModelConfig``, moves it to the device and runs
``steps`` full training steps (forward, backward with streamed votes, ``ternary_step``) on
random token ids, printing the spec's lines::

    logical_ternary_weights 3122933472
    training_state_mb 1684.27
    after_cuda_mb 1706
    step 0 alloc_mb 1754 reserved_mb 1838 peak_mb 1998

``alloc_mb`` is read after the step's cleanup (every reference to the step's graph dropped),
so equal values across steps mean nothing from step N is still allocated at step N+1.
On the CPU the same lines come from ``LiveTensorTracker``: ``after_cuda_mb`` is the bytes of the
model's tensors, ``alloc_mb`` adds the tensors still alive after the step, ``peak_mb`` adds the
peak of the tensors alive during the step (the allocator's view is not available on the CPU).
"""
from __future__ import annotations

import contextlib
import functools
import gc
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..model.config import ModelConfig
from ..model.text import ArbitorLM
from ..ternary.audit import ternary_audit
from ..ternary.step import ternary_step
from .memory import LiveTensorTracker

__all__ = ["probe_memory", "MemoryMeter"]

_MB = 2 ** 20


def _fmt(mb: float) -> str:
    return f"{mb:.0f}" if mb >= 100 else f"{mb:.3f}"


def _tensor_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.buffers()) + list(model.parameters()))


class MemoryMeter:
    """The probe's numbers for a model already on ``device`` (module doc), printed as the spec's lines.

    ``header()`` prints ``logical_ternary_weights``, ``training_state_mb`` and ``after_cuda_mb``;
    ``step(i, fn)`` runs one training step ``fn()`` under measurement and prints its
    ``step i alloc_mb A reserved_mb R peak_mb P`` line. Used by ``probe_memory`` and by
    ``Trainer.fit`` with ``--no-save``.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device,
                 print_fn: Callable[[str], None] = print) -> None:
        self.model, self.device, self.print_fn = model, torch.device(device), print_fn
        self.cuda = self.device.type == "cuda"
        self._base = 0
        self._tracker = None if self.cuda else LiveTensorTracker()

    def header(self) -> dict[str, Any]:
        audit = ternary_audit(self.model)
        if self.cuda:
            torch.cuda.synchronize(self.device)
            after = round(torch.cuda.memory_allocated(self.device) / _MB, 1)
        else:
            self._base = _tensor_bytes(self.model)
            after = round(self._base / _MB, 3)
        self.print_fn(f"logical_ternary_weights {audit['logical_ternary_weights']}")
        self.print_fn(f"training_state_mb {audit['training_state_mb']:.2f}")
        self.print_fn(f"after_cuda_mb {_fmt(after)}")
        return {"logical_ternary_weights": audit["logical_ternary_weights"],
                "training_state_mb": round(audit["training_state_mb"], 2),
                "training_state_bytes": audit["training_state_bytes"],
                "trainable_float_params": audit["trainable_float_params"], "after_cuda_mb": after}

    def step(self, index: int, fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
        """Run ``fn()`` (one whole training step); returns ``(fn's result, the step's record)``."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            torch.cuda.synchronize(self.device)
        t = time.perf_counter()
        if not self.cuda:
            self._tracker.peak_bytes = self._tracker.live_bytes
        with contextlib.nullcontext() if self.cuda else self._tracker:
            result = fn()
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            rec = {"step": index, "alloc_mb": round(torch.cuda.memory_allocated(self.device) / _MB, 1),
                   "reserved_mb": round(torch.cuda.memory_reserved(self.device) / _MB, 1),
                   "peak_mb": round(torch.cuda.max_memory_allocated(self.device) / _MB, 1)}
        else:
            alloc = (self._base + self._tracker.live_bytes) / _MB
            rec = {"step": index, "alloc_mb": round(alloc, 3), "reserved_mb": round(alloc, 3),
                   "peak_mb": round((self._base + self._tracker.peak_bytes) / _MB, 3),
                   "live_after_step_bytes": self._tracker.live_bytes}
        rec["step_s"] = round(time.perf_counter() - t, 3)
        self.print_fn(f"step {index} alloc_mb {_fmt(rec['alloc_mb'])} reserved_mb {_fmt(rec['reserved_mb'])} "
                      f"peak_mb {_fmt(rec['peak_mb'])}")
        return result, rec


def probe_memory(cfg: ModelConfig, steps: int = 3, batch: int = 1, ctx: int = 4, device: str = "cuda",
                 seed: int = 0, out: Optional[Path] = None,
                 print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the probe; returns (and optionally writes as JSON to ``out``) the measured numbers."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"probe-memory --device {device}: CUDA is not available on this machine")
    if ctx > cfg.max_ctx:
        cfg = cfg.replace(max_ctx=ctx)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    model = ArbitorLM(cfg)
    build_s = time.perf_counter() - t0
    model.to(dev).train()
    meter = MemoryMeter(model, dev, print_fn)
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                              "config": cfg.to_dict(), "batch": batch, "ctx": ctx, "build_s": round(build_s, 2)}
    report.update(meter.header())
    gen = torch.Generator().manual_seed(seed)
    report["steps"] = []

    def train_step(idx: torch.Tensor) -> float:
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        ternary_step(model)
        return float(loss.detach())

    for step in range(steps):
        idx = torch.randint(0, cfg.vocab_size, (batch, ctx + 1), generator=gen).to(dev)
        loss_value, rec = meter.step(step, functools.partial(train_step, idx))
        del idx
        rec["loss"] = round(loss_value, 4)
        report["steps"].append(rec)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report
