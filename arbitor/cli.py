"""The ``arbitor`` command line.

Subcommands (``arbitor <cmd> --help`` for every flag):

* ``arbitor train``  -- train the ARB text model (default: the ``tiny`` preset on the embedded
  standard-library corpus); writes ``runs/<run>/{metrics.jsonl, loss.png, config.json,
  checkpoint.safetensors}``; ``--resume`` continues a run bit-exactly up to ``--steps``.
* ``arbitor sample --run R --prompt TEXT --tokens N --temperature T --top-k K`` -- generate text
  from a run's checkpoint (KV cache).
* ``arbitor audit --preset NAME`` / ``--layer IN OUT`` -- the ternary audit table without training.

Subcommands register themselves in ``_SUBCOMMANDS`` (name -> (add_arguments, run)).
``main`` turns expected user errors (bad paths, bad config values) into a single
line on stderr and exit code 2 instead of a traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import torch
from typing import Callable, Optional, Sequence

from .kernel.ternary_audit import format_audit, ternary_audit

__all__ = ["main", "build_parser", "UserError"]


class UserError(Exception):
    """A problem with the user's input; printed as one line, exit code 2."""


def _audit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", nargs=2, type=int, metavar=("IN", "OUT"),
                   help="audit one TernaryScaleTensor(IN, OUT)")
    p.add_argument("--preset", help="audit the whole text model of a preset (see arbitor.config.PRESETS)")
    p.add_argument("--group-size", type=int, default=64, help="scale-group size for --layer (default 64)")
    p.add_argument("--update-rule", default="bigint",
                   help="update rule of the ternary layers (bigint, legacy, flip, counter; default bigint)")
    p.add_argument("--counter-bits", type=int, default=4, help="counter bits of --update-rule counter (default 4)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def _audit_run(args: argparse.Namespace) -> int:
    from .kernel.ternary_scale import TernaryScaleTensor
    if args.preset is not None:
        if args.layer is not None:
            raise UserError("audit: give either --layer IN OUT or --preset NAME, not both")
        return _audit_preset(args.preset, args.json, args.update_rule, args.counter_bits)
    if args.layer is None:
        raise UserError("audit: give --layer IN OUT or --preset NAME")
    in_f, out_f = args.layer
    try:
        model = TernaryScaleTensor(in_f, out_f, group_size=args.group_size, seed=0, update=args.update_rule,
                                   counter_bits=args.counter_bits)
    except ValueError as exc:
        raise UserError(f"audit: {exc}") from None
    title = (f"ternary audit: TernaryScaleTensor({in_f}, {out_f}, group_size={args.group_size}, "
             f"update={args.update_rule!r})")
    return _print_audit(model, title, args.json)


def _print_audit(model, title: str, as_json: bool) -> int:
    report = ternary_audit(model)
    print(json.dumps(report, indent=2) if as_json else format_audit(report, title))
    return 0


def _audit_preset(name: str, as_json: bool, update_rule: str = "bigint", counter_bits: int = 4) -> int:
    from .config import ConfigError, preset
    from .model import ArbitorLM
    try:
        cfg = preset(name, update_rule=update_rule, counter_bits=counter_bits)
    except ConfigError as exc:
        raise UserError(f"audit: {exc}") from None
    with torch.device("meta"):  # shapes and dtypes are all the audit needs: no weights are drawn
        model = ArbitorLM(cfg)
    return _print_audit(model, f"ternary audit: preset {name!r} (d_model={cfg.d_model}, n_layers={cfg.n_layers}, "
                               f"vocab={cfg.vocab_size}, linear={cfg.linear}, update={cfg.update_rule}, "
                               f"embedding={cfg.embedding_mode})",
                        as_json)


# ----------------------------------------------------------------------------------------- train
def _number(kind, strict: bool):
    """argparse type: a finite ``kind`` (int/float) that is > 0 (``strict``) or >= 0."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a{'n' if kind is int else ''} {kind.__name__}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (strict and value == 0):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} 0, got {text}")
        return value
    return parse


def _positive(kind):
    return _number(kind, strict=True)


def _non_negative(kind):
    return _number(kind, strict=False)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``arbitor train`` and ``training/text.py``."""
    p.add_argument("--steps", type=_positive(int), default=1000, help="total optimisation steps (default 1000)")
    p.add_argument("--batch", type=_positive(int), default=16, help="sequences per step (default 16)")
    p.add_argument("--ctx", type=_positive(int), default=64, help="tokens per sequence (default 64)")
    p.add_argument("--eval-interval", type=int, default=250,
                   help="evaluate + checkpoint every N steps, 0 = only at the end (default 250)")
    p.add_argument("--eval-batches", type=_positive(int), default=8, help="validation batches per evaluation")
    p.add_argument("--run", default=None, help="run name under --runs-dir, or a path (default text-<timestamp>)")
    p.add_argument("--runs-dir", default="runs", help="directory holding runs (default ./runs)")
    p.add_argument("--text-data", default=None, metavar="PATH",
                   help="UTF-8 text file (default: the embedded Python standard-library docstring corpus)")
    p.add_argument("--max-chars", type=int, default=0, help="use only the first N characters of the text")
    p.add_argument("--vocab", choices=("byte", "char"), default="byte", help="token vocabulary (default byte)")
    p.add_argument("--preset", default=None,
                   help="model preset (default tiny, or the checkpoint's with --resume; see arbitor.config.PRESETS)")
    p.add_argument("--group-size", type=int, default=None, help="override the preset's BigInt scale-group size")
    p.add_argument("--strength", type=float, default=None, help="override ARB_BIGINT_CORR_STRENGTH for the model")
    p.add_argument("--embedding-mode", choices=("legacy", "bigint"), default=None,
                   help="sparse embedding training rule (default: the preset's, bigint)")
    p.add_argument("--update-rule", default=None,
                   help="dense-layer update rule: bigint (the spec's, default), legacy, flip or counter (see "
                        "arbitor.kernel.update_rules and docs/quality.md)")
    p.add_argument("--flip-rate", type=float, default=None, help="trit flip rate of --update-rule flip")
    p.add_argument("--counter-bits", type=int, default=None,
                   help="bits per weight of the packed counters of --update-rule counter (1, 2, 4 or 8)")
    p.add_argument("--counter-rate", type=float, default=None,
                   help="rungs per ballot per unit of row-RMS gradient, --update-rule counter")
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                   help="step-size schedule for AdamW lr and the counter/flip rates (default constant)")
    p.add_argument("--warmup-steps", type=int, default=0, help="cosine: linear warm-up steps (default 0)")
    p.add_argument("--min-rate-ratio", type=float, default=0.1, help="cosine: final factor (default 0.1)")
    p.add_argument("--backend", choices=("auto", "torch", "triton"), default=None,
                   help="ternary kernel backend (default: ARB_TERNARY_BACKEND or auto)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model init and the data order (default 0)")
    p.add_argument("--resume", action="store_true", help="continue --run from its checkpoint up to --steps")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def _run_path(args: argparse.Namespace, required: bool) -> "Path":
    from pathlib import Path
    if args.run is None:
        if required:
            raise UserError("--resume needs --run NAME")
        import time
        args.run = time.strftime("text-%Y%m%d-%H%M%S")
    run = Path(args.run)
    return run if (run.is_absolute() or len(run.parts) > 1) else Path(args.runs_dir) / run


