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

import gc
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .config import ModelConfig
from .kernel.ternary_audit import ternary_audit
from .kernel.ternary_scale import ternary_step
from .memory import LiveTensorTracker

__all__ = ["probe_memory"]

_MB = 2 ** 20


def _fmt(mb: float) -> str:
    return f"{mb:.0f}" if mb >= 100 else f"{mb:.3f}"


def _tensor_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.buffers()) + list(model.parameters()))


def probe_memory(cfg: ModelConfig, steps: int = 3, batch: int = 1, ctx: int = 4, device: str = "cuda",
                 seed: int = 0, out: Optional[Path] = None,
                 print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the probe; returns (and optionally writes as JSON to ``out``) the measured numbers."""
    from .model import ArbitorLM
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"probe-memory --device {device}: CUDA is not available on this machine")
    if ctx > cfg.max_ctx:
        cfg = cfg.replace(max_ctx=ctx)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    model = ArbitorLM(cfg)
    build_s = time.perf_counter() - t0
    audit = ternary_audit(model)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "config": cfg.to_dict(), "batch": batch, "ctx": ctx,
        "logical_ternary_weights": audit["logical_ternary_weights"],
        "training_state_mb": round(audit["training_state_mb"], 2),
        "training_state_bytes": audit["training_state_bytes"],
        "trainable_float_params": audit["trainable_float_params"],
        "build_s": round(build_s, 2),
    }
    print_fn(f"logical_ternary_weights {report['logical_ternary_weights']}")
    print_fn(f"training_state_mb {report['training_state_mb']:.2f}")
    model.to(dev).train()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        report["after_cuda_mb"] = round(torch.cuda.memory_allocated(dev) / _MB, 1)
    else:
        base = _tensor_bytes(model)
        report["after_cuda_mb"] = round(base / _MB, 1)
        tracker = LiveTensorTracker()
    print_fn(f"after_cuda_mb {_fmt(report['after_cuda_mb'])}")
    gen = torch.Generator().manual_seed(seed)
    report["steps"] = []
    for step in range(steps):
        idx = torch.randint(0, cfg.vocab_size, (batch, ctx + 1), generator=gen).to(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        if dev.type != "cuda":
            tracker.peak_bytes = tracker.live_bytes
            tracker.__enter__()
        try:
            _, loss = model(idx[:, :-1], idx[:, 1:])
            loss.backward()
            ternary_step(model)
            loss_value = float(loss.detach())
            del loss, _
        finally:
            if dev.type != "cuda":
                tracker.__exit__(None, None, None)
        del idx
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            rec = {"step": step, "alloc_mb": round(torch.cuda.memory_allocated(dev) / _MB, 1),
                   "reserved_mb": round(torch.cuda.memory_reserved(dev) / _MB, 1),
                   "peak_mb": round(torch.cuda.max_memory_allocated(dev) / _MB, 1)}
        else:
            alloc = (base + tracker.live_bytes) / _MB
            rec = {"step": step, "alloc_mb": round(alloc, 3), "reserved_mb": round(alloc, 3),
                   "peak_mb": round((base + tracker.peak_bytes) / _MB, 3),
                   "live_after_step_bytes": tracker.live_bytes}
        rec["step_s"] = round(time.perf_counter() - t, 3)
        rec["loss"] = round(loss_value, 4)
        report["steps"].append(rec)
        print_fn(f"step {step} alloc_mb {_fmt(rec['alloc_mb'])} reserved_mb {_fmt(rec['reserved_mb'])} "
                 f"peak_mb {_fmt(rec['peak_mb'])}")
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report
