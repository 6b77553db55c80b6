"""The ternary formats other runtimes read: transformers' ``bitnet`` quantization and GGUF ``TQ2_0``.

Both store a ternary matrix with fewer scales than arbitor (``W_eff = T * S``, one ``S`` per ``group_size``
weights of a row):

* ``bitnet`` (transformers' ``BitLinear``, ``quantization_config = {"quant_method": "bitnet", ...}``): the
  trits packed 4 per uint8 along the output dimension and one ``weight_scale`` per tensor, with
  ``y = (T @ x_q) / (weight_scale * x_scale)`` -- so ``weight_scale = 1 / s``. ``BitLinear`` also rounds
  its input to int8 per token (absmax), which no arbitor layer does: the exported model's logits drift
  even when its weights are exact. Only ``nn.Linear`` layers become ``BitLinear`` (a ternary layer
  converted from a ``Conv1D``, an embedding, or a layer whose ``out_features`` is not a multiple of 4 is
  written dense as its ``W_eff`` and listed in ``modules_to_not_convert``, as is every float ``Linear``).
* ``gguf`` ``TQ2_0`` (llama.cpp): blocks of 256 consecutive weights of a row with one fp16 scale
  ``d`` (``w = d * t``). A ternary layer whose ``in_features`` is a multiple of 256 is written as
  ``TQ2_0``; any other as ``F16`` ``W_eff``; norms and other float tensors as ``F32``.

**Exact or not.** The trits are always kept as they are; only the scales are re-fitted. When every
weight sharing an exported scale already has the same ``S`` (``bitnet``: one ``S`` per tensor; ``TQ2_0``:
``group_size`` a multiple of 256, or equal scales within each 256-block) the export is exact up to the
scale's rounding to the format's float (bf16 / fp16: none while ``S`` is a power of two, as right after
``ternarize``). Otherwise each exported scale is the least-squares one for the kept trits,
``s = sum |W_eff| / nnz(T)`` over the shared weights, and the export is an approximation: the returned
``ExportReport`` says which layers, with each one's relative weight error ``||W_out - W_eff|| / ||W_eff||``;
``logit_drift`` measures what that does to a model's logits and loss.

For a Llama model (``config.model_type == "llama"``) the GGUF file carries llama.cpp's tensor names,
the ``llama.*`` hyperparameters and the Q/K row permutation of ``convert_hf_to_gguf.py``; it has no
tokenizer metadata (arbitor does not know your tokenizer), so llama.cpp needs the ``tokenizer.ggml.*``
keys added (e.g. with ``gguf``'s ``gguf_new_metadata.py``) before it runs it. For other architectures the
file is a tensor container under the model's own parameter names.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..ternary.embedding import SparseTernaryEmbedding
from ..ternary.layer import TernaryScaleTensor
from .weights import dense_weight, ternary_modules

__all__ = [
    "GGUF_BLOCK",
    "ExportReport",
    "LayerExport",
    "export_bitnet",
    "export_gguf",
    "llama_qk_permute",
    "logit_drift",
    "pack_bitnet",
    "unpack_bitnet",
]

GGUF_BLOCK = 256


@dataclass
class LayerExport:
    name: str
    stored_as: str                    # "bitnet", "TQ2_0", "dense bf16", "F16", ...
    exact: bool
    rel_error: float                  # ||W_out - W_eff|| / ||W_eff||
    note: str = ""


@dataclass
class ExportReport:
    """What an export to a foreign format kept exactly and what it approximated."""

    format: str
    file: Path
    layers: list[LayerExport] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return all(r.exact for r in self.layers)

    def format_table(self) -> str:
        lines = [f"{'module':<44} {'stored as':<11} {'exact':<5} {'rel.err':>8}  note"]
        lines += [f"{r.name:<44} {r.stored_as:<11} {r.exact!s:<5} {r.rel_error:>8.2e}  {r.note}" for r in self.layers]
        approx = [r for r in self.layers if not r.exact]
        lines.append(f"{self.format}: {'exact' if not approx else f'{len(approx)} of {len(self.layers)} layers approximated'}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "file": str(self.file), "exact": self.exact,
                "layers": [dataclasses.asdict(r) for r in self.layers]}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _ls_scale(T: torch.Tensor, W: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Least-squares scale of ``W ~ s * T`` for fixed trits: ``sum |W| over T != 0 / nnz(T)`` (0 where none)."""
    nz = T != 0
    if dim is None:
        return (W.abs() * nz).sum() / nz.sum().clamp_min(1)
    return (W.abs() * nz).sum(dim) / nz.sum(dim).clamp_min(1)


# ------------------------------------------------------------------------------------------------ bitnet
def pack_bitnet(T: torch.Tensor) -> torch.Tensor:
    """transformers' ``pack_weights`` layout: ``T`` int ``[out, in]`` (``out % 4 == 0``) -> uint8 ``[out/4, in]``,
    row ``r + i * out/4`` of ``T + 1`` in bits ``2i`` of packed row ``r``."""
    n = T.shape[0] // 4
    u = (T.to(torch.int16) + 1).to(torch.uint8).reshape(4, n, *T.shape[1:])
    return u[0] | (u[1] << 2) | (u[2] << 4) | (u[3] << 6)


