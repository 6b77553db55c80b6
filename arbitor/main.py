"""The pure-ternary trainer: loss-component routing, the per-step update, evaluation, runs on disk.

One optimisation step (``Trainer.train_step``)
----------------------------------------------
1. draw a batch (the data sampler's own seeded ``torch.Generator``);
2. one forward pass; every ``LossComponent`` computes its loss from it;
3. for each component with weight ``w > 0``: ``prepare_ternary_backward(model, component)``
   (routes which layers vote), then ``w`` backward passes of that component's loss alone --
   the BigInt votes stream straight into each layer's ``corr_accum`` during backward (no float
   gradient buffer is kept for ternary layers);
4. the per-step update: ``ternary_step(model)`` folds the ballots into ``step_counter`` (and applies
   the legacy embedding's threshold flips); the dense baseline's AdamW steps here too;
5. cleanup: voting flags restored, the graph and every step tensor released before returning, so
   nothing allocated in step N is alive in step N+1 (tested with ``LiveTensorTracker``).

LossComponent semantics (integer weights)
-----------------------------------------
A component's backward is **one ballot** in every layer it reaches: each scale group receives the
component's *own* sign vote ``-sum_k sign(dL_c/dW[k]) * T[k]`` -- the sign of that component's
gradient alone, never of a weighted float sum of gradients. An integer weight ``w`` casts ``w``
ballots of that component (``w`` backward passes); ``w = 0`` computes and logs the loss without
voting. So for one layer and one step the update is::

    corr_accum += sum_c  w_c * vote_c          step_counter += sum_c w_c

(up to the online rule: a later ballot's ``grad_x`` already sees the scales moved by the earlier
ones). Two components pulling a group in opposite directions with equal weights cancel exactly
(``corr_accum`` unchanged, ``step_counter += 2``) however different their loss magnitudes are; with
weights 2 and 1 the net vote is the first component's vote. A component's ``modules`` (name
prefixes, e.g. ``("decoders.text",)``) limits which layers its ballots reach; layers outside the
route neither vote nor count the ballot.

Float layers of the ``dense``/``bitnet`` baselines have no ballots: their ``.grad`` accumulates
``w_c * dL_c/dW`` over the components' backward passes and AdamW steps once per step.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from .checkpoint import CHECKPOINT_NAME, CheckpointError, atomic_write_bytes, load_checkpoint, save_checkpoint
from .config import ConfigError, ModelConfig, preset
from .data import Batch, TextDataset, build_vocab, load_text
from .kernel.ternary_scale import ternary_layers, ternary_step
from .model import ArbitorLM

__all__ = ["LossComponent", "TrainConfig", "Trainer", "prepare_ternary_backward", "text_component",
           "build_dataset", "build_trainer", "load_run", "memory_mb"]


# ----------------------------------------------------------------------------------------- components
@dataclass
class LossComponent:
    """A named loss term with an integer weight (number of ballots) and an optional route.

    ``fn(model, batch, shared) -> scalar loss``; ``shared`` is a per-step dict components may use
    to share one forward pass (e.g. ``shared["hidden"]``).
    """

    name: str
    fn: Callable[[nn.Module, Batch, dict], torch.Tensor]
    weight: int = 1
    modules: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:
        if not isinstance(self.weight, int) or isinstance(self.weight, bool) or self.weight < 0:
            raise ValueError(f"LossComponent {self.name!r}: weight must be a non-negative int, got {self.weight!r}")

    def routes(self, layer_name: str) -> bool:
        """Whether this component's ballots reach the layer called ``layer_name``."""
        if self.modules is None:
            return True
        return any(layer_name == p or layer_name.startswith(p + ".") for p in self.modules)


def text_component(weight: int = 1) -> LossComponent:
    """Next-token cross-entropy of the text decoder (nats/token), sharing the step's hidden states."""

    def fn(model: nn.Module, batch: Batch, shared: dict) -> torch.Tensor:
        if "hidden" not in shared:
            shared["hidden"] = model.hidden(batch.x)
        return model.decoders["text"].loss(shared["hidden"], batch.y)

    return LossComponent("text", fn, weight)


def prepare_ternary_backward(model: nn.Module, component: Optional[LossComponent] = None) -> list[str]:
    """Set every ternary layer's ``voting`` flag for the next backward; returns the voting layers' names.

    Layers outside ``component.modules`` get ``voting = False``: their backward still passes
    ``grad_x`` on but casts no ballot. ``component=None`` lets every layer vote.
    """
    voting = []
    for name, module in model.named_modules():
        if not callable(getattr(module, "ternary_step", None)):
            continue
        on = component is None or component.routes(name)
        module.voting = on
        if on:
            voting.append(name)
    return voting


