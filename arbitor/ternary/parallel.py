"""``TernaryDataParallel``: data-parallel training of ternary modules, bit-identical to one process.

``DistributedDataParallel`` averages float gradients of parameters; an arbitor model has no parameters,
and its ballots change integer buffers during backward. This class plays DDP's part for them:

1. it puts every ternary module in the step-boundary mode (``rules/base.py``): each micro-batch of a
   step computes against the step-start state and *gathers* its ballot (``ops/gather.py``);
2. it sums the gathered integers of all ranks (``all_reduce``, in the narrowest dtype whose bound is
   proven: group votes in int32, counter moves in int8, ballot counts in int64), bucketed, launched in a
   fixed order while the last backward of the step still runs (the overlap DDP does for gradients);
3. ``step()`` then applies the sums on every rank (``ternary_step``), so every rank holds the same state
   -- the state one process reaches with ``micro_batches * world_size`` micro-batches, bit for bit.

A loop::

    tdp = TernaryDataParallel(model, micro_batches=A)     # after dist.init_process_group
    for step in range(steps):
        for j in range(A):                                 # this rank's micro-batches, a disjoint shard
            with tdp.micro_batch(j):
                loss = loss_fn(model(x[j]), y[j])
                loss.backward()
        tdp.step()                                         # all-reduce + apply; replaces ternary_step(model)

Float modules beside the ternary ones (a user's own head, norms with weights) go in DDP as usual, with
``broadcast_buffers=False`` -- otherwise DDP copies every buffer of rank 0, the whole integer state,
to the other ranks at every forward.

Traffic per step: ``bigint`` 4 bytes per scale group (1/16 byte per weight at group 64), ``counter`` that
plus 1 byte per weight; DDP in bf16 sends 2 bytes per weight (``docs/distributed.md``).
"""
from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from .step import set_step_mode, ternary_layers, ternary_step

__all__ = ["TernaryDataParallel", "state_digest", "DivergedStateError", "PeerError"]

BUCKET_BYTES = 25 * 2 ** 20    # as DDP's default bucket_cap_mb
_DIGEST_CHUNK = 2 ** 24        # bytes of a buffer ``state_digest`` widens to int64 at a time (128 MiB transient)


class DivergedStateError(RuntimeError):
    """The ranks' integer states differ (``check_state``)."""


class PeerError(RuntimeError):
    """A collective failed: another rank died, hung past the timeout, or left the group."""


def state_digest(module: nn.Module) -> torch.Tensor:
    """A cheap int64 digest of ``module``'s own persistent buffers (not its children's): a position-weighted
    byte sum, on the module's device (equal states give equal digests; any single-byte change changes it)."""
    total = None
    for name, buf in module.named_buffers(recurse=False):
        if name in module._non_persistent_buffers_set:
            continue
        b = buf.detach().contiguous().view(-1).view(torch.uint8)
        d = torch.zeros((), dtype=torch.int64, device=b.device) + b.numel()
        # in chunks: an int64 copy of the whole state (8x its bytes) would be the largest tensor of the step
        for i in range(0, b.numel(), _DIGEST_CHUNK):
            part = b[i:i + _DIGEST_CHUNK].to(torch.int64)
            w = torch.arange(i + 1, i + part.numel() + 1, dtype=torch.int64, device=b.device) % 65_521 + 1
            d = d + (part * w).sum()
        total = d if total is None else total * 1_000_003 + d
    return total if total is not None else torch.zeros((), dtype=torch.int64)