def unpack_bitnet(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_bitnet``: int8 ``[4 * rows, in]``."""
    return torch.cat([((packed >> (2 * i)) & 3).to(torch.int8) - 1 for i in range(4)], 0)


@torch.no_grad()
def export_bitnet(model: nn.Module, path: Path, dtype: torch.dtype | None = None) -> ExportReport:
    """Write a ``from_pretrained``-loadable directory in transformers' bitnet layout (module doc)."""
    from safetensors.torch import save_file
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise ValueError("export(format='bitnet'): the model carries no transformers config; bitnet is a "
                         "transformers quantization (use format='dense' or 'gguf')")
    dtype = dtype or getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    ternary = ternary_modules(model)
    report = ExportReport("bitnet", path / "model.safetensors")
    tensors: dict[str, torch.Tensor] = {}
    prefixes = tuple(f"{n}." for n in ternary)
    for k, v in model.state_dict().items():
        if not k.startswith(prefixes):
            tensors[k] = v.detach().cpu().contiguous().clone()
    not_converted = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n]
    for name, m in ternary.items():
        packable = (isinstance(m, TernaryScaleTensor) and getattr(m, "converted_from", "Linear") == "Linear"
                    and m.out_features % 4 == 0)
        if not packable:
            w = dense_weight(m)
            tensors[f"{name}.weight"] = w.to(dtype).contiguous()
            not_converted.append(name)
            why = "not an nn.Linear in the original model" if isinstance(m, SparseTernaryEmbedding) or \
                getattr(m, "converted_from", "") != "Linear" else "out_features not a multiple of 4"
            report.layers.append(LayerExport(name, f"dense {str(dtype).removeprefix('torch.')}", True,
                                             _rel(w.to(dtype).float(), w), why))
        else:
            T = m.ternary().cpu()
            W = m.effective_weight(torch.float32).cpu()
            S = m.scale().cpu()
            one = bool((S == S.flatten()[0]).all())
            s = S.flatten()[0] if one else _ls_scale(T, W)
            inv = (1.0 / s.clamp_min(1e-30)).to(dtype)
            tensors[f"{name}.weight"] = pack_bitnet(T).contiguous()
            tensors[f"{name}.weight_scale"] = inv.reshape(1).contiguous()
            out = T.float() / inv.float()
            err = _rel(out, W)
            report.layers.append(LayerExport(name, "bitnet", one, err, ("" if err == 0 else "scale rounded to "
                                             f"{dtype}") if one else "per-group scales -> one least-squares scale"))
        if getattr(m, "bias", None) is not None:
            tensors[f"{name}.bias"] = m.bias.detach().cpu().to(dtype).clone()
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(report.file), metadata={"format": "pt", "arbitor": "bitnet export of a ternary model"})
    config.save_pretrained(path)
    cfg_file = path / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": "bitlinear",
                                  "quantization_mode": "offline", "modules_to_not_convert": sorted(not_converted),
                                  "use_rms_norm": False, "rms_norm_eps": 1e-6}
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return report


