"""The process group of a data-parallel run: started from torchrun's environment, and what only rank 0 does.

``torchrun --nproc-per-node N -m arbitor train ...`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the
rendezvous address; ``init_from_env`` starts the group (NCCL with one GPU per process, gloo on CPUs) with
the run's timeout. Without those variables it does nothing: one process. The ternary side of data
parallelism is ``arbitor.ternary.parallel.TernaryDataParallel``; the trainer uses it (``trainer.py``).
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "world_size", "rank", "is_main", "broadcast_object", "shutdown"]


def init_from_env(device: Optional[str], timeout_s: float) -> Optional[str]:
    """Start the process group when ``WORLD_SIZE > 1``; returns the device this process trains on (``cuda:<LOCAL_RANK>``
    with NCCL, ``device`` otherwise). ``ValueError`` for a device that cannot serve several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return device
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s): one GPU per "
                             "process (torchrun --nproc-per-node <= GPUs)")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
        # host-blocking waits: a collective whose peer died raises after the timeout (PeerError, one line)
        # instead of leaving the stream blocked until NCCL's watchdog aborts the process (seen on 2 x H200)
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return device if use_cuda else (device or "cpu")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0 (or a single process): the one that logs, draws progress bars, plots and writes checkpoints."""
    return rank() == 0


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. the run directory, whose default name holds a timestamp)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    """Leave the process group (after a finished run; every rank calls it)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
