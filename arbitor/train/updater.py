"""``Updater``: one ``step()`` for everything that trains in a model.

* ternary layers: ``ternary_step(model)`` folds the step's ballots (the rules' per-step part);
* float parameters (only the ``dense`` / ``bitnet`` baselines have any): AdamW, one step per step -- betas
  ``(0.9, beta2)``, decoupled weight decay on the parameters of 2 or more dimensions only (nanoGPT's rule:
  matrices and embeddings decay, norms and biases do not), the float gradients' global L2 norm clipped to
  ``grad_clip`` first when it is > 0 (on the device: no host sync, so a CUDA graph can replay it). On CUDA it
  is torch's fused AdamW (one kernel for all parameters, the fast form the speed baselines use). Its step count
  lives on the device whether or not the step is captured, so an eager step and a graph replay of it run the same
  kernel on the same numbers: bit-identical. (The foreach AdamW it replaced computes its bias corrections on the
  host when not capturable and on the device when capturable, which differ in the last bits.)

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

#: AdamW param-group keys that choose how it computes, not what (kept from the running optimizer on load)
_IMPLEMENTATION = ("fused", "capturable", "foreach", "differentiable")


class Updater:
    """The per-step update of ``model`` (module doc); ``lr``: AdamW's base learning rate for float parameters,
    ``beta2`` / ``weight_decay`` / ``grad_clip`` its other settings (``TrainConfig``; the defaults are torch's
    AdamW without decay or clipping)."""

    def __init__(self, model: nn.Module, lr: float, beta2: float = 0.999, weight_decay: float = 0.0,
                 grad_clip: float = 0.0) -> None:
        self.model = model
        self.base_lr = float(lr)
        self.betas = (0.9, float(beta2))
        self.weight_decay = float(weight_decay)
        self.grad_clip = float(grad_clip)
        self.params = [p for p in model.parameters() if p.is_floating_point() and p.requires_grad]
        self.optimizer: Optional[torch.optim.Optimizer] = self._adamw() if self.params else None

    def _param_groups(self) -> list[dict]:
        """One group without weight decay (the parameters' order); with decay, the parameters of >= 2 dimensions
        decay and the others (if any) form a second group without it."""
        if not self.weight_decay:
            return [{"params": self.params, "weight_decay": 0.0}]
        decay = [p for p in self.params if p.dim() >= 2]
        rest = [p for p in self.params if p.dim() < 2]
        return [g for g in ({"params": decay, "weight_decay": self.weight_decay},
                            {"params": rest, "weight_decay": 0.0}) if g["params"]]

    def _adamw(self, capturable: bool = False) -> torch.optim.Optimizer:
        fused = all(p.is_cuda for p in self.params) or None        # None: torch's default (foreach / for-loop)
        return torch.optim.AdamW(self._param_groups(), lr=self.base_lr, betas=self.betas, capturable=capturable,
                                 fused=fused)

    def set_rate_factor(self, factor: float) -> None:
        """This step's schedule factor for AdamW's lr and the ternary rules' step sizes."""
        set_rate_factor(self.model, factor)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.base_lr * factor

    def make_capturable(self) -> None:
        """Rebuild AdamW (before its first step) with ``capturable=True``, so a CUDA graph can replay ``step()``
        (``graph.py``); fused on CUDA, it runs the same kernel as the eager step."""
        if self.optimizer is not None:
            if self.optimizer.state:
                raise RuntimeError("Updater.make_capturable(): AdamW has already stepped")
            self.optimizer = self._adamw(capturable=True)

    def step(self) -> None:
        """After all of a step's backward passes: fold the ballots, clip the float grads (``grad_clip > 0``), step
        AdamW, clear the float grads."""
        ternary_step(self.model)
        if self.optimizer is not None:
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
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
            # the saved hyperparameters, this optimizer's implementation: a checkpoint of a graphed CUDA run
            # (capturable, fused) resumes in an eager or CPU run and the other way round
            for saved, now in zip(groups, self.optimizer.param_groups):
                saved.update({k: now[k] for k in _IMPLEMENTATION if k in now})
            self.optimizer.load_state_dict({"state": state, "param_groups": groups})