# -------------------------------------------------------------------------------------------------- gguf
def llama_qk_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's row order for a Llama q / k projection (``convert_hf_to_gguf.py``'s ``permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tq2_0(T: torch.Tensor, S: torch.Tensor, W: torch.Tensor, group_size: int):
    """``(bytes uint8 [out, in/256*66], W_out float32, exact)``: one fp16 scale per 256-block of ``T``."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants
    out, K = T.shape
    nb = K // GGUF_BLOCK
    Sw = S.repeat_interleave(group_size, dim=1).reshape(out, nb, GGUF_BLOCK)   # each weight's S
    Tb = T.reshape(out, nb, GGUF_BLOCK)
    Wb = W.reshape(out, nb, GGUF_BLOCK)
    uniform = bool((Sw == Sw[..., :1]).all())
    d = Sw[..., 0] if uniform else _ls_scale(Tb, Wb, dim=-1)
    d16 = d.to(torch.float16).to(torch.float32)                                 # what the file stores
    vals = (Tb.float() * d16[..., None]).reshape(out, K)
    # gguf's own quantizer: d = max|x| = d16 per block, round(x / d) = T: the exact trits and scale
    data = quants.quantize(vals.numpy().astype(np.float32), GGMLQuantizationType.TQ2_0)
    return data, vals, uniform


@torch.no_grad()
def export_gguf(model: nn.Module, path: Path) -> ExportReport:
    """Write ``model.gguf`` (module doc)."""
    import gguf
    import numpy as np
    config = getattr(model, "config", None)
    llama = getattr(config, "model_type", None) == "llama"
    arch = "llama" if llama else (getattr(config, "model_type", None) or "arbitor")
    path.mkdir(parents=True, exist_ok=True)
    report = ExportReport("gguf", path / "model.gguf")
    writer = gguf.GGUFWriter(str(report.file), arch)
    writer.add_name(type(model).__name__)
    tmap = None
    if llama:
        c = config
        writer.add_context_length(c.max_position_embeddings)
        writer.add_embedding_length(c.hidden_size)
        writer.add_block_count(c.num_hidden_layers)
        writer.add_feed_forward_length(c.intermediate_size)
        writer.add_head_count(c.num_attention_heads)
        writer.add_head_count_kv(c.num_key_value_heads)
        writer.add_layer_norm_rms_eps(c.rms_norm_eps)
        theta = getattr(c, "rope_theta", None) or (getattr(c, "rope_parameters", None) or {}).get("rope_theta")
        if theta:
            writer.add_rope_freq_base(float(theta))
        writer.add_vocab_size(c.vocab_size)
        writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
        tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    writer.add_string("arbitor.export", "ternary model; trits exact, scales per the arbitor export report")
    ternary = ternary_modules(model)
    prefixes = tuple(f"{n}." for n in ternary)
    items: list[tuple[str, torch.Tensor, nn.Module | None, str | None]] = []
    for k, v in model.state_dict().items():
        if not k.startswith(prefixes):
            items.append((k, v, None, None))
    for name, m in ternary.items():
        items.append((f"{name}.weight", None, m, name))
        if getattr(m, "bias", None) is not None:
            items.append((f"{name}.bias", m.bias, None, None))
    for key, v, m, mname in items:
        gname = key
        if tmap is not None:
            gname = tmap.get_name(key, try_suffixes=(".weight", ".bias"))
            if gname is None:
                continue                                   # e.g. rotary inv_freq buffers: llama.cpp recomputes
        perm = None
        if llama and key.endswith(("q_proj.weight", "k_proj.weight")):
            perm = config.num_attention_heads if "q_proj" in key else config.num_key_value_heads
        if m is None:
            arr = v.detach().float().cpu()
            if perm:
                arr = llama_qk_permute(arr, perm)
            if arr.dim() >= 2 and arr.shape[0] * arr.shape[-1] > 1:
                writer.add_tensor(gname, arr.to(torch.float16).numpy())
            else:
                writer.add_tensor(gname, arr.numpy().astype(np.float32))
            continue
        if isinstance(m, TernaryScaleTensor) and m.in_features % GGUF_BLOCK == 0 \
                and getattr(m, "converted_from", "Linear") == "Linear":
            T, S, W = m.ternary().cpu(), m.scale().cpu(), m.effective_weight(torch.float32).cpu()
            if perm:
                T, S, W = (llama_qk_permute(x, perm) for x in (T, S, W))
            data, vals, uniform = _tq2_0(T, S, W, m.group_size)
            writer.add_tensor(gname, data, raw_dtype=gguf.GGMLQuantizationType.TQ2_0)
            err = _rel(vals, W)
            note = ("" if err == 0 else "scale rounded to fp16") if uniform else f"group_size {m.group_size}: scales differ within 256-blocks -> one " \
                                      "least-squares fp16 scale per block"
            report.layers.append(LayerExport(mname, "TQ2_0", uniform, err, note))
        else:
            W = dense_weight(m)
            if perm:
                W = llama_qk_permute(W, perm)
            writer.add_tensor(gname, W.to(torch.float16).numpy())
            err = _rel(W.to(torch.float16).float(), W)
            report.layers.append(LayerExport(mname, "F16", True, err,
                                             "in_features not a multiple of 256 (or not a Linear): dense W_eff, fp16-rounded"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return report


def write_report(report: ExportReport, path: Path) -> None:
    (path / "export-report.json").write_text(json.dumps(report.to_dict(), indent=2))
    if not report.exact:
        approx = [r.name for r in report.layers if not r.exact]
        warnings.warn(f"export(format={report.format!r}) is an approximation for {len(approx)} layer(s) "
                      f"({approx[0]}, ...): arbitor's scale layout does not match the format's; see "
                      f"{path / 'export-report.json'} and measure with arbitor.convert.logit_drift", stacklevel=3)


@torch.no_grad()
def logit_drift(reference: nn.Module, exported: nn.Module, input_ids: torch.Tensor) -> dict[str, float]:
    """Logit and next-token loss drift of ``exported`` against ``reference`` on ``input_ids [B, L]``:
    max and relative (Frobenius) logit difference, both losses and their difference (nats/token)."""
    a = reference(input_ids=input_ids).logits.float()
    b = exported(input_ids=input_ids).logits.float()
    tgt = input_ids[:, 1:].reshape(-1)

    def loss(x):
        return float(nn.functional.cross_entropy(x[:, :-1].reshape(-1, x.shape[-1]), tgt))
    la, lb = loss(a), loss(b)
    return {"max_abs_logit": float((a - b).abs().max()), "rel_logit": _rel(b, a), "loss_reference": la,
            "loss_exported": lb, "loss_drift": lb - la}
