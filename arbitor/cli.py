"""The ``arbitor`` command line: parsing only; the work is done by ``arbitor.train`` and friends.

Subcommands (``arbitor <cmd> --help`` for every flag):

* ``arbitor train``    -- train the ARB text model (default: the ``tiny`` preset on the embedded
  standard-library corpus); writes ``runs/<run>/{metrics.jsonl, loss.png, config.json,
  checkpoint.safetensors}``; ``--resume`` continues a run bit-exactly up to ``--steps``.
* ``arbitor pretrain`` -- the same trainer on text, code, image, audio and video through one trunk.
* ``arbitor sample --run R --prompt TEXT --tokens N --temperature T --top-k K`` -- generate text
  from a run's checkpoint (KV cache).
* ``arbitor audit --preset NAME`` / ``--layer IN OUT`` -- the ternary audit table without training.
* ``arbitor probe-memory --preset NAME`` -- the spec's 3-step memory probe.

The flags of ``train`` and ``pretrain`` are derived from the settings dataclasses (``TrainConfig``,
``TextConfig``, ``MultimodalConfig``, ``ModelSettings``): name, default, help and range are declared
once, there. ``main`` turns expected user errors (bad paths, bad config values, bad checkpoints) into a
single line on stderr and exit code 2 instead of a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

__all__ = ["main", "build_parser", "UserError"]


class UserError(Exception):
    """A problem with the user's input; printed as one line, exit code 2."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# ----------------------------------------------------------------------------------------- train / pretrain
def _run_args(p: argparse.ArgumentParser, kind: str, **defaults) -> None:
    from .train.config import TrainConfig
    from .train.run import TASK_CONFIGS, ModelSettings
    from .train.settings import add_arguments
    add_arguments(p, TrainConfig, defaults)
    add_arguments(p, TASK_CONFIGS[kind])
    add_arguments(p, ModelSettings)
    p.add_argument("--run", default=None, help=f"run name under --runs-dir, or a path (default {kind}-<timestamp>)")
    p.add_argument("--runs-dir", default="runs", help="directory holding runs (default ./runs)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--resume", action="store_true", help="continue --run from its checkpoint up to --steps")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def _run_path(args: argparse.Namespace, required: bool, prefix: str) -> Path:
    if args.run is None:
        if required:
            raise UserError("--resume needs --run NAME")
        args.run = time.strftime(f"{prefix}-%Y%m%d-%H%M%S")
    run = Path(args.run)
    # a name (no separator) lives under --runs-dir; anything that looks like a path is one ("./r", "a/b")
    is_path = run.is_absolute() or "/" in args.run or os.sep in args.run
    return run if is_path else Path(args.runs_dir) / run


def _check_device(name: Optional[str]) -> None:
    """``UserError`` (one line) for a device string torch cannot use here."""
    if name is None:
        return
    import torch
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__}); "
                            "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type not in ("cpu", "meta"):
        raise UserError(f"--device {name}: arbitor trains on cpu or cuda")


