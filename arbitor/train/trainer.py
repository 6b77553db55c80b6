"""The one ``Trainer``: loss-component routing, the per-step update, evaluation, runs on disk.

A ``Trainer`` trains a model on a ``Task`` (``text.TextTask`` or ``multimodal.MultimodalTask``). One
optimisation step (``Trainer.train_step``):

1. the schedule's factor for this step reaches AdamW and the ternary rules (``Updater.set_rate_factor``);
2. the task draws a batch and names the components that train on it;
3. one forward pass per component (components of a step may share it through ``shared``);
4. for each component with weight ``w > 0``: ``w`` backward passes of that component's loss alone, with
   only the layers on its route voting (``route_ballots``) -- the votes stream straight into each layer's
   integer state during backward (no float gradient buffer is kept for ternary layers);
5. the per-step update: ``Updater.step()`` folds the ballots (``ternary_step``) and steps AdamW for the
   float baselines;
6. cleanup: every step tensor released before returning, so nothing allocated in step N is alive in step
   N+1 (tested with ``LiveTensorTracker``).

A step reads nothing back from the device: the losses it returns are 0-d tensors, turned into numbers
(and checked for NaN/inf) only when ``fit`` writes a record, every ``log_interval`` steps. A ballot with a
non-finite input never votes (``ternary/ops/votes.py``), so the integer state of a run that met a NaN is
the state before it; the record then raises ``FloatingPointError`` naming the step.

``fit()`` runs steps to ``TrainConfig.steps``: a train record every ``log_interval`` steps, validation
at step 0, every ``eval_interval`` and at the end (with ``loss.png`` and the task's artifacts), a
checkpoint every ``checkpoint_interval`` and at the end. ``save()``/``restore()`` make a resumed run
bit-exact: the model's integer buffers, the step, the tokens seen, torch's RNG, the task's samplers and
AdamW's state (``checkpoint.py``); on a CUDA device also the device's generator (``rng.cuda``: what
``ModelConfig.dropout`` draws from, on the eager and the graph-replayed path alike).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..ternary.ops.fp8 import check_fp8_device
from ..ternary.parallel import TernaryDataParallel
from ..ternary.step import ternary_layers
from . import distributed
from .checkpoint import CHECKPOINT_NAME, CheckpointError, atomic_write_bytes, save_checkpoint
from .components import route_ballots
from .config import TrainConfig
from .graph import GraphedStep
from .plots import plot_metrics
from .probe import MemoryMeter
from .task import Task
from .updater import Updater

__all__ = ["Trainer", "compile_blocks", "memory_mb"]


def memory_mb(device: torch.device) -> float:
    """Allocated memory in MiB: CUDA allocator on GPU, resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2 ** 20
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError):  # pragma: no cover - non-Linux
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compile_blocks(model: nn.Module) -> list[nn.Module]:
    """``torch.compile`` each element of the model's ``nn.ModuleList`` s (its transformer blocks), in place
    (``Module.compile``: parameters, buffers and state_dict keys stay as they are); the whole model when it
    has none. Per block, as torchtitan does: the tasks' loss components call methods of the model
    (``model.hidden``), which a compiled ``model.__call__`` would never see. Returns the compiled modules."""
    units = compile_units(model)
    for m in units:
        m.compile()
    return units


def compile_units(model: nn.Module) -> list[nn.Module]:
    """The modules ``compile_blocks`` compiles: each element of the model's ``nn.ModuleList`` s, else the model."""
    return [m for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst] or [model]