def train_from_args(args: argparse.Namespace) -> int:
    """``arbitor train``: build the run, train with a progress bar, report where things are."""
    import torch

    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError
    from .kernel.ternary_audit import ternary_audit
    from .main import TrainConfig, build_trainer
    if args.eval_interval < 0:
        raise UserError(f"--eval-interval must be >= 0, got {args.eval_interval}")
    run_dir = _run_path(args, required=args.resume)
    try:
        tcfg = TrainConfig(steps=args.steps, batch=args.batch, ctx=args.ctx, eval_interval=args.eval_interval,
                           eval_batches=args.eval_batches, seed=args.seed, vocab=args.vocab,
                           text_data=args.text_data, max_chars=args.max_chars, schedule=args.schedule,
                           warmup_steps=args.warmup_steps, min_rate_ratio=args.min_rate_ratio)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    overrides = {"group_size": args.group_size, "strength": args.strength, "backend": args.backend,
                 "embedding_mode": args.embedding_mode, "update_rule": args.update_rule, "flip_rate": args.flip_rate,
                 "counter_bits": args.counter_bits, "counter_rate": args.counter_rate}
    if args.group_size is not None:
        overrides["embedding_group_size"] = args.group_size
    if not args.resume:
        overrides["seed"] = args.seed
    try:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        trainer = build_trainer(tcfg, run_dir, args.preset, overrides, resume=args.resume, device=device)
    except (DataError, ConfigError, CheckpointError) as exc:
        raise UserError(str(exc)) from None
    except (ValueError, RuntimeError) as exc:  # e.g. a backend that cannot run on this device
        raise UserError(" ".join(str(exc).split())) from None
    report = ternary_audit(trainer.model)
    print(f"run {run_dir}: preset {trainer.preset}, {report['logical_ternary_weights']:,} ternary weights, "
          f"{report['training_state_bytes']:,} B integer training state, "
          f"{report['trainable_float_params']:,} trainable float params; "
          f"{trainer.data.train.numel():,} train / {trainer.data.val.numel():,} val tokens; "
          f"starting at step {trainer.step} of {args.steps}", flush=True)
    if trainer.step >= args.steps:
        raise UserError(f"{run_dir} is already at step {trainer.step}; pass a larger --steps to continue it")
    result = trainer.fit(progress=not args.no_progress)
    print(f"done: step {trainer.step}, val_loss {result['val_loss']:.4f} nats/token, {result['val_bpb']:.4f} bits/byte; "
          f"{run_dir}/metrics.jsonl, {run_dir}/loss.png, {run_dir}/checkpoint.safetensors")
    return 0


