"""``GraphedStep``: a whole training step (forward, backward, update) captured once as a CUDA graph.

Why: after the speed work (``docs/kernels.md``) an arbitor step issues a few hundred short kernels; a
small model (nanoGPT 6x384, batch 64 x 256) is then bound by the host launching them -- 0.35-0.48 M
tokens/s compiled but eager-launched against 2.4-2.5 M tokens/s replayed from a graph on the H200
(``benchmarks/results/speed/h200.md``). A graph replays every launch of the step in one call.

What makes it possible: a step reads nothing back from the device (no ``.item()``, no data-dependent
host branch; the layers' ``pending``/``nonfinite`` counters and the overflow check live on the device),
and every buffer it writes is updated in place, so the graph's addresses stay valid step after step.

Contract of ``step_fn(*static_inputs)``: the same host-side control flow every call (one loss
component), inputs of fixed shape. A graph replays the host scalars it was captured with (the step sizes of
the rules, AdamW's lr): when they change, ``release()`` drops the graph and the next call captures the step
again (the trainer does this when a held schedule moves to its next factor, ``TrainConfig.schedule_hold``);
each capture gets a fresh private memory pool, and the released graph's pool is freed by the next capture's
``empty_cache`` once nothing of it is alive (the step keeps nothing: its outputs are cloned). The warm-up calls
run real steps (on a side stream, as CUDA requires before the first capture); a capture itself runs nothing;
each replay is one real step. Replayed and eager steps give bit-identical integer state
(``tests/train/test_graph.py`` on the GPU).

Streams: the capture runs on the warm-up's side stream, not on ``torch.cuda.graph``'s own. Autograd runs a
leaf's ``AccumulateGrad`` on the stream that was current when that node was made, and at the end of a backward
makes the caller's stream wait for it. The ternary layers' gradient anchors (``TernaryScaleTensor._anchor``: one
empty leaf a layer, made once) get their node in the first warm-up step, and the node lives as long as any
autograd graph that holds it -- a warm-up output still referenced, or one kept by a reference cycle until
Python's collector runs. A capture on another stream then waits on uncaptured work and fails
(``cudaErrorStreamCaptureIsolation``, "dependency created on uncaptured work in another stream"): this broke a
compiled ``3b`` capture in a process that had built three other models. Capturing on the warm-up stream, with a
``gc.collect()`` first, keeps such nodes on the capture stream. A step whose graph the caller keeps from eager
calls on *another* stream (an un-detached loss of a step run outside ``GraphedStep``) can still fail the capture:
detach what you keep.

Random numbers: only from torch's CUDA generator (dropout). Its draws are graph-safe: a captured kernel
reads the generator's seed and offset from device memory that each replay refreshes, and the replay
advances the generator by the offsets the step consumed -- so a replay draws what the eager step would, and
``torch.cuda.get_rng_state()`` between steps is the eager run's (what a checkpoint saves).
"""
from __future__ import annotations

import gc
from typing import Any, Callable, Optional

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["GraphedStep"]


class GraphedStep:
    """Calls ``step_fn`` eagerly ``warmup`` times, then captures one call and replays it.

    ``step_fn(batch) -> outputs``: a training step on ``batch``, a tensor or any nesting of tuples / lists /
    dicts / dataclass-free containers of CUDA tensors (e.g. ``(x [batch, ctx], y [batch, ctx])``); ``outputs``
    any tensor or container of tensors (e.g. the loss). Each ``__call__`` performs one step: after the
    capture the batch's tensors are copied into static buffers of the same shapes and the graph replays.
    The returned outputs are the graph's static tensors, overwritten by the next call (``clone()`` what must
    outlive it).
    """

    def __init__(self, step_fn: Callable[[Any], Any], warmup: int = 3) -> None:
        if warmup < 1:
            raise ValueError(f"GraphedStep: warmup must be >= 1 (got {warmup}): CUDA needs eager steps first")
        self.step_fn = step_fn
        self.warmup = warmup
        self.calls = 0                    # steps performed so far (warm-up included)
        self.eager_peak_mib: Optional[float] = None  # peak allocated MiB during the last eager step (a replay
        #                                            allocates from the graph's pool, unseen by that counter)
        self._static: list[torch.Tensor] = []
        self._spec = None
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self._out: Any = None
        self._side: Optional[torch.cuda.Stream] = None
        self.captures = 0                 # graphs captured so far

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def release(self) -> None:
        """Drop the captured graph (if any): the next call captures the step again, without eager warm-up calls
        (CUDA needs those once). For when a host scalar the step reads changes (a new schedule factor)."""
        self._graph = None
        self._out = None

    def __call__(self, batch: Any) -> Any:
        leaves, spec = tree_flatten(batch)
        for t in leaves:
            if not (isinstance(t, torch.Tensor) and t.is_cuda):
                raise ValueError("GraphedStep: every input must be a CUDA tensor (got "
                                 f"{type(t).__name__} on {getattr(t, 'device', 'the host')})")
        if self._graph is not None:
            if spec != self._spec or any(a.shape != b.shape or a.dtype != b.dtype
                                         for a, b in zip(leaves, self._static)):
                raise ValueError("GraphedStep: inputs " + _describe(leaves) + " differ from the captured "
                                 + _describe(self._static))
            for s, t in zip(self._static, leaves):
                s.copy_(t, non_blocking=True)
            self._graph.replay()
            self.calls += 1
            return self._out
        if self.calls < self.warmup:
            return self._eager(batch)
        return self._capture_and_replay(leaves, spec)

    def _eager(self, batch: Any) -> Any:
        """A real step on a side stream (CUDA wants the warm-up before a capture off the default stream)."""
        if self._side is None:
            self._side = torch.cuda.Stream()
        last = self.calls == self.warmup - 1
        if last:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._side):
            out = self.step_fn(batch)
        torch.cuda.current_stream().wait_stream(self._side)
        if last:
            torch.cuda.synchronize()
            self.eager_peak_mib = torch.cuda.max_memory_allocated() / 2 ** 20
        self.calls += 1
        return out

    def _capture_and_replay(self, leaves: list[torch.Tensor], spec) -> Any:
        if self._static and spec == self._spec and all(a.shape == b.shape and a.dtype == b.dtype
                                                        for a, b in zip(leaves, self._static)):
            for s, t in zip(self._static, leaves):          # a re-capture: the same static input buffers
                s.copy_(t)
        else:
            self._static = [t.detach().clone() for t in leaves]
            self._spec = spec
        graph = torch.cuda.CUDAGraph()
        gc.collect()                      # autograd graphs of earlier steps kept only by reference cycles
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, stream=self._side):                  # the warm-up's stream: see Streams
            self._out = self.step_fn(tree_unflatten(self._static, spec))    # recorded, not run
        self._graph = graph
        self.captures += 1
        graph.replay()                                                      # this call's step
        self.calls += 1
        return self._out


def _describe(tensors: list[torch.Tensor]) -> str:
    return str([(tuple(t.shape), str(t.dtype).replace("torch.", "")) for t in tensors])