def _run(args: argparse.Namespace, kind: str) -> int:
    import torch

    from .ternary.audit import ternary_audit
    from .train.config import TrainConfig
    from .train.run import TASK_CONFIGS, ModelSettings, RunError, build_run
    from .train import distributed
    from .train.settings import from_args
    from .ternary.parallel import PeerError
    _check_device(args.device)
    try:
        tcfg = from_args(TrainConfig, args)
        task_cfg = from_args(TASK_CONFIGS[kind], args)
        settings = from_args(ModelSettings, args)
        device = distributed.init_from_env(args.device, tcfg.dist_timeout)   # torchrun: one process per device
        run_dir = distributed.broadcast_object(_run_path(args, args.resume, "text" if kind == "text" else "pretrain"))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        trainer = build_run(kind, tcfg, task_cfg, settings, run_dir, resume=args.resume, device=device)
    except RunError as exc:
        raise UserError(str(exc)) from None
    except (ValueError, RuntimeError) as exc:  # e.g. a backend that cannot run on this device
        raise UserError(_one_line(exc)) from None
    main_rank = distributed.is_main()
    report = ternary_audit(trainer.model)
    if main_rank:
        procs = f"; {trainer.world} processes x grad_accum {tcfg.grad_accum}" if trainer.micro_per_step > 1 else ""
        print(f"run {run_dir}: preset {trainer.preset}, {report['logical_ternary_weights']:,} ternary weights, "
              f"{report['training_state_bytes']:,} B integer training state, "
              f"{report['trainable_float_params']:,} trainable float params; {trainer.task.summary()}{procs}; "
              f"starting at step {trainer.step} of {tcfg.steps}", flush=True)
    if trainer.step >= tcfg.steps:
        trainer.close()
        raise UserError(f"{run_dir} is already at step {trainer.step}; pass a larger --steps to continue it")
    try:
        result = trainer.fit(progress=not args.no_progress)
    except PeerError as exc:
        trainer.close()           # the run directory's lock
        # a lost peer leaves collectives that can never finish: tearing the process group down can hang or abort
        # (NCCL), so say it in one line and leave at once; the checkpoint on disk is the last complete one
        print(f"arbitor: error: {_one_line(exc)}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)
    finally:
        trainer.close()           # the run directory's lock
    saved = "" if tcfg.no_save else f", {run_dir}/checkpoint.safetensors"
    if main_rank:
        print(f"done: step {trainer.step}, {trainer.task.format_eval(result)}; "
              f"{run_dir}/metrics.jsonl, {run_dir}/loss.png{saved}")
    distributed.shutdown()
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    _run_args(p, "text")


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    _run_args(p, "multimodal", eval_batches=4)


def _train_run(args: argparse.Namespace) -> int:
    return _run(args, "text")


def _pretrain_run(args: argparse.Namespace) -> int:
    return _run(args, "multimodal")


# ----------------------------------------------------------------------------------------- sample
def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run name under --runs-dir, or a path to a run directory")
    p.add_argument("--runs-dir", default="runs", help="directory holding runs (default ./runs)")
    p.add_argument("--prompt", default="\n", help="text to continue (default a newline)")
    p.add_argument("--tokens", type=int, default=200, help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature, 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="sample from the k most likely tokens, 0 = all (default 40)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _sample_run(args: argparse.Namespace) -> int:
    import torch

    from .data import DataError
    from .train.checkpoint import CheckpointError
    from .train.run import load_run
    if args.tokens <= 0:
        raise UserError(f"--tokens must be > 0, got {args.tokens}")
    if args.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0, got {args.top_k}")
    if args.prompt == "":
        raise UserError("--prompt is empty: give at least one character (the default is a newline)")
    _check_device(args.device)
    run_dir = _run_path(args, True, "text")
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    try:
        model, vocab, _ = load_run(run_dir, args.device)
        ids = vocab.encode(args.prompt)
    except (CheckpointError, DataError) as exc:
        raise UserError(str(exc)) from None
    if ids.numel() == 0:
        raise UserError("--prompt must not be empty")
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    out = model.generate(ids.view(1, -1).to(args.device), args.tokens, temperature=args.temperature,
                         top_k=args.top_k or None, generator=gen)
    text = vocab.decode(out[0].tolist()) + "\n"
    sys.stdout.flush()              # UTF-8 whatever the locale: bytes straight to stdout
    sys.stdout.buffer.write(text.encode("utf-8", errors="replace"))
    sys.stdout.buffer.flush()
    return 0


# ----------------------------------------------------------------------------------------- audit
def _audit_args(p: argparse.ArgumentParser) -> None:
    from .ternary.format import COUNTER_BITS
    from .ternary.rules import RULES
    p.add_argument("--layer", nargs=2, type=int, metavar=("IN", "OUT"), help="audit one TernaryScaleTensor(IN, OUT)")
    p.add_argument("--preset", help="audit the whole text model of a preset (see arbitor.model.config.PRESETS)")
    p.add_argument("--group-size", type=int, default=None,
                   help="scale-group size (default: 64 for --layer, the preset's for --preset)")
    p.add_argument("--update-rule", default=None, choices=tuple(RULES),
                   help="update rule of the ternary layers (default: the preset's for --preset, the layer's "
                        "(bigint, the spec's) for --layer)")
    p.add_argument("--counter-bits", type=int, default=None, choices=COUNTER_BITS,
                   help="counter bits of --update-rule counter (default: the preset's, 5 for --layer)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def _audit_run(args: argparse.Namespace) -> int:
    import torch

    from .model.config import ConfigError, preset
    from .model.text import ArbitorLM
    from .ternary.audit import format_audit, ternary_audit
    from .ternary.layer import TernaryScaleTensor
    if args.preset is not None:
        if args.layer is not None:
            raise UserError("audit: give either --layer IN OUT or --preset NAME, not both")
        try:    # None: the preset's setting
            cfg = preset(args.preset, ternary={"update_rule": args.update_rule, "counter_bits": args.counter_bits,
                                               "group_size": args.group_size})
        except ConfigError as exc:
            raise UserError(f"audit: {exc}") from None
        with torch.device("meta"):  # shapes and dtypes are all the audit needs: no weights are drawn
            model = ArbitorLM(cfg)
        title = (f"ternary audit: preset {args.preset!r} (d_model={cfg.d_model}, n_layers={cfg.n_layers}, "
                 f"vocab={cfg.vocab_size}, linear={cfg.linear}, update_rule={cfg.ternary.update_rule}, "
                 f"embedding_update_rule={cfg.embedding_update_rule})")
    elif args.layer is not None:
        in_f, out_f = args.layer
        group = 64 if args.group_size is None else args.group_size
        rule = {"update_rule": args.update_rule or "bigint"}
        if rule["update_rule"] == "counter" and args.counter_bits is not None:
            rule["counter_bits"] = args.counter_bits
        try:
            model = TernaryScaleTensor(in_f, out_f, group_size=group, seed=0, **rule)
        except ValueError as exc:
            raise UserError(f"audit: {exc}") from None
        title = (f"ternary audit: TernaryScaleTensor({in_f}, {out_f}, group_size={group}, "
                 f"update_rule={rule['update_rule']!r})")
    else:
        raise UserError("audit: give --layer IN OUT or --preset NAME")
    report = ternary_audit(model)
    print(json.dumps(report, indent=2) if args.json else format_audit(report, title))
    return 0


# ----------------------------------------------------------------------------------------- probe-memory
def _probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="model preset (default tiny; the spec's 3.12B path is '3b')")
    p.add_argument("--steps", type=int, default=3, help="training steps to probe (default 3)")
    p.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    p.add_argument("--ctx", type=int, default=4, help="tokens per sequence (default 4)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--json", dest="json_out", default=None, metavar="PATH", help="also write the numbers as JSON")


def _probe_run(args: argparse.Namespace) -> int:
    import torch

    from .model.config import ConfigError, preset
    from .train.probe import probe_memory
    for name in ("steps", "batch", "ctx"):
        if getattr(args, name) <= 0:
            raise UserError(f"probe-memory: --{name} must be > 0, got {getattr(args, name)}")
    try:
        cfg = preset(args.preset)
    except ConfigError as exc:
        raise UserError(f"probe-memory: {exc}") from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"probe-memory: --device {device} but CUDA is not available on this machine")
    probe_memory(cfg, steps=args.steps, batch=args.batch, ctx=args.ctx, device=device, out=args.json_out)
    return 0


_SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "train": ("train the ARB text model (pure ternary, integer-only state)", _train_args, _train_run),
    "sample": ("generate text from a run's checkpoint (KV cache)", _sample_args, _sample_run),
    "audit": ("report logical weights, training-state bytes and float parameters", _audit_args, _audit_run),
    "pretrain": ("multimodal pretraining: text, code, image, audio, video (VQ) through one ternary trunk",
                 _pretrain_args, _pretrain_run),
    "probe-memory": ("the spec's memory probe: state bytes and per-step alloc/reserved/peak memory",
                     _probe_args, _probe_run),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: a bad flag raises ``UserError`` instead of printing usage."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="arbitor", description="pure ternary training with integer-only state")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_text, add_args, run) in _SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args._run(args)
    except UserError as exc:
        print(f"arbitor: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
