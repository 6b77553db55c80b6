"""``Updater``: one ``step()`` for everything that trains in a model.

* ternary layers: ``ternary_step(model)`` folds the step's ballots (the rules' per-step part);
* float parameters (only the ``dense`` / ``bitnet`` baselines have any): AdamW, one step per step.

``set_rate_factor(f)`` is how the schedule reaches both: AdamW's lr becomes ``base_lr * f`` and every
ternary rule's step size ``base * f`` (``ternary.step.set_rate_factor``). ``state_tensors()`` /
``load_state_tensors()`` carry AdamW's state through a safetensors checkpoint (a pure ternary model has
none: its whole state is the model's integer buffers).
"""
from __future__ import annotations

import json
from typing import Optional

import torch
from torch import nn

from ..ternary.step import set_rate_factor, ternary_step

__all__ = ["Updater"]


class Updater:
    """The per-step update of ``model`` (module doc); ``lr``: AdamW's base learning rate for float parameters."""

    def __init__(self, model: nn.Module, lr: float) -> None:
        self.model = model
        self.base_lr = float(lr)
        params = [p for p in model.parameters() if p.is_floating_point() and p.requires_grad]
        self.optimizer: Optional[torch.optim.Optimizer] = (
            torch.optim.AdamW(params, lr=self.base_lr, weight_decay=0.0) if params else None)

    def set_rate_factor(self, factor: float) -> None:
        """This step's schedule factor for AdamW's lr and the ternary rules' step sizes."""
        set_rate_factor(self.model, factor)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.base_lr * factor

    def make_capturable(self) -> None:
        """Rebuild AdamW (before its first step) with ``capturable=True``, its step count on the device, so
        a CUDA graph can replay ``step()`` (``graph.py``)."""
        if self.optimizer is not None:
            if self.optimizer.state:
                raise RuntimeError("Updater.make_capturable(): AdamW has already stepped")
            params = self.optimizer.param_groups[0]["params"]
            self.optimizer = torch.optim.AdamW(params, lr=self.base_lr, weight_decay=0.0, capturable=True)

    def step(self) -> None:
        """After all of a step's backward passes: fold the ballots, step AdamW, clear the float grads."""
        ternary_step(self.model)
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], str]:
        """AdamW's state as flat tensors ``optim.<param index>.<key>`` and its param groups as JSON."""
        if self.optimizer is None:
            return {}, "[]"
        sd = self.optimizer.state_dict()
        tensors = {f"optim.{idx}.{k}": (v if isinstance(v, torch.Tensor) else torch.tensor(v))
                   for idx, st in sd["state"].items() for k, v in st.items()}
        return tensors, json.dumps(sd["param_groups"])

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], groups_json: str, device: torch.device) -> None:
        """Inverse of ``state_tensors`` (other keys of ``tensors`` are ignored)."""
        if self.optimizer is None:
            return
        groups = json.loads(groups_json or "[]")
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, key = k.split(".", 2)
                state.setdefault(int(idx), {})[key] = v.to(device) if key != "step" else v
        if groups:
            self.optimizer.load_state_dict({"state": state, "param_groups": groups})
