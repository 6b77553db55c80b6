"""Settings dataclasses that are also command-line flags: one declaration per setting.

A field declared with ``setting(default, help, ...)`` carries its help text and its valid range.
``check_settings(obj)`` validates an instance against them (``ValueError`` naming the field, its range
and the value), ``add_arguments(parser, cls)`` derives the ``--flag`` of every field (range checked at
parse time, same message), and ``from_args(cls, args)`` builds the instance back from the parsed
namespace. So a setting's name, default, help and bounds are written once, in its dataclass. A numeric
setting may also take a few ``words`` instead of a number (``counter_rate``: a float or ``"auto"``; its
type is then ``Union[float, str]``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from typing import Any, Optional, Sequence

__all__ = ["setting", "check_settings", "add_arguments", "from_args", "flag_name"]


def setting(default: Any, help: str, *, low: Optional[float] = None, high: Optional[float] = None,
            choices: Optional[Sequence[Any]] = None, flag: bool = True, positive: bool = False,
            words: Sequence[str] = ()) -> Any:
    """A dataclass field with its help text and bounds (``low <= v <= high``; ``positive``: ``v > 0``).

    ``flag=False`` keeps the field out of the command line; ``words``: strings a numeric field also accepts
    in place of a number (e.g. ``("auto",)``).
    """
    meta = {"help": help, "low": low, "high": high, "choices": tuple(choices) if choices else None, "flag": flag,
            "positive": positive, "words": tuple(words)}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _num(v: float) -> str:
    """``v`` for a help text: an exact power of two beyond 2**20 as ``2**k``, an integral value without decimals."""
    if v == int(v) and abs(v) > 2 ** 20 and (int(abs(v)) & (int(abs(v)) - 1)) == 0:
        return f"{'-' if v < 0 else ''}2**{int(abs(v)).bit_length() - 1}"
    return f"{int(v)}" if v == int(v) else f"{v:g}"


def _range_text(meta: dict) -> str:
    words = meta.get("words")
    if words:
        numbers = _range_text({**meta, "words": ()}) or "a number"
        return f"{numbers} or {' or '.join(words)}"
    if meta.get("choices"):
        return "one of " + ", ".join(map(str, meta["choices"]))
    low, high = meta.get("low"), meta.get("high")
    if meta.get("positive") and high is None:
        return "> 0"
    if meta.get("positive"):
        return f"in (0, {_num(high)}]"
    if low is not None and high is not None:
        return f"in [{_num(low)}, {_num(high)}]"
    if low is not None:
        return f">= {_num(low)}"
    if high is not None:
        return f"<= {_num(high)}"
    return ""


def _problem(meta: dict, value: Any) -> Optional[str]:
    """Why ``value`` breaks ``meta``'s bounds, or None."""
    if value is None:
        return None
    if meta.get("choices") and value not in meta["choices"]:
        return _range_text(meta)
    if meta.get("words") and isinstance(value, str):
        return None if value in meta["words"] else _range_text(meta)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "finite" + (f" and {_range_text(meta)}" if _range_text(meta) else "")
    low, high = meta.get("low"), meta.get("high")
    if (meta.get("positive") and value <= 0) or (low is not None and value < low) or (high is not None and value > high):
        return _range_text(meta)
    return None


def check_settings(obj: Any) -> None:
    """Raise ``ValueError("<flag> must be <range>, got <value>")`` for the first field out of its bounds."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        want = _base_type(hints.get(f.name), f.metadata.get("words", ()))
        if want is int and (isinstance(value, bool) or not isinstance(value, int)) and value is not None:
            raise ValueError(f"{flag_name(f.name)} must be an integer, got {value!r}")
        problem = _problem(f.metadata, value)
        if problem:
            raise ValueError(f"{flag_name(f.name)} must be {problem}, got {value!r}")


def _base_type(hint: Any, words: Sequence[str] = ()) -> Any:
    """``int`` for ``int`` and ``Optional[int]``; likewise float, str, bool; else None. With ``words``, the number
    type of ``Union[float, str]`` (and of ``Optional[...]`` of it)."""
    args = typing.get_args(hint)
    if args and (type(None) in args or (words and str in args)):       # Optional[X], Union[X, str]
        rest = [a for a in args if a is not type(None) and not (words and a is str)]
        hint = rest[0] if len(rest) == 1 else None
    return hint if hint in (int, float, str, bool) else None


def _parser_type(kind: Any, meta: dict, name: str):
    words = meta.get("words") or ()

    def parse(text: str):
        if text in words:
            return text
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}{''.join(f' or {w}' for w in words)}, "
                                             f"got {text!r}") from None
        problem = _problem(meta, value)
        if problem:
            raise argparse.ArgumentTypeError(f"must be {problem}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def add_arguments(parser: argparse.ArgumentParser, cls: type, defaults: Optional[dict[str, Any]] = None) -> None:
    """One ``--flag`` per ``setting`` field of ``cls`` (dataclass) with ``flag=True``, defaulting to the field's
    default (or to ``defaults[name]``, for a command whose default differs).

    Booleans become ``store_true`` flags; ``Optional`` fields default to ``None`` ("not given").
    """
    defaults = defaults or {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("flag", False):
            continue
        kind = _base_type(hints[f.name], meta.get("words", ()))
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for type {hints[f.name]}")
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        help_text = meta["help"] + (f"; {_range_text(meta)}" if _range_text(meta) and not meta.get("choices") else "")
        if default is not None and kind is not bool:
            help_text += f" (default {default})"
        if kind is bool:
            parser.add_argument(flag_name(f.name), action="store_true", default=default, help=help_text)
        elif meta.get("choices"):
            parser.add_argument(flag_name(f.name), choices=meta["choices"], default=default,
                                type=None if kind is str else kind, help=help_text)
        elif kind is str:
            parser.add_argument(flag_name(f.name), default=default, metavar="PATH" if "_data" in f.name else None,
                                help=help_text)
        else:
            parser.add_argument(flag_name(f.name), type=_parser_type(kind, meta, f.name), default=default,
                                metavar="N" if kind is int else "X", help=help_text)


def from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """``cls`` built from the parsed flags of its fields (those present in ``args``) plus ``extra``."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(extra)
    return cls(**values)
