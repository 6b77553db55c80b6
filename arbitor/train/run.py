"""Runs on disk: build a new run or resume one, for either task, and load a run for sampling.

``build_run(kind, tcfg, task_cfg, model_settings, run_dir, resume, device)`` does everything
``arbitor train`` / ``arbitor pretrain`` do before the loop: load the data (only what the task uses),
build the model from its preset and the ``ModelSettings`` overrides, and -- with ``resume`` -- restore
the trainer from ``<run>/checkpoint.safetensors`` after checking that the run is the same one:

* the task kind (a text run is not continued by ``pretrain``, nor the reverse);
* the fields of ``TrainConfig`` that shape the batches and schedule (``config.IDENTITY_FIELDS``), every
  field of the task's config, the preset and any model setting given again;
* the data itself: the text's sha256 (text), the modality layout (multimodal).

Any difference is a ``CheckpointError`` naming the setting: a bit-exact continuation needs the same
value.

``counter_rate="auto"`` (``ModelSettings``' default) is resolved once, when a new run is built: a run of
ternary projections on the ``counter`` rule gets ``ternary.rules.counter.auto_counter_rate`` of its planned
passes over the training tokens, ``steps * batch * ctx * grad_accum * processes / training tokens`` (a
multimodal run: no such number, so rate 1.0). The resolved float is the run's ``counter_rate`` from then on: the
model config and checkpoint hold it, the checkpoint and ``config.json`` also record how it was chosen
(``resolved_settings``), and ``--resume`` continues with it whatever ``--steps`` or the data now give ("auto"
asks for nothing on resume; an explicit other rate is refused like any other setting).

A run directory that holds a checkpoint is only continued with ``resume`` and never overwritten when its
checkpoint cannot be loaded.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ..data import DataError, load_modality
from ..model.config import ConfigError, ModelConfig, preset
from ..model.multimodal import ModalitySpec, MultimodalARB
from ..model.text import ArbitorLM
from ..ternary.embedding import EMBEDDING_RULES
from ..ternary.format import COUNTER_BITS
from ..ternary.ops.backend import resolve_backend
from ..ternary.rules import RULES
from ..ternary.rules.counter import (AUTO_RATE_FEW, AUTO_RATE_MANY, AUTO_RATE_PASSES, MAX_COUNTER_RATE,
                                     auto_counter_rate)
from ..ternary.scale import MAX_STRENGTH
from . import distributed
from .checkpoint import CHECKPOINT_NAME, CheckpointError, atomic_write_bytes, load_checkpoint, remove_stale_temps
from .config import IDENTITY_FIELDS, TrainConfig
from .multimodal import MultimodalConfig, MultimodalTask, modality_specs
from .settings import check_settings, flag_name, setting
from .text import TextConfig, TextTask, build_dataset
from .trainer import Trainer

__all__ = ["ModelSettings", "TASK_CONFIGS", "build_run", "load_run", "fit_config", "planned_passes", "RunError"]

TASK_CONFIGS = {"text": TextConfig, "multimodal": MultimodalConfig}
AUTO = "auto"
TaskConfig = Union[TextConfig, MultimodalConfig]
RunError = (DataError, ConfigError, CheckpointError)


@dataclass
class ModelSettings:
    """The model settings a run may set on top of its preset (``None``: the preset's, or the checkpoint's)."""

    preset: Optional[str] = setting(None, "model preset: tiny, small, base, medium, 3b (default tiny, or the "
                                          "checkpoint's with --resume)")
    group_size: Optional[int] = setting(None, "scale-group size of the ternary layers and the embedding "
                                              "(power of two >= 4)", low=4)
    strength: Optional[float] = setting(None, "BigInt strength: S = 2**(E + strength*mean_corr)", low=0.0,
                                        high=MAX_STRENGTH)
    update_rule: Optional[str] = setting(None, "update rule of the dense ternary layers: bigint (the spec's) or "
                                               "counter (docs/quality.md)", choices=tuple(RULES))
    counter_bits: Optional[int] = setting(None, "counter rule: bits per weight of the packed counters",
                                          choices=COUNTER_BITS)
    # "auto": chosen from the run's planned passes over its training tokens when a new run is built (module doc;
    # ternary/rules/counter.py auto_counter_rate); None: the preset's / TernaryConfig's (1.0)
    counter_rate: Optional[Union[float, str]] = setting(
        AUTO, f"counter rule: rungs per ballot per unit of row-RMS gradient; auto: {AUTO_RATE_MANY:g} when the run's "
              f"planned passes over its training tokens (steps x batch x ctx x grad_accum x processes / training "
              f"tokens) exceed {AUTO_RATE_PASSES:g}, else {AUTO_RATE_FEW:g} (a resumed run keeps its checkpoint's "
              "rate)", low=0.0,
        high=MAX_COUNTER_RATE, words=(AUTO,))
    embedding_update_rule: Optional[str] = setting(None, "update rule of the sparse embedding",
                                                   choices=EMBEDDING_RULES)
    backend: Optional[str] = setting(None, "ternary kernel backend (default: ARB_TERNARY_BACKEND or auto)",
                                     choices=("auto", "torch", "triton"))
    gradw_fp8: Optional[bool] = setting(None, "ballots form grad_W from fp8 operands: faster on fp8 tensor cores (CUDA "
                                              "sm_89+), votes within fp8 rounding of the bf16 ones (docs/kernels.md)")
    matmul_fp8: Optional[bool] = setting(None, "the forward and grad-x multiply fp8 operands (CUDA sm_89+) in layers "
                                               "where that pays: faster, but the loss is computed from activations "
                                               "and group scales rounded to 4 significant bits (docs/kernels.md)")
    activation_checkpointing: Optional[bool] = setting(None, "recompute each block in backward, keeping only the "
                                                             "blocks' inputs alive (the 3b preset's default)")
    recompute_blocks: Optional[int] = setting(None, "with activation checkpointing: how many blocks, the first ones, "
                                                    "recompute; the others keep their activations, a faster backward "
                                                    "for more memory (default: all)", low=0)
    dropout: Optional[float] = setting(None, "dropout probability, below 1, in training (embedding output, "
                                             "attention probabilities, attention and MLP residual branches, as "
                                             "nanoGPT; default 0: none)", low=0.0)

    def __post_init__(self) -> None:
        check_settings(self)

    def ternary_changes(self) -> dict[str, Any]:
        """The ``TernaryConfig`` fields these settings change (``counter_rate="auto"`` is none: it is resolved when
        a new run is built, and asks nothing of a resumed one)."""
        names = ("group_size", "strength", "update_rule", "counter_bits", "counter_rate", "backend", "gradw_fp8",
                 "matmul_fp8")
        return {k: getattr(self, k) for k in names if getattr(self, k) not in (None, AUTO)}

    def model_changes(self) -> dict[str, Any]:
        """The other ``ModelConfig`` fields these settings change."""
        out = {}
        if self.embedding_update_rule is not None:
            out["embedding_update_rule"] = self.embedding_update_rule
        if self.group_size is not None:
            out["embedding_group_size"] = self.group_size
        for name in ("dropout", "activation_checkpointing", "recompute_blocks"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def differences(self, cfg: ModelConfig) -> list[str]:
        """Settings given here that ``cfg`` does not have (``name=saved`` vs ``asked``)."""
        out = []
        for k, v in self.ternary_changes().items():
            if getattr(cfg.ternary, k) != v:
                out.append(f"{k}={getattr(cfg.ternary, k)!r}, you asked for {v!r}")
        for k, v in self.model_changes().items():
            if getattr(cfg, k) != v:
                out.append(f"{k}={getattr(cfg, k)!r}, you asked for {v!r}")
        return out


def fit_config(cfg: ModelConfig, ctx: int, device: torch.device) -> ModelConfig:
    """``cfg`` with ``max_ctx`` raised to ``ctx`` if needed; ``ConfigError`` if its ternary backend cannot
    run on ``device``."""
    if cfg.linear == "ternary":
        try:
            resolve_backend(device, cfg.ternary.backend)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(" ".join(str(exc).split())) from None
    return cfg.replace(max_ctx=ctx) if cfg.max_ctx < ctx else cfg


def _device(device: Union[str, torch.device]) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return dev


def _check_same(saved: dict[str, Any], asked: dict[str, Any], what: str) -> None:
    for key, value in asked.items():
        if key in saved and saved[key] != value:
            raise CheckpointError(f"--resume: the checkpoint was trained with {flag_name(key)[2:]}={saved[key]!r}, "
                                  f"not {value!r}; a bit-exact continuation needs the same {what}")


def _build_model(kind: str, cfg: ModelConfig, task_cfg: TaskConfig, specs: list[ModalitySpec]) -> nn.Module:
    torch.manual_seed(cfg.seed)
    if kind == "text":
        return ArbitorLM(cfg)
    return MultimodalARB(cfg, specs, task_cfg.vq_update_rule)


def build_run(kind: str, tcfg: TrainConfig, task_cfg: TaskConfig, settings: Optional[ModelSettings] = None,
              run_dir: Optional[Path] = None, resume: bool = False, device: Union[str, torch.device] = "cpu",
              components=None, model_fields: Optional[dict[str, Any]] = None) -> Trainer:
    """A ready ``Trainer`` for a new run, or for ``run_dir``'s checkpoint with ``resume`` (module doc).

    ``settings``: the command-line model settings; ``model_fields``: any other ``ModelConfig`` field
    changes (Python API: e.g. ``{"linear": "dense", "d_model": 384, "ternary": {"group_size": 32}}``);
    ``components`` replaces a text task's default loss component. Raises ``DataError`` / ``ConfigError`` /
    ``CheckpointError`` with a one-line reason. With a ``run_dir`` the trainer holds the run directory's lock
    (``lock_run``) until ``trainer.close()`` or the process exits.
    """
    lock = None
    if run_dir is not None:
        if Path(run_dir).exists() and not Path(run_dir).is_dir():
            raise CheckpointError(f"--run {run_dir} is a file, not a run directory")
        lock = lock_run(Path(run_dir)) if distributed.is_main() else None
    try:
        trainer = _build_run(kind, tcfg, task_cfg, settings, run_dir, resume, device, components, model_fields)
    except BaseException:
        if lock is not None:
            lock.release(force=True)
        raise
    trainer.run_lock = lock
    return trainer


def _build_run(kind: str, tcfg: TrainConfig, task_cfg: TaskConfig, settings: Optional[ModelSettings],
               run_dir: Optional[Path], resume: bool, device: Union[str, torch.device], components,
               model_fields: Optional[dict[str, Any]]) -> Trainer:
    """``build_run`` without the lock."""
    model_fields = dict(model_fields or {})
    settings = settings or ModelSettings()
    ternary_fields = {**settings.ternary_changes(), **model_fields.pop("ternary", {})}
    auto_rate = ternary_fields.get("counter_rate", settings.counter_rate) == AUTO
    if auto_rate:
        ternary_fields.pop("counter_rate", None)          # resolved below, once the run's data is known
    if kind not in TASK_CONFIGS:
        raise ConfigError(f"unknown task {kind!r}; choose one of {', '.join(TASK_CONFIGS)}")
    dev = _device(device)
    ckpt = None
    if run_dir is not None:
        path = Path(run_dir) / CHECKPOINT_NAME
        if resume:
            ckpt = load_checkpoint(path)
        elif path.exists():
            raise CheckpointError(f"{path} already exists; pass --resume to continue it or choose another --run "
                                  "(arbitor never overwrites a checkpoint)")
    saved_task: dict[str, Any] = {}
    resolved: dict[str, Any] = {}         # settings chosen here ("auto"): recorded by the trainer
    if ckpt is not None:
        model_state, model_cfg, train_state, other, meta = ckpt
        saved_task = train_state.get("task", {})
        if saved_task.get("kind") != kind:
            raise CheckpointError(f"--resume: {path} is a {saved_task.get('kind')!r} run, not a {kind!r} run "
                                  f"(use arbitor {'train' if saved_task.get('kind') == 'text' else 'pretrain'})")
        saved_t = train_state["train_config"]
        _check_same({k: saved_t.get(k, getattr(TrainConfig, k, None)) for k in IDENTITY_FIELDS},
                    {k: getattr(tcfg, k) for k in IDENTITY_FIELDS}, "value")
        inexact = _result_changes(saved_t, tcfg, train_state.get("device_type"), dev.type)
        if inexact and not tcfg.inexact_resume:
            raise CheckpointError(f"--resume: {inexact[0]}, so the result would differ from a straight run; pass "
                                  "--inexact-resume to continue anyway (the checkpoint then records it)")
        saved_data = dict(saved_task.get("config", {}))
        if saved_data.get("max_chars") == 0:      # before 0.2: 0 meant all of the text, now None does
            saved_data["max_chars"] = None
        _check_same(saved_data, dataclasses.asdict(task_cfg), "data")
        saved_preset = train_state.get("preset")
        if settings.preset is not None and settings.preset != saved_preset:
            raise CheckpointError(f"--resume: the checkpoint was trained with preset {saved_preset!r}, "
                                  f"not {settings.preset!r}")
        cfg = ModelConfig.from_dict(model_cfg)
        diff = settings.differences(cfg) + [f"{k}={getattr(cfg, k)!r}, you asked for {v!r}"
                                            for k, v in model_fields.items() if getattr(cfg, k) != v] \
            + [f"{k}={getattr(cfg.ternary, k)!r}, you asked for {v!r}"
               for k, v in ternary_fields.items() if getattr(cfg.ternary, k) != v]
        if diff:
            raise CheckpointError(f"--resume: the checkpoint has {diff[0]}")
        preset_name = saved_preset
    # ------------------------------------------------------------------ data and task
    if kind == "text":
        vocab, data = build_dataset(task_cfg, tcfg.ctx, tcfg.seed, saved_task.get("vocab"))
        if saved_task.get("text_sha256") not in (None, data.text_sha256):
            raise CheckpointError("--resume: the training text differs from the one this checkpoint was trained on "
                                  "(sha256 mismatch); a bit-exact continuation needs the same text")
        task = TextTask(task_cfg, vocab, data, components)
        specs: list[ModalitySpec] = []
        vocab_size = vocab.vocab_size
    else:
        datasets = {m: load_modality(m, task_cfg.data[m], tcfg.ctx, task_cfg.val_fraction, tcfg.seed,
                                     task_cfg.max_code_bytes) for m in task_cfg.active}
        specs = modality_specs(task_cfg, datasets)
        task = MultimodalTask(task_cfg, datasets, tcfg.seed)
        vocab_size = 256 + sum(s.num_codes for s in specs)
        if ckpt is not None and task.checkpoint_state()["modalities"] != saved_task.get("modalities"):
            raise CheckpointError("--resume: the modalities' layout (codes, patch sizes) differs from the checkpoint's")
    # ------------------------------------------------------------------ model
    if ckpt is None:
        preset_name = settings.preset or "tiny"
        fields = {"vocab_size": vocab_size, "seed": tcfg.seed, **settings.model_changes(), **model_fields}
        cfg = preset(preset_name, ternary=ternary_fields, **fields)
        if auto_rate and cfg.linear == "ternary" and cfg.ternary.update_rule == "counter":
            cfg, resolved, line = _resolve_counter_rate(cfg, tcfg, task)
        cfg = scale_prior(cfg, tcfg.grad_accum * distributed.world_size())
    elif cfg.vocab_size != vocab_size:
        raise CheckpointError(f"checkpoint vocab_size {cfg.vocab_size} != vocabulary size {vocab_size}")
    cfg = fit_config(cfg, tcfg.ctx, dev)
    model = _build_model(kind, cfg, task_cfg, specs)
    if kind == "multimodal" and ckpt is None:
        gen = torch.Generator().manual_seed(tcfg.seed + 31)
        for s in specs:
            model.vq[s.name].init_from_data(datasets[s.name].train, gen)
    trainer = Trainer(model, task, tcfg, run_dir=run_dir, device=dev, preset=preset_name, resolved_settings=resolved,
                      start_lines=[line] if resolved else [])
    if ckpt is not None:
        trainer.restore(model_state, train_state, other, meta)
        if inexact:
            trainer.inexact_resumes.append({"step": trainer.step, "changed": inexact})
        if trainer.rank == 0:
            _truncate_metrics(Path(run_dir) / "metrics.jsonl", trainer.step)
    elif run_dir is not None and trainer.rank == 0:     # data-parallel: rank 0 owns the run directory
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        stale = Path(run_dir) / "metrics.jsonl"
        if stale.exists():
            stale.unlink()
    return trainer


def planned_passes(tcfg: TrainConfig, task) -> Optional[float]:
    """How many times a new run of ``tcfg`` will go over ``task``'s training tokens: ``steps`` x the tokens of
    one step (``batch * ctx`` per micro-batch, ``grad_accum`` micro-batches on each of the data-parallel
    processes) / the training tokens; None when the task has no one number of them (multimodal)."""
    train_tokens = task.train_tokens()
    if not train_tokens:
        return None
    tokens_per_step = tcfg.batch * tcfg.ctx * tcfg.grad_accum * distributed.world_size()
    return tcfg.steps * tokens_per_step / train_tokens


def _resolve_counter_rate(cfg: ModelConfig, tcfg: TrainConfig, task) -> tuple[ModelConfig, dict[str, Any], str]:
    """``cfg`` with ``counter_rate="auto"`` resolved (module doc), the record of how it was chosen and the line
    that says so."""
    passes = planned_passes(tcfg, task)
    rate = auto_counter_rate(passes)
    train_tokens = task.train_tokens()
    why = (f"{passes:.2f} passes over {train_tokens:,} training tokens" if passes is not None
           else f"no single number of passes for a {task.kind} run")
    record = {"asked": AUTO, "value": rate, "passes": passes, "train_tokens": train_tokens,
              "threshold_passes": AUTO_RATE_PASSES}
    line = (f"counter_rate auto -> {rate} ({why}; {AUTO_RATE_MANY} above {AUTO_RATE_PASSES:g} passes, else "
            f"{AUTO_RATE_FEW})")
    return cfg.replace(ternary={"counter_rate": rate}), {"counter_rate": record}, line


def _result_changes(saved_t: dict[str, Any], tcfg: TrainConfig, saved_device: Optional[str],
                    device_type: str) -> list[str]:
    """Settings outside ``IDENTITY_FIELDS`` whose change makes a resumed run differ from the straight one."""
    out = []
    schedule = saved_t.get("schedule", "constant")
    if schedule != "constant" and saved_t.get("steps") != tcfg.steps:
        out.append(f"--steps changed from {saved_t.get('steps')} to {tcfg.steps} under the {schedule} schedule "
                   "(its horizon moves)")
    if bool(saved_t.get("compile", False)) != tcfg.compile:
        out.append(f"--compile changed from {bool(saved_t.get('compile', False))} to {tcfg.compile} (compiled float "
                   "ops round differently)")
    if saved_device is not None and saved_device != device_type:
        out.append(f"the device changed from {saved_device} to {device_type} (float rounding differs)")
    return out


def lock_run(run_dir: Path):
    """Take the run directory's lock (``<run>/.lock``, ``filelock``) for this process, or ``RunError`` at once if
    another process holds it; then remove temporary files a killed writer left there. Held until the process
    exits or ``Trainer.close()``; re-entrant within one process."""
    from filelock import FileLock, Timeout
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / ".lock", timeout=0, is_singleton=True, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise CheckpointError(f"{run_dir} is in use by another arbitor process (lock {run_dir / '.lock'}); wait for it to "
                       "finish or stop it") from None
    remove_stale_temps(run_dir)
    return lock


def scale_prior(cfg: ModelConfig, micro_batches: int) -> ModelConfig:
    """A new run whose step gathers ``micro_batches`` micro-batches (step-boundary mode): ``ballot_prior`` times
    ``micro_batches``, so one step of K same-state ballots moves a scale as far as one ballot moved it with the
    original prior (without it, K agreeing ballots against the small prior overshoot: the tiny preset diverged
    at K = 4, val loss 6.1 -> 51 in 90 steps; with it 3.54 -> 2.54, docs/distributed.md)."""
    if micro_batches <= 1:
        return cfg
    t = dataclasses.replace(cfg.ternary, ballot_prior=cfg.ternary.ballot_prior * micro_batches)
    return dataclasses.replace(cfg, ternary=t)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint's ``step`` (a run that died between checkpoints), and a torn last
    line (a kill during a write). A damaged line elsewhere is a ``CheckpointError`` naming the file and line."""
    if not path.exists():
        return
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not UTF-8 text; move it away to resume") from None
    keep = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            if i == len(lines) - 1:        # torn by a kill mid-write: the record is lost, the run is not
                continue
            raise CheckpointError(f"{path} line {i + 1} is not a JSON record; fix or move the file to resume") from None
        if isinstance(rec.get("step", 0), int) and rec.get("step", 0) <= step:
            keep.append(line)
    if len(keep) != len(lines):
        atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def load_run(run_dir: Path, device: Union[str, torch.device] = "cpu"):
    """``(model, vocab, train_state)`` of a text run's checkpoint, for sampling."""
    from ..data import build_vocab
    model_state, model_cfg, train_state, _, _ = load_checkpoint(Path(run_dir) / CHECKPOINT_NAME)
    task = train_state.get("task", {})
    if task.get("kind") != "text":
        raise CheckpointError(f"{run_dir} is a {task.get('kind')!r} run; sampling needs a text run "
                              "(arbitor train)")
    cfg = ModelConfig.from_dict(model_cfg)
    vocab = build_vocab("", spec=task["vocab"])
    model = ArbitorLM(cfg)
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint in {run_dir} does not fit its own config: "
                              f"{' '.join(str(exc).split())[:300]}") from None
    return model.to(device), vocab, train_state
