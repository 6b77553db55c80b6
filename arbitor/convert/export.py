"""``export`` / ``load_packed``: a ternarized model out of arbitor -- as a float model anyone can load, or as
arbitor's own integer state.

* ``format="dense"`` -- every ternary layer's ``W_eff = T * S`` in bf16 under the original parameter name
  (``<module>.weight``, transposed back to ``[in, out]`` for a converted ``Conv1D``), its frozen bias, and
  every other parameter and buffer of the model as it is: the original float architecture loads it with
  no arbitor installed (``model.load_state_dict(safetensors.torch.load_file(...))``). ``path`` is a
  directory: ``model.safetensors``, plus ``config.json`` when the model carries a transformers config, so
  ``AutoModelForCausalLM.from_pretrained(path)`` loads it.
* ``format="packed"`` -- arbitor's integer state (``T_packed``, ``E``, ``corr_accum``, ...) and the rest of
  the state dict, with the conversion settings in the header: ``load_packed(float_model, path)`` ternarizes
  a fresh copy of the same architecture with those settings and loads the state, bit for bit.

* ``format="bitnet"`` / ``format="gguf"`` -- transformers' bitnet quantization and llama.cpp's ``TQ2_0``
  (``formats.py``): exact only when arbitor's scale layout matches the format's, else approximated and
  reported.

``W_eff`` in bf16 is exact whenever ``S`` is a power of two (a freshly converted layer) and otherwise
rounded once (8 significant bits), like any bf16 checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..ternary.embedding import SparseTernaryEmbedding
from ..ternary.layer import TernaryScaleTensor
from .formats import ExportReport, export_bitnet, export_gguf, write_report
from .weights import dense_weight, ternary_modules
from .ternarize import ternarize

__all__ = ["export", "load_packed", "FORMATS"]

FORMATS = ("dense", "packed", "bitnet", "gguf")


@torch.no_grad()
def export(model: nn.Module, path: Union[str, Path], format: str = "dense") -> Union[Path, ExportReport]:
    """Write ``model`` (after ``ternarize`` and training) to the directory ``path`` (module doc); returns the
    weights file, or for ``bitnet`` / ``gguf`` an ``ExportReport`` (its ``file``, which layers are exact, each
    one's weight error; also written as ``export-report.json``, with a warning when approximate)."""
    if format not in FORMATS:
        raise ValueError(f"export: format must be one of {', '.join(FORMATS)}, got {format!r}")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"export: {out} is a file; give a directory")
    out.mkdir(parents=True, exist_ok=True)
    ternary = ternary_modules(model)
    if any(m.dirty for m in ternary.values()):
        raise RuntimeError("export: ballots are pending; call ternary_step(model) first")
    if format in ("bitnet", "gguf"):
        report = (export_bitnet if format == "bitnet" else export_gguf)(model, out)
        write_report(report, out)
        return report
    if format == "packed":
        layers = {n: {"group_size": m.group_size, "update_rule": m.update_rule,
                      "settings": m.rule.settings() if hasattr(m, "rule") else {}, "strength": m.strength,
                      "converted_from": getattr(m, "converted_from", None)} for n, m in ternary.items()}
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        file = out / "arbitor-packed.safetensors"
        save_file(tensors, str(file), metadata={"format": "arbitor-packed-1", "layers": json.dumps(layers)})
        return file
    tensors: dict[str, torch.Tensor] = {}
    prefixes = tuple(f"{n}." for n in ternary)
    for k, v in model.state_dict().items():
        if not k.startswith(prefixes):
            tensors[k] = v.detach().cpu().contiguous().clone()        # clone: tied tensors are saved once each
    for name, m in ternary.items():
        tensors[f"{name}.weight"] = dense_weight(m, torch.bfloat16).contiguous()
        if getattr(m, "bias", None) is not None:
            tensors[f"{name}.bias"] = m.bias.detach().cpu().clone()
    file = out / "model.safetensors"
    save_file(tensors, str(file), metadata={"format": "pt", "arbitor": "dense export of a ternary model"})
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "save_pretrained"):
        config.save_pretrained(out)
    return file


@torch.no_grad()
def load_packed(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Ternarize a fresh float ``model`` of the exported architecture with the recorded settings and load a
    ``format="packed"`` export into it (bit for bit); returns the model."""
    file = Path(path)
    if file.is_dir():
        file = file / "arbitor-packed.safetensors"
    from safetensors import safe_open
    with safe_open(str(file), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "arbitor-packed-1":
        raise ValueError(f"load_packed: {file} is not an arbitor packed export (format {meta.get('format')!r})")
    layers = json.loads(meta["layers"])
    for name, spec in layers.items():
        ternarize(model, include=[name], group_size=spec["group_size"], update_rule=spec["update_rule"],
                  strength=spec["strength"], tied="untie", embeddings=spec["converted_from"] == "Embedding",
                  **spec["settings"])
    missing = [n for n in layers
               if not isinstance(model.get_submodule(n), (TernaryScaleTensor, SparseTernaryEmbedding))]
    if missing:
        raise ValueError(f"load_packed: the model has no convertible module {missing[0]!r}: not the exported "
                         "architecture")
    model.load_state_dict({k: v for k, v in load_file(str(file)).items()}, strict=True)
    return model
