"""Memory counters that work on the CPU as well as on CUDA.

``LiveTensorTracker`` is a ``TorchDispatchMode`` that sees every tensor an op
creates while it is active and keeps a running total of the bytes of their
storages that are still alive (a weakref finalizer subtracts a storage when it
is freed). ``peak_bytes`` is the largest total seen. It counts only tensors
created inside the ``with`` block -- inputs and module buffers made before it are
not counted -- which is what a test of "does this backward allocate a full
float grad_W" needs. On CUDA, ``torch.cuda.max_memory_allocated`` tells the same
story from the allocator's side.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveTensorTracker"]


class LiveTensorTracker(TorchDispatchMode):
    """Track live bytes and the peak of tensors allocated inside the block.

    Example::

        with LiveTensorTracker() as mem:
            loss.backward()
        print(mem.peak_bytes, mem.live_bytes, mem.largest_bytes)
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self.largest_bytes = 0  # largest single storage
        self._seen: set[int] = set()

    def _track(self, t: torch.Tensor) -> None:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = storage.data_ptr()
        nbytes = storage.nbytes()
        if key in self._seen or nbytes == 0:
            return
        self._seen.add(key)
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self.largest_bytes = max(self.largest_bytes, nbytes)

        def _free(tracker_ref=weakref.ref(self), key=key, nbytes=nbytes):
            tracker = tracker_ref()
            if tracker is not None and key in tracker._seen:
                tracker._seen.discard(key)
                tracker.live_bytes -= nbytes

        weakref.finalize(storage, _free)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # views, in-place and out= ops return an alias of an input's storage: no new allocation
        if any(r.alias_info is not None for r in func._schema.returns):
            return out
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out
