"""The ``arbitor`` command line.

Subcommands register themselves in ``_SUBCOMMANDS`` (name -> (add_arguments, run)).
``main`` turns expected user errors (bad paths, bad config values) into a single
line on stderr and exit code 2 instead of a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Optional, Sequence

from .kernel.ternary_audit import format_audit, ternary_audit

__all__ = ["main", "build_parser", "UserError"]


class UserError(Exception):
    """A problem with the user's input; printed as one line, exit code 2."""


def _audit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", nargs=2, type=int, metavar=("IN", "OUT"),
                   help="audit one TernaryScaleTensor(IN, OUT)")
    p.add_argument("--group-size", type=int, default=64, help="scale-group size for --layer (default 64)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def _audit_run(args: argparse.Namespace) -> int:
    from .kernel.ternary_scale import TernaryScaleTensor
    if args.layer is None:
        raise UserError("audit: give --layer IN OUT" + (" or --preset NAME" if "preset" in vars(args) else ""))
    in_f, out_f = args.layer
    try:
        model = TernaryScaleTensor(in_f, out_f, group_size=args.group_size, seed=0)
    except ValueError as exc:
        raise UserError(f"audit: {exc}") from None
    title = f"ternary audit: TernaryScaleTensor({in_f}, {out_f}, group_size={args.group_size})"
    return _print_audit(model, title, args.json)


def _print_audit(model, title: str, as_json: bool) -> int:
    report = ternary_audit(model)
    print(json.dumps(report, indent=2) if as_json else format_audit(report, title))
    return 0


_SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "audit": ("report logical weights, training-state bytes and float parameters", _audit_args, _audit_run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arbitor", description="pure ternary training with integer-only state")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, run) in _SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except UserError as exc:
        print(f"arbitor: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