class Trainer:
    """Runs optimisation steps of ``model`` on ``task`` and keeps a run directory up to date (module doc)."""

    def __init__(self, model: nn.Module, task: Task, tcfg: TrainConfig, run_dir: Optional[Path] = None,
                 device: Optional[torch.device] = None, preset: Optional[str] = None,
                 resolved_settings: Optional[dict[str, Any]] = None, start_lines: Sequence[str] = ()) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = model.to(self.device)
        self.task = task
        self.tcfg = tcfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.preset = preset          # recorded in checkpoints
        self.step = 0
        self.tokens_seen = 0
        # a user model (UserTask) has no arbitor config: AdamW's lr only matters to float baselines
        cfg = getattr(model, "cfg", None)
        recompute = getattr(cfg, "activation_checkpointing", False)
        self._dropout = getattr(cfg, "dropout", 0.0) > 0
        self.updater = Updater(model, getattr(cfg, "dense_lr", 1e-3), beta2=tcfg.adam_beta2,
                               weight_decay=tcfg.weight_decay, grad_clip=tcfg.grad_clip)
        self.history: list[dict[str, Any]] = []
        self.run_lock = None               # the run directory's lock (run.lock_run), held by rank 0
        self._tb = None                    # the TensorBoard writer (None: not made yet; False: not installed)
        self.inexact_resumes: list[dict] = []  # resumes that changed a result-changing setting (--inexact-resume)
        # settings the run builder chose for this run (run.py: counter_rate "auto" -> its rate, and why): saved in
        # the checkpoint and config.json, restored on resume; start_lines: what fit() prints once before training
        self.resolved_settings: dict[str, Any] = dict(resolved_settings or {})
        self.start_lines: list[str] = list(start_lines)
        self.last_components: list = []    # the components the last step trained
        self.last_parts: dict[str, dict[str, float]] = {}  # their loss parts (shared["parts"])
        # a step of several micro-batches (grad_accum x processes): step-boundary ballots (module doc)
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.micro_per_step = tcfg.grad_accum * self.world
        self.sync: Optional[TernaryDataParallel] = None
        # ballot slots per micro-batch: the task's backward passes x the ballots one pass casts (loss chunks)
        self.chunk_ballots = cfg.ballots_per_pass(tcfg.batch * tcfg.ctx) if hasattr(cfg, "ballots_per_pass") else 1
        if self.micro_per_step > 1:
            self.sync = TernaryDataParallel(self.model, micro_batches=tcfg.grad_accum,
                                            passes=task.passes * self.chunk_ballots,
                                            check_interval=tcfg.state_check_interval, timeout=tcfg.dist_timeout,
                                            static_graph=task.fixed_step)
        for setting in ("gradw_fp8", "matmul_fp8"):
            if any(getattr(m, f"uses_{setting}", False) for m in model.modules()):
                check_fp8_device(self.device, setting)   # one line now, not an error inside the first step
        self.graphed: Optional[GraphedStep] = None
        if tcfg.cuda_graph and self.micro_per_step > 1:
            raise ValueError(f"cuda_graph needs one micro-batch per step (grad_accum {tcfg.grad_accum} x "
                             f"{self.world} process(es)); train without cuda_graph")
        if tcfg.cuda_graph:
            if not task.fixed_step:
                raise ValueError(f"cuda_graph needs a task that trains the same components every step "
                                 f"({task.kind!r} draws them per step); train without cuda_graph")
            if recompute and self._dropout:
                raise ValueError("cuda_graph cannot capture activation checkpointing with dropout (the recompute "
                                 "saves and restores the RNG state, which a capture cannot read); drop one of them")
            if tcfg.schedule != "constant" and tcfg.schedule_hold < 2:
                raise ValueError(f"cuda_graph needs schedule='constant' (got {tcfg.schedule!r}) or a held schedule "
                                 "(schedule_hold >= 2): a graph replays the step sizes it was captured with, so it is "
                                 "captured again whenever they change")
            if self.device.type != "cuda":
                raise ValueError(f"cuda_graph needs a CUDA device (the run is on {self.device})")
            self._batch_type = task.batch_type
            self.updater.make_capturable()
            self.graphed = GraphedStep(self._graph_step)
            self._graph_factor: Optional[float] = None      # the schedule factor the graph was captured with
        if tcfg.compile:
            compile_blocks(self.model)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimisation step (module doc); returns the loss of each component trained (0-d tensors, on
        the device: ``float()`` them when needed, which waits for the step)."""
        self.model.train()
        stale = [type(m).__name__ for m in ternary_layers(self.model) if m.dirty]
        if stale:
            raise RuntimeError(f"{len(stale)} layer(s) hold ballots from an unfinished step (no ternary_step() "
                               "after the last backward); call ternary_step(model) first")
        factor = self.tcfg.rate_factor(self.step)
        self.updater.set_rate_factor(factor)
        if self.graphed is not None and factor != self._graph_factor:
            self.graphed.release()      # the step sizes change: the next call captures the step with the new ones
            self._graph_factor = factor
        if self.sync is not None:
            out = self._micro_batched_step()
            self.step += 1
            self.tokens_seen += self.tcfg.batch * self.tcfg.ctx * self.micro_per_step
            return out
        batch, components = self.task.next_batch(self.tcfg.batch, self.device)
        self.last_components = components
        if self.graphed is None:
            out, self.last_parts = self._step_on(batch, components)
        else:   # a fixed-step task: the same components every step (checked in __init__)
            fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
            out, self.last_parts = self.graphed(fields)
            out = {k: v.clone() for k, v in out.items()}              # the graph overwrites its outputs
            self.last_parts = {c: {k: v.clone() for k, v in p.items()} for c, p in self.last_parts.items()}
        del batch
        self.step += 1
        self.tokens_seen += self.tcfg.batch * self.tcfg.ctx
        return out

    def _step_on(self, batch: Any, components: list) -> tuple[dict[str, torch.Tensor], dict]:
        """Forward, backward passes and update of one step on ``batch`` (steps 3-6 of the module doc)."""
        model = self.model
        shared: dict = {}
        losses = {c.name: c.fn(model, batch, shared) for c in components}
        passes = [c for c in components for _ in range(c.weight)]
        for i, comp in enumerate(passes):
            with route_ballots(model, comp):
                losses[comp.name].backward(retain_graph=i < len(passes) - 1)
        out = {name: loss.detach() for name, loss in losses.items()}
        parts = shared.get("parts", {})
        del losses, shared  # nothing of this step's graph may outlive it
        self.updater.step()
        return out, parts

    def _micro_key(self, g: int) -> int:
        """The data key of global micro-batch ``g`` of this step: a function of (seed, step, g) only."""
        return (self.tcfg.seed * 0x9E3779B1 + self.step * self.micro_per_step + g) % (2 ** 63)

    def _micro_batched_step(self) -> dict[str, torch.Tensor]:
        """A step of ``grad_accum`` micro-batches on each of ``world`` processes (step-boundary mode).

        Global micro-batch ``g = rank * grad_accum + j`` draws its batch from ``_micro_key(g)`` and casts its
        ``p``-th backward's ballots in slot ``g * passes + p``; each loss is divided by the global micro-batch
        count (float baselines then get the mean gradient; ternary ballots only see signs and row-normalised
        magnitudes). The per-micro-batch losses of all processes are gathered in ``g`` order and averaged in
        that order, so the reported loss is bit-identical for any split of the same micro-batches."""
        model, tcfg, sync = self.model, self.tcfg, self.sync
        names = [c.name for c in self.task.components]
        K, C = self.micro_per_step, self.chunk_ballots
        P = self.task.passes * C
        rows = torch.zeros(tcfg.grad_accum, 2 * len(names), dtype=torch.float32)   # [loss..., trained...]
        rows = rows.to(self.device)
        trained: list = []
        for j in range(tcfg.grad_accum):
            g = self.rank * tcfg.grad_accum + j
            batch, components = self.task.batch_at(tcfg.batch, self.device, self._micro_key(g))
            if self._dropout:   # the micro-batch's dropout masks: a function of (seed, step, g), whoever draws them
                torch.manual_seed(self._micro_key(g) ^ 0x0D20_9A55)
            with sync.micro_batch(j):
                shared: dict = {}
                losses = {c.name: c.fn(model, batch, shared) for c in components}
                passes = [c for c in components for _ in range(c.weight)]
                for p, comp in enumerate(passes):
                    sync.set_slot(g * P + p * C)
                    with route_ballots(model, comp):
                        (losses[comp.name] / K).backward(retain_graph=p < len(passes) - 1)
            for name, loss in losses.items():
                i = names.index(name)
                rows[j, i] = loss.detach().float()
                rows[j, len(names) + i] = 1.0
            trained += [c for c in components if c not in trained]
            del losses, shared, batch
        if self._dropout:   # and the generators' state after the step: a function of (seed, step) alone
            torch.manual_seed(self._micro_key(K) ^ 0x0D20_9A55)
        all_rows = self._gather_rows(rows)                       # [K, 2C], in global micro-batch order
        out = {}
        for i, name in enumerate(names):
            n = all_rows[:, len(names) + i].sum()
            if self.task.fixed_step or float(n) > 0:   # a drawn component may be absent (that check syncs)
                total = torch.zeros((), dtype=torch.float32, device=all_rows.device)
                for k in range(K):                               # a fixed order: the same sum for any split
                    total = total + all_rows[k, i]
                out[name] = total / n
        self.last_components, self.last_parts = trained, {}   # loss parts: logged for one-micro-batch steps only
        self._reduce_float_grads()
        sync.reduce()
        self.updater.step()
        sync.after_step()
        return out

    def _gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return rows
        import torch.distributed as dist
        buf = [torch.empty_like(rows) for _ in range(self.world)]
        sync = self.sync
        sync._collective(lambda: dist.all_gather(buf, rows), "gather of the step's losses")
        return torch.cat(buf)

    def _reduce_float_grads(self) -> None:
        """Float baselines: sum the (already 1/K-scaled) gradients over processes -- DDP's job, not bit-exact
        across splits (a float sum depends on its order)."""
        if self.world == 1 or self.updater.optimizer is None:
            return
        import torch.distributed as dist
        for group in self.updater.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.sync._collective(lambda p=p: dist.all_reduce(p.grad), "all-reduce of float gradients")

    def _graph_step(self, fields: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
        """``_step_on`` for ``GraphedStep``: the batch arrives as its fields (static CUDA buffers)."""
        return self._step_on(self._batch_type(**fields), self.task.components)

    def close(self) -> None:
        """Release the run directory's lock (a finished run; the process exiting does it too)."""
        if self.run_lock is not None:
            self.run_lock.release(force=True)
            self.run_lock = None
        if self._tb:
            self._tb.close()
            self._tb = None

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The task's validation metrics on fixed held-out windows."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self.task.evaluate(self.model, self.tcfg.batch, self.tcfg.eval_batches, self.device,
                                      self.tcfg.seed)
        finally:
            self.model.train(was_training)

    # ------------------------------------------------------------------ run directory
    def _metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def _tensorboard(self):
        """A ``SummaryWriter`` on ``<run>/tensorboard`` when tensorboard is installed, else None (made once)."""
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            except ImportError:           # tensorboard not installed: metrics.jsonl and loss.png only
                self._tb = False
        return self._tb or None

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to the history and ``metrics.jsonl``; its numbers also go to TensorBoard when it is
        installed (``<run>/tensorboard``, one scalar per key at ``record["step"]``). Rank 0 only."""
        self.history.append(record)
        if self.run_dir is not None and self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tb = self._tensorboard()
            if tb is not None:
                for key, value in record.items():
                    if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                        tb.add_scalar(key, value, record["step"])
                tb.flush()
            with open(self._metrics_path(), "a") as f:
                f.write(json.dumps(record) + "\n")

    def save(self) -> Path:
        """Atomically write ``<run>/checkpoint.safetensors`` and ``<run>/config.json``."""
        if self.run_dir is None:
            raise ValueError("Trainer.save() needs a run_dir")
        if any(m.dirty for m in ternary_layers(self.model)):
            raise RuntimeError("Trainer.save(): ballots are pending (save between steps)")
        path = self.run_dir / CHECKPOINT_NAME
        if self.rank != 0:          # every rank holds the same state; rank 0 writes it
            return path
        extra = {"rng.torch": torch.get_rng_state(), **self.task.rng_tensors()}
        if self.device.type == "cuda":   # dropout draws from the device's generator (philox seed and offset)
            extra["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        optim, groups = self.updater.state_tensors()
        extra.update(optim)
        task = {"kind": self.task.kind, "config": self.task.config(), **self.task.checkpoint_state()}
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "train_config": self.tcfg.to_dict(),
                 "task": task, "preset": self.preset, "micro_batches_per_step": self.micro_per_step,
                 "device_type": self.device.type, "inexact_resumes": self.inexact_resumes,
                 "resolved_settings": self.resolved_settings}
        cfg = getattr(self.model, "cfg", None)
        model_cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else {}      # a user model has none
        save_checkpoint(path, self.model.state_dict(), model_cfg, state, extra,
                        {"optim_groups": groups})
        cfg_json = {"preset": self.preset, "model": model_cfg, "train": self.tcfg.to_dict(),
                    "task": task, "step": self.step, "resolved_settings": self.resolved_settings}
        atomic_write_bytes(self.run_dir / "config.json", json.dumps(cfg_json, indent=2).encode())
        return path

    def restore(self, model_state: dict, train_state: dict, other: dict, meta: dict) -> None:
        """Load the state read by ``load_checkpoint`` into this trainer (bit-exact continuation)."""
        try:
            self.model.load_state_dict({k: v.to(self.device) for k, v in model_state.items()}, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint does not fit this model: {' '.join(str(exc).split())[:300]}") from None
        try:
            self.task.load_rng_tensors(other)
            torch.set_rng_state(other["rng.torch"])
        except KeyError as exc:
            raise CheckpointError(f"checkpoint lacks the sampler state {exc.args[0]!r}") from None
        if self.device.type == "cuda" and "rng.cuda" in other:
            torch.cuda.set_rng_state(other["rng.cuda"], self.device)
        elif self.device.type == "cuda" and self._dropout and not self.tcfg.inexact_resume:
            raise CheckpointError("checkpoint lacks the CUDA generator state ('rng.cuda') that the dropout of this "
                                  "run draws from; it cannot be resumed exactly (--inexact-resume to continue)")
        saved = int(train_state.get("micro_batches_per_step", 1))
        if saved != self.micro_per_step:
            fits = saved % self.world == 0
            use = f"{saved // self.world} x {self.world}" if fits else f"{saved} x 1"
            raise CheckpointError(
                f"the checkpoint was trained with {saved} micro-batch(es) per step (grad_accum x processes), this "
                f"run has {self.micro_per_step} ({self.tcfg.grad_accum} x {self.world}); resume with grad_accum "
                f"{use} process(es) so the step stays the same")
        self.step = int(train_state["step"])
        self.tokens_seen = int(train_state["tokens_seen"])
        self.inexact_resumes = list(train_state.get("inexact_resumes", []))
        self.resolved_settings = dict(train_state.get("resolved_settings", {}))
        self.updater.load_state_tensors(other, meta.get("optim_groups", "[]"), self.device)

    def plot(self) -> Optional[Path]:
        """``<run>/loss.png`` from metrics.jsonl (``plots.py``)."""
        if self.run_dir is None or self.rank != 0 or not self._metrics_path().exists():
            return None
        return plot_metrics(self._metrics_path(), self.run_dir / "loss.png", f"arbitor {self.run_dir.name}")

    # ------------------------------------------------------------------ loop
    def fit(self, steps: Optional[int] = None, progress: bool = True,
            print_fn=print) -> dict[str, float]:
        """Train until ``self.step == steps`` (default ``tcfg.steps``); returns the last evaluation (module doc)."""
        from tqdm import tqdm
        tcfg = self.tcfg
        target = tcfg.steps if steps is None else steps
        meter = MemoryMeter(self.model, self.device, print_fn) if tcfg.no_save else None
        if meter is not None:
            meter.header()
        last_eval: dict[str, float] = {}
        if self.rank == 0:
            for line in self.start_lines:          # e.g. the counter rate "auto" chose (run.py)
                tqdm.write(line)
        self.start_lines = []
        if self.step == 0 and target > 0:  # the untrained model's validation starts the curve
            last_eval = self.evaluate()
            self.log({"step": 0, **last_eval})
            if self.rank == 0:
                tqdm.write(f"step 0: {self.task.format_eval(last_eval)}")
        bar = tqdm(total=target, initial=self.step, disable=not progress or self.rank != 0, unit="step",
                   dynamic_ncols=True)
        t_last, tok_last = time.perf_counter(), self.tokens_seen
        try:
            while self.step < target:
                losses = meter.step(self.step, self.train_step)[0] if meter is not None else self.train_step()
                bar.update(1)
                at_end = self.step == target
                if tcfg.log_interval and (self.step % tcfg.log_interval == 0 or at_end):
                    losses = {k: float(v) for k, v in losses.items()}       # waits for the step
                    if not all(math.isfinite(v) for v in losses.values()):
                        raise FloatingPointError(f"non-finite loss at step {self.step}: {losses}")
                    total = sum(losses.values())
                    now = time.perf_counter()
                    tps = (self.tokens_seen - tok_last) / max(now - t_last, 1e-9)
                    t_last, tok_last = now, self.tokens_seen
                    mem = memory_mb(self.device)
                    rec = {"step": self.step, "loss": total, "tokens_per_s": tps, "mem_mb": mem,
                           "tokens_seen": self.tokens_seen, **self.task.log_fields(self.last_components)}
                    rec.update({f"loss/{k}": v for k, v in losses.items()})
                    rec.update({f"parts/{c}/{k}": float(v) for c, parts in self.last_parts.items()
                                for k, v in parts.items()})
                    self.log(rec)
                    bar.set_postfix(loss=f"{total:.3f}", tok_s=f"{tps:,.0f}", mem=f"{mem:,.0f}MB")
                del losses
                if (tcfg.eval_interval and self.step % tcfg.eval_interval == 0) or at_end:
                    last_eval = self.evaluate()
                    self.log({"step": self.step, **last_eval})
                    if self.rank == 0:
                        bar.write(f"step {self.step}: {self.task.format_eval(last_eval)}")
                    if self.run_dir is not None and self.rank == 0:
                        self.plot()
                        self.task.artifacts(self.model, self.run_dir, self.step, tcfg.ctx)
                interval = tcfg.checkpoint_interval
                if self.run_dir is not None and not tcfg.no_save and ((interval and self.step % interval == 0)
                                                                      or at_end):
                    self.save()
        finally:
            bar.close()
        return last_eval

