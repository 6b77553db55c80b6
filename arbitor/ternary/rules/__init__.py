"""Update rules: ``UpdateRule`` (``base.py``) and its two implementations, ``bigint`` and ``counter``.

``make_rule("counter", counter_bits=5, counter_rate=1.0)`` builds one; ``RULES`` maps each name to its
class and ``RULE_SETTINGS`` to the settings it takes (the config fields a model passes on).
"""
from __future__ import annotations

import inspect
from typing import Any

from .base import TernaryState, UpdateRule
from .bigint import BigIntRule
from .counter import CounterRule

__all__ = ["UpdateRule", "TernaryState", "BigIntRule", "CounterRule", "RULES", "RULE_SETTINGS", "make_rule"]

RULES: dict[str, type[UpdateRule]] = {BigIntRule.name: BigIntRule, CounterRule.name: CounterRule}
RULE_SETTINGS: dict[str, tuple[str, ...]] = {
    name: tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self") for name, cls in RULES.items()}

_REMOVED = {"legacy": "the dense T_accum/E_accum rule diverged in the quality study",
            "flip": "stateless trit flips did not close the gap in the quality study"}


def make_rule(name: str, **settings: Any) -> UpdateRule:
    """A new rule object ``name`` with its ``settings``; ``ValueError`` naming the problem otherwise."""
    if name in _REMOVED:
        raise ValueError(f"update_rule {name!r} was removed ({_REMOVED[name]}; docs/quality.md keeps its rows); "
                         f"choose one of {', '.join(RULES)}")
    if name not in RULES:
        raise ValueError(f"update_rule must be one of {', '.join(RULES)}, got {name!r}")
    unknown = sorted(set(settings) - set(RULE_SETTINGS[name]))
    if unknown:
        raise ValueError(f"update_rule {name!r} takes no setting {', '.join(unknown)} "
                         f"(its settings: {', '.join(RULE_SETTINGS[name]) or 'none'})")
    return RULES[name](**settings)