def _restore_voting(model: nn.Module) -> None:
    for module in ternary_layers(model):
        module.voting = True


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


# ----------------------------------------------------------------------------------------- trainer
@dataclass
class TrainConfig:
    steps: int = 1000            # total optimisation steps (a resumed run continues up to this number)
    batch: int = 16              # sequences per step
    ctx: int = 64                # tokens per sequence
    eval_interval: int = 250     # evaluate + checkpoint every N steps (and at the end); 0: only at the end
    eval_batches: int = 8        # validation batches per evaluation (fixed windows, same every time)
    val_fraction: float = 0.1    # tail of the text held out for validation
    seed: int = 0                # data order seed
    vocab: str = "byte"          # "byte" or "char"
    text_data: Optional[str] = None  # UTF-8 file; None = the embedded default corpus
    max_chars: int = 0           # use only the first N characters of the text (0: all)
    # step-size schedule, applied alike to AdamW's lr (float baselines) and to the ternary layers'
    # counter_rate / flip_rate (settings, not state: a pure function of the step, so resume stays exact)
    schedule: str = "constant"   # "constant", or "cosine": linear warm-up, then cosine decay to min_rate_ratio
                                 # at `steps` (nanoGPT's shakespeare_char: warm-up 100, floor 0.1). The decay
                                 # spans `steps`: resuming with the same --steps continues bit-exactly, a larger
                                 # --steps stretches what is left of the curve (docs/quality.md: cosine took the
                                 # counter rule from +0.15 to +0.09 nats behind QAT at 800 steps)
    warmup_steps: int = 0        # cosine only: steps of linear warm-up from 1/warmup_steps of the base rate
    min_rate_ratio: float = 0.1  # cosine only: the factor reached at the last step

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"TrainConfig.schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            raise ValueError(f"TrainConfig.warmup_steps must be a non-negative int, got {self.warmup_steps!r}")
        if not (0.0 <= self.min_rate_ratio <= 1.0):
            raise ValueError(f"TrainConfig.min_rate_ratio must be in [0, 1], got {self.min_rate_ratio}")

    def rate_factor(self, step: int) -> float:
        """The schedule's multiplier for the step that follows ``step`` completed steps (1.0 when constant)."""
        if self.schedule == "constant":
            return 1.0
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_rate_ratio + (1.0 - self.min_rate_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Trainer:
    """Runs optimisation steps of ``model`` on ``data`` and keeps a run directory up to date."""

    def __init__(self, model: ArbitorLM, data: TextDataset, tcfg: TrainConfig, vocab,
                 components: Optional[Sequence[LossComponent]] = None, run_dir: Optional[Path] = None,
                 device: Optional[torch.device] = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = model.to(self.device)
        self.data = data
        self.tcfg = tcfg
        self.vocab = vocab
        self.components = list(components) if components is not None else [text_component()]
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"loss component names must be unique, got {names}")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.step = 0
        self.tokens_seen = 0
        float_params = [p for p in model.parameters() if p.is_floating_point() and p.requires_grad]
        self.optimizer = (torch.optim.AdamW(float_params, lr=model.cfg.dense_lr, weight_decay=0.0)
                          if float_params else None)
        self.history: list[dict[str, Any]] = []
        self.preset: Optional[str] = None  # recorded in checkpoints

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """One optimisation step (module doc); returns the loss of each component (floats)."""
        model = self.model
        model.train()
        stale = [type(m).__name__ for m in ternary_layers(model) if getattr(m, "pending_ballots", 0)]
        if stale:
            raise RuntimeError(f"{len(stale)} layer(s) hold ballots from an unfinished step (no ternary_step() "
                               "after the last backward); call ternary_step(model) first")
        self._apply_schedule()
        batch = self.data.batch(self.tcfg.batch)
        batch = Batch(batch.x.to(self.device), batch.y.to(self.device))
        shared: dict = {}
        losses: dict[str, torch.Tensor] = {}
        try:
            for comp in self.components:
                losses[comp.name] = comp.fn(model, batch, shared)
            schedule = [(c, r) for c in self.components for r in range(c.weight)]
            for i, (comp, _) in enumerate(schedule):
                prepare_ternary_backward(model, comp)
                losses[comp.name].backward(retain_graph=i < len(schedule) - 1)
        finally:
            _restore_voting(model)
        out = {name: float(loss.detach()) for name, loss in losses.items()}
        # cleanup: drop every reference to this step's graph and tensors before the update
        del losses, shared, batch
        return self._finish_step(out)

    def _apply_schedule(self) -> None:
        """Set this step's AdamW lr and ternary counter/flip rates from ``TrainConfig.rate_factor``
        (``cfg.dense_lr`` / ``cfg.counter_rate`` / ``cfg.flip_rate`` times the factor). A constant schedule
        leaves them alone, so rates set on individual layers stay as set."""
        if self.tcfg.schedule == "constant":
            return
        f = self.tcfg.rate_factor(self.step)
        cfg = self.model.cfg
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.dense_lr * f
        for m in ternary_layers(self.model):
            if hasattr(m, "counter_rate"):
                m.counter_rate = cfg.counter_rate * f
                m.flip_rate = cfg.flip_rate * f

    def _finish_step(self, out: dict[str, float]) -> dict[str, float]:
        """The per-step update after all of a step's backwards: ``ternary_step``, the float optimizer
        (dense / QAT baselines only), the counters; raises on a non-finite loss."""
        ternary_step(self.model)
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.tcfg.batch * self.tcfg.ctx
        if not all(math.isfinite(v) for v in out.values()):
            raise FloatingPointError(f"non-finite loss at step {self.step}: {out}")
        return out

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss on fixed held-out windows: ``val_loss`` (nats/token) and ``val_bpb`` (bits/byte)."""
        model = self.model
        was_training = model.training
        model.eval()
        gen = torch.Generator().manual_seed(10_007 + self.tcfg.seed)
        total = 0.0
        for _ in range(self.tcfg.eval_batches):
            b = self.data.batch(self.tcfg.batch, "val", gen)
            _, loss = model(b.x.to(self.device), b.y.to(self.device))
            total += float(loss)
        model.train(was_training)
        nats = total / self.tcfg.eval_batches
        return {"val_loss": nats, "val_bpb": nats / math.log(2) / self.data.val_bytes_per_token}

    # ------------------------------------------------------------------ run directory
    def _metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.run_dir is not None:
            with open(self._metrics_path(), "a") as f:
                f.write(json.dumps(record) + "\n")

    def save(self) -> Path:
        """Atomically write ``<run>/checkpoint.safetensors`` and ``<run>/config.json``."""
        if self.run_dir is None:
            raise ValueError("Trainer.save() needs a run_dir")
        ternary_step(self.model)  # nothing may be pending in a checkpoint (no-op between steps)
        extra = {"rng.data": self.data.get_state(), "rng.torch": torch.get_rng_state()}
        groups = "[]"
        if self.optimizer is not None:
            sd = self.optimizer.state_dict()
            for idx, st in sd["state"].items():
                for k, v in st.items():
                    extra[f"optim.{idx}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
            groups = json.dumps(sd["param_groups"])
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "train_config": self.tcfg.to_dict(),
                 "vocab": self.vocab.to_json(), "preset": self.preset,
                 "text_sha256": self.data.text_sha256}
        path = self.run_dir / CHECKPOINT_NAME
        save_checkpoint(path, self.model.state_dict(), self.model.cfg.to_dict(), state, extra,
                        {"optim_groups": groups})
        cfg_json = {"preset": self.preset, "model": self.model.cfg.to_dict(), "train": self.tcfg.to_dict(),
                    "vocab": self.vocab.to_json(), "step": self.step}
        atomic_write_bytes(self.run_dir / "config.json", json.dumps(cfg_json, indent=2).encode())
        return path

    def restore(self, model_state: dict, train_state: dict, other: dict, meta: dict) -> None:
        """Load the state read by ``load_checkpoint`` into this trainer (bit-exact continuation)."""
        try:
            self.model.load_state_dict({k: v.to(self.device) for k, v in model_state.items()}, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint does not fit this model: {' '.join(str(exc).split())[:300]}") from None
        self.step = int(train_state["step"])
        self.tokens_seen = int(train_state["tokens_seen"])
        self.data.set_state(other["rng.data"])
        torch.set_rng_state(other["rng.torch"])
        if self.optimizer is not None:
            groups = json.loads(meta.get("optim_groups", "[]"))
            state: dict[int, dict] = {}
            for k, v in other.items():
                if k.startswith("optim."):
                    _, idx, key = k.split(".", 2)
                    state.setdefault(int(idx), {})[key] = v.to(self.device) if key != "step" else v
            if groups:
                self.optimizer.load_state_dict({"state": state, "param_groups": groups})

    def plot(self) -> Optional[Path]:
        """Write ``<run>/loss.png`` (train loss and validation loss against step) from metrics.jsonl."""
        if self.run_dir is None or not self._metrics_path().exists():
            return None
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        train, val = [], []
        for line in self._metrics_path().read_text().splitlines():
            r = json.loads(line)
            if "loss" in r:
                train.append((r["step"], r["loss"]))
            if "val_loss" in r:
                val.append((r["step"], r["val_loss"]))
        fig, ax = plt.subplots(figsize=(7, 4))
        if train:
            ax.plot(*zip(*train), lw=0.8, alpha=0.7, label="train loss")
        if val:
            ax.plot(*zip(*val), "o-", label="validation loss")
        ax.set_xlabel("step")
        ax.set_ylabel("nats / token")
        ax.set_title(f"arbitor {self.run_dir.name}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = self.run_dir / "loss.png"
        tmp = path.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, path)
        return path

    # ------------------------------------------------------------------ loop
    def fit(self, steps: Optional[int] = None, progress: bool = True, log_interval: int = 10) -> dict[str, float]:
        """Train until ``self.step == steps`` (default ``tcfg.steps``); evaluates/saves at the interval and the end.

        Returns the last evaluation.
        """
        from tqdm import tqdm
        target = self.tcfg.steps if steps is None else steps
        interval = self.tcfg.eval_interval
        last_eval: dict[str, float] = {}
        if self.step == 0 and target > 0:  # the untrained model's validation loss starts the curve
            first = self.evaluate()
            self.log({"step": 0, **first})
            tqdm.write(f"step 0: val_loss {first['val_loss']:.4f} nats/token, {first['val_bpb']:.4f} bits/byte")
        bar = tqdm(total=target, initial=self.step, disable=not progress, unit="step", dynamic_ncols=True)
        t_last, tok_last = time.perf_counter(), self.tokens_seen
        try:
            while self.step < target:
                losses = self.train_step()
                bar.update(1)
                total = sum(losses.values())
                if self.step % log_interval == 0 or self.step == target:
                    now = time.perf_counter()
                    tps = (self.tokens_seen - tok_last) / max(now - t_last, 1e-9)
                    t_last, tok_last = now, self.tokens_seen
                    mem = memory_mb(self.device)
                    rec = {"step": self.step, "loss": total, "tokens_per_s": tps, "mem_mb": mem,
                           "tokens_seen": self.tokens_seen}
                    rec.update({f"loss/{k}": v for k, v in losses.items()})
                    self.log(rec)
                    bar.set_postfix(loss=f"{total:.3f}", tok_s=f"{tps:,.0f}", mem=f"{mem:,.0f}MB")
                if (interval and self.step % interval == 0) or self.step == target:
                    last_eval = self.evaluate()
                    self.log({"step": self.step, **last_eval})
                    bar.write(f"step {self.step}: val_loss {last_eval['val_loss']:.4f} nats/token, "
                              f"{last_eval['val_bpb']:.4f} bits/byte")
                    if self.run_dir is not None:
                        self.save()
                        self.plot()
        finally:
            bar.close()
        return last_eval


# ----------------------------------------------------------------------------------------- building a run
def build_dataset(tcfg: TrainConfig, vocab_spec: Optional[dict] = None):
    """Load the text, build the vocabulary and split: returns ``(vocab, TextDataset)``."""
    text = load_text(tcfg.text_data)
    if tcfg.max_chars:
        text = text[:tcfg.max_chars]
    vocab = build_vocab(tcfg.vocab, text, vocab_spec)
    ids = vocab.encode(text)
    data = TextDataset(ids, tcfg.ctx, tcfg.val_fraction, tcfg.seed)
    data.text_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    n_val = data.val.numel()
    data.val_bytes_per_token = len(vocab.decode(data.val.tolist()).encode("utf-8")) / n_val
    return vocab, data


def fit_config(cfg: ModelConfig, ctx: int, device: torch.device) -> ModelConfig:
    """``cfg`` with ``max_ctx`` raised to ``ctx`` if needed; ``ConfigError`` if its ternary backend
    cannot run on ``device``."""
    if cfg.linear == "ternary":
        from .kernel.backend import resolve_backend
        try:
            resolve_backend(device, cfg.backend)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(" ".join(str(exc).split())) from None
    return cfg.replace(max_ctx=ctx) if cfg.max_ctx < ctx else cfg


def build_trainer(tcfg: TrainConfig, run_dir: Optional[Path], preset_name: Optional[str] = "tiny",
                  overrides: Optional[dict[str, Any]] = None, resume: bool = False,
                  device: str = "cpu") -> Trainer:
    """Everything ``arbitor train`` does before the loop: data, model, trainer and (``resume``) its state.

    ``preset_name`` may be None when resuming (the checkpoint's preset is used; a new run then gets
    ``tiny``). Raises ``DataError`` / ``ConfigError`` / ``CheckpointError`` with a one-line reason. A run
    directory that already holds a checkpoint is only continued with ``resume=True`` and is never
    overwritten when that checkpoint cannot be loaded.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    ckpt = None
    if run_dir is not None:
        path = Path(run_dir) / CHECKPOINT_NAME
        if resume:
            ckpt = load_checkpoint(path)
        elif path.exists():
            raise CheckpointError(f"{path} already exists; pass --resume to continue it or choose another --run "
                                  "(arbitor never overwrites a checkpoint)")
    if ckpt is not None:
        model_state, model_cfg, train_state, other, meta = ckpt
        saved_t = train_state["train_config"]
        for key in ("batch", "ctx", "seed", "vocab", "text_data", "val_fraction", "max_chars", "schedule",
                    "warmup_steps", "min_rate_ratio"):
            saved = saved_t.get(key, getattr(TrainConfig, key))  # keys added later: the default they had
            if getattr(tcfg, key) != saved:
                raise CheckpointError(f"--resume: the checkpoint was trained with {key}={saved!r}, "
                                      f"not {getattr(tcfg, key)!r}; a bit-exact continuation needs the same value")
        cfg = ModelConfig.from_dict(model_cfg)
        saved_preset = train_state.get("preset")
        if preset_name is not None and preset_name != saved_preset:
            raise CheckpointError(f"--resume: the checkpoint was trained with preset {saved_preset!r}, "
                                  f"not {preset_name!r}")
        for key, val in overrides.items():
            if getattr(cfg, key) != val:
                raise CheckpointError(f"--resume: the checkpoint has {key}={getattr(cfg, key)!r}, "
                                      f"you asked for {val!r}")
        vocab, data = build_dataset(tcfg, train_state["vocab"])
        saved_digest = train_state.get("text_sha256")
        if saved_digest is not None and saved_digest != data.text_sha256:
            raise CheckpointError("--resume: the training text differs from the one this checkpoint was trained on "
                                  "(sha256 mismatch); a bit-exact continuation needs the same text")
    else:
        vocab, data = build_dataset(tcfg)
        overrides.setdefault("vocab_size", vocab.vocab_size)
        preset_name = preset_name or "tiny"
        cfg = preset(preset_name, **overrides)
    cfg = fit_config(cfg, tcfg.ctx, dev)  # a resumed config already fits its own ctx
    if ckpt is not None and cfg.vocab_size != vocab.vocab_size:
        raise CheckpointError(f"checkpoint vocab_size {cfg.vocab_size} != vocabulary size {vocab.vocab_size}")
    torch.manual_seed(cfg.seed)
    model = ArbitorLM(cfg)
    trainer = Trainer(model, data, tcfg, vocab, run_dir=run_dir, device=dev)
    trainer.preset = preset_name if ckpt is None else train_state.get("preset")
    if ckpt is not None:
        trainer.restore(model_state, train_state, other, meta)
        _truncate_metrics(Path(run_dir) / "metrics.jsonl", trainer.step)
    elif run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        mp = Path(run_dir) / "metrics.jsonl"
        if mp.exists():
            mp.unlink()
    return trainer


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint's ``step`` (a run that died between checkpoints)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(keep) != len(lines):
        atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def load_run(run_dir: Path, device: str = "cpu"):
    """``(model, vocab, train_state)`` from ``<run>/checkpoint.safetensors`` (for sampling)."""
    model_state, model_cfg, train_state, _, _ = load_checkpoint(Path(run_dir) / CHECKPOINT_NAME)
    cfg = ModelConfig.from_dict(model_cfg)
    vocab = build_vocab("", spec=train_state["vocab"])
    model = ArbitorLM(cfg)
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint in {run_dir} does not fit its own config: "
                              f"{' '.join(str(exc).split())[:300]}") from None
    return model.to(device), vocab, train_state