class TernaryDataParallel:
    """Data-parallel ternary training over ``process_group`` (module doc).

    Args:
        model: the model; its ternary modules (``ternary_layers``) are synchronised, nothing else.
        micro_batches: micro-batches per step on each rank (gradient accumulation).
        passes: ballots one micro-batch casts per module at most (several loss components or weights).
        process_group: default group when None.
        broadcast: copy rank 0's persistent ternary buffers to every rank first (a fresh model or a loaded
            checkpoint usually makes them equal anyway; this makes sure).
        check_interval: every N steps compare a digest of every module's state across ranks (0: never).
        timeout: seconds a collective may wait for a peer before ``PeerError`` (the group's own timeout
            applies too).
        static_graph: every step casts the same ballots per module in its last micro-batch (a fixed set of loss
            components; a chunked loss is fine). With several ballots per micro-batch (``passes > 1``) the
            overlap then learns each module's ballot count in the first step and starts a bucket once its
            modules have cast that many; without it those steps all-reduce after the backward. A later step
            that casts more than learned raises ``RuntimeError`` (its bucket was already sent).
    """

    def __init__(self, model: nn.Module, micro_batches: int = 1, passes: int = 1,
                 process_group: Optional[dist.ProcessGroup] = None, broadcast: bool = True,
                 check_interval: int = 0, timeout: Optional[float] = None, static_graph: bool = False) -> None:
        if micro_batches < 1 or passes < 1:
            raise ValueError(f"micro_batches and passes must be >= 1, got {micro_batches}, {passes}")
        self.model = model
        self.group = process_group
        # without an initialised process group: one process (gradient accumulation only; no collectives)
        self.distributed = dist.is_available() and dist.is_initialized()
        self.world = dist.get_world_size(process_group) if self.distributed else 1
        self.rank = dist.get_rank(process_group) if self.distributed else 0
        self.micro_batches = micro_batches
        self.passes = passes
        self.check_interval = check_interval
        self.timeout = timeout
        self.steps = 0
        self.modules = [m for m in ternary_layers(model)]
        self.names = {id(m): n or type(m).__name__ for n, m in model.named_modules() if id(m) in
                      {id(x) for x in self.modules}}
        self.max_ballots = self.world * micro_batches * passes
        set_step_mode(model, self.max_ballots)
        for m in self.modules:
            m.set_slot_base(self.rank * micro_batches * passes)
        if broadcast and self.distributed:
            self._collective(self._broadcast_state, "broadcast of rank 0's state")
        self._buckets = self._make_buckets()
        self._bucket_of = {id(m): i for i, b in enumerate(self._buckets) for m in b}
        self._done: set[int] = set()
        self.static_graph = static_graph
        self._counts: dict[int, int] = {}              # ballots per module in this step's last micro-batch
        self._expected: Optional[dict[int, int]] = None  # static_graph: the counts learned in the first step
        self._launched: list[tuple[list, list]] = []   # per bucket: (works, flat tensors)

    # ---------------------------------------------------------------- micro-batches
    @contextlib.contextmanager
    def micro_batch(self, index: int, last: Optional[bool] = None) -> Iterator[None]:
        """Run micro-batch ``index`` (0 .. micro_batches-1) of this rank: its ballots take the global slots
        ``(rank * micro_batches + index) * passes + pass``; during the last one the all-reduce of each bucket
        starts as soon as its modules have voted (overlap)."""
        if not (0 <= index < self.micro_batches):
            raise ValueError(f"micro_batch index must be in [0, {self.micro_batches}), got {index}")
        self.set_slot((self.rank * self.micro_batches + index) * self.passes)
        last = index == self.micro_batches - 1 if last is None else last
        if last:
            self._arm_overlap()
        try:
            yield
        finally:
            self._disarm()

    def set_slot(self, slot: int) -> None:
        """The global slot of the next ballot of every module (a loop with several passes per micro-batch sets
        ``global_micro_index * passes + pass`` before each backward)."""
        for m in self.modules:
            m.set_ballot_slot(slot)

    # ---------------------------------------------------------------- reduce + step
    def reduce(self) -> None:
        """Sum every rank's gathered ballots into every rank's buffers (waits for the overlapped buckets)."""
        if self.distributed:
            self._collective(self._finish_reduce, "all-reduce of the step's ballots")

    def step(self) -> int:
        """``reduce()``, ``ternary_step(model)`` on the summed ballots, ``after_step()``. Returns the number of
        modules updated."""
        self.reduce()
        n = ternary_step(self.model)
        self.after_step()
        return n

    def after_step(self) -> None:
        """Count the step; every ``check_interval`` steps, the cross-rank state check."""
        self.steps += 1
        if self.distributed and self.check_interval and self.steps % self.check_interval == 0:
            self.check_state()

    def check_state(self) -> None:
        """``DivergedStateError`` naming the first module whose state differs between ranks."""
        local = torch.stack([state_digest(m).to("cpu") for m in self.modules]) if self.modules else torch.zeros(0)
        dev = self._device()
        mine = local.to(dev)
        gathered = [torch.empty_like(mine) for _ in range(self.world)]
        self._collective(lambda: dist.all_gather(gathered, mine, group=self.group), "state check")
        ref = gathered[0]
        for r in range(1, self.world):
            bad = (gathered[r] != ref).nonzero()
            if bad.numel():
                i = int(bad[0])
                raise DivergedStateError(f"rank {r}'s state differs from rank 0's at {self.names[id(self.modules[i])]}"
                                         f" (step {self.steps}); the ranks diverged -- stop and resume from the last "
                                         "checkpoint")

    # ---------------------------------------------------------------- internals
    def _device(self) -> torch.device:
        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _collective(self, fn, what: str):
        try:
            return fn()
        except (RuntimeError, dist.DistBackendError) as exc:   # a dead or hung peer, a closed connection
            if isinstance(exc, DivergedStateError):
                raise
            raise PeerError(f"rank {self.rank}: {what} failed -- a peer rank died, hung past the timeout or left "
                            f"the group ({' '.join(str(exc).split())[:200]})") from None

    def _broadcast_state(self) -> None:
        for m in self.modules:
            for name, buf in m.named_buffers(recurse=False):
                if name in m._non_persistent_buffers_set:
                    continue
                t = buf.detach().contiguous()
                dist.broadcast(t, src=0, group=self.group)
                if t.data_ptr() != buf.data_ptr():
                    buf.copy_(t)

    def _make_buckets(self) -> list[list[nn.Module]]:
        """Modules in reverse registration order (backward reaches the last layers first), cut at
        ``BUCKET_BYTES`` of wire data -- the same on every rank."""
        buckets: list[list[nn.Module]] = [[]]
        size = 0
        for m in reversed(self.modules):
            nbytes = sum(t.numel() * torch.empty((), dtype=d).element_size() for t, d in m.reduce_tensors())
            if buckets[-1] and size + nbytes > BUCKET_BYTES:
                buckets.append([])
                size = 0
            buckets[-1].append(m)
            size += nbytes
        return [b for b in buckets if b]

    def _arm_overlap(self) -> None:
        if not self.distributed:
            return
        if self.passes > 1 and not self.static_graph:   # several ballots per module: the last is not known
            return
        for m in self.modules:
            m.set_ballot_hook(self._on_ballot)

    def _disarm(self) -> None:
        for m in self.modules:
            m.set_ballot_hook(None)

    def _on_ballot(self, module: nn.Module) -> None:
        key = id(module)
        n = self._counts[key] = self._counts.get(key, 0) + 1
        if self.passes == 1:
            self._done.add(key)
        elif self._expected is None:
            return                                          # the first step only learns the counts
        elif n > self._expected.get(key, 0):
            raise RuntimeError(f"TernaryDataParallel(static_graph=True): {self.names[key]} cast {n} ballots in the "
                               f"last micro-batch, {self._expected.get(key, 0)} in the first step; its bucket was "
                               "already sent -- use static_graph=False for steps whose ballots vary")
        elif n == self._expected[key]:
            self._done.add(key)
        self._launch_ready()

    def _launch_ready(self, all_: bool = False) -> None:
        """Launch buckets strictly in order (every rank issues the same collectives in the same order)."""
        while len(self._launched) < len(self._buckets):
            bucket = self._buckets[len(self._launched)]
            if not all_ and not all(id(m) in self._done for m in bucket):
                return
            self._launched.append(self._launch(bucket))

    def _launch(self, bucket: list[nn.Module]) -> tuple[list, list]:
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for m in bucket:
            for t, wire in m.reduce_tensors():
                by_dtype.setdefault(wire, []).append(t.reshape(-1).to(wire))
        works, flats = [], []
        dev = self._device()
        for wire, parts in sorted(by_dtype.items(), key=lambda kv: str(kv[0])):
            flat = torch.cat(parts).to(dev)
            works.append(dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group, async_op=True))
            flats.append((wire, flat))
        return works, flats

    def _finish_reduce(self) -> None:
        self._launch_ready(all_=True)
        for bucket, (works, flats) in zip(self._buckets, self._launched):
            for w in works:
                if self.timeout is not None:
                    w.wait(timeout=timedelta(seconds=self.timeout))
                else:
                    w.wait()
            offsets = {wire: 0 for wire, _ in flats}
            flat_of = dict(flats)
            for m in bucket:
                out = []
                for t, wire in m.reduce_tensors():
                    n = t.numel()
                    out.append(flat_of[wire][offsets[wire]:offsets[wire] + n].view(t.shape).to(t.device, t.dtype))
                    offsets[wire] += n
                m.load_reduced(out)
        self._launched = []
        self._done = set()
        if self.static_graph and self.passes > 1 and self._expected is None and self._counts:
            self._expected = dict(self._counts)
        self._counts = {}
