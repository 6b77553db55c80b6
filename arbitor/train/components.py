"""Loss components and ballot routing.

A ``LossComponent`` is a named loss term with an integer weight and an optional route. In a step, a
component's backward is **one ballot** in every ternary layer it reaches: each scale group receives the
component's *own* sign vote ``-sum_k sign(dL_c/dW[k]) * T[k]`` -- the sign of that component's gradient
alone, never of a weighted float sum of gradients. An integer weight ``w`` casts ``w`` ballots of that
component (``w`` backward passes); ``w = 0`` computes and logs the loss without voting. So for one layer
and one step the update is::

    corr_accum += sum_c  w_c * vote_c          step_counter += sum_c w_c

(up to the online rule: a later ballot's ``grad_x`` already sees the scales moved by the earlier ones).
Two components pulling a group in opposite directions with equal weights cancel exactly
(``corr_accum`` unchanged, ``step_counter += 2``) however different their loss magnitudes are; with
weights 2 and 1 the net vote is the first component's vote. A component's ``modules`` (name prefixes,
e.g. ``("decoders.text",)``) limits which layers its ballots reach (``route_ballots``); layers outside
the route neither vote nor count the ballot.

Float layers of the ``dense``/``bitnet`` baselines have no ballots: their ``.grad`` accumulates
``w_c * dL_c/dW`` over the components' backward passes and AdamW steps once per step.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from ..ternary.step import ternary_layers

__all__ = ["LossComponent", "route_ballots"]


@dataclass
class LossComponent:
    """A named loss term with an integer weight (number of ballots) and an optional route.

    ``fn(model, batch, shared) -> scalar loss``; ``shared`` is a per-step dict the components of one
    step may use to share a forward pass (e.g. ``shared["hidden"]``) or to report loss parts
    (``shared["parts"][name] = {part: 0-d tensor}``, logged as ``parts/<name>/<part>``).
    """

    name: str
    fn: Callable[[nn.Module, Any, dict], torch.Tensor]
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


@contextlib.contextmanager
def route_ballots(model: nn.Module, component: Optional[LossComponent] = None) -> Iterator[list[str]]:
    """Within the block, only the ternary layers on ``component``'s route cast ballots.

    Yields the names of the voting layers; every layer votes again afterwards. Layers off the route
    still pass ``grad_x`` on. ``component=None`` lets every layer vote.
    """
    layers = set(ternary_layers(model))
    voting = []
    try:
        for name, module in model.named_modules():
            if module in layers:
                on = component is None or component.routes(name)
                module.set_voting(on)
                if on:
                    voting.append(name)
        yield voting
    finally:
        for module in layers:
            module.set_voting(True)