# ----------------------------------------------------------------------------------------- sample
def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run name under --runs-dir, or a path to a run directory")
    p.add_argument("--runs-dir", default="runs", help="directory holding runs (default ./runs)")
    p.add_argument("--prompt", default="\n", help="text to continue (default a newline)")
    p.add_argument("--tokens", type=_positive(int), default=200, help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature, 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="sample from the k most likely tokens, 0 = all (default 40)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _sample_run(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import CheckpointError
    from .data import DataError
    from .main import load_run
    if args.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0, got {args.top_k}")
    run_dir = _run_path(args, required=True)
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
    sys.stdout.write(vocab.decode(out[0].tolist()) + "\n")
    return 0


# ----------------------------------------------------------------------------------------- pretrain
def _pretrain_args(p: argparse.ArgumentParser) -> None:
    from .pretrain import add_pretrain_arguments
    add_pretrain_arguments(p)


def _pretrain_run(args: argparse.Namespace) -> int:
    from .pretrain import pretrain_from_args
    return pretrain_from_args(args)


# ----------------------------------------------------------------------------------------- probe-memory
def _probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="model preset (default tiny; the spec's 3.12B path is '3b')")
    p.add_argument("--steps", type=_positive(int), default=3, help="training steps to probe (default 3)")
    p.add_argument("--batch", type=_positive(int), default=1, help="sequences per step (default 1)")
    p.add_argument("--ctx", type=_positive(int), default=4, help="tokens per sequence (default 4)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--json", dest="json_out", default=None, metavar="PATH", help="also write the numbers as JSON")


def _probe_run(args: argparse.Namespace) -> int:
    from .config import ConfigError, preset
    from .probe import probe_memory
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
    "train": ("train the ARB text model (pure ternary, integer-only state)", add_train_arguments, train_from_args),
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
