"""The ternary modules of a converted model, and each one's ``W_eff`` in the layout of the module it replaced
(what every export format starts from)."""
from __future__ import annotations

import torch
from torch import nn

from ..ternary.embedding import SparseTernaryEmbedding
from ..ternary.layer import TernaryScaleTensor

__all__ = ["ternary_modules", "dense_weight"]


def ternary_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{qualified name: module}`` of every ternary layer and table of ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (TernaryScaleTensor, SparseTernaryEmbedding))}


def dense_weight(m: nn.Module, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``W_eff`` of ``m`` in ``dtype`` on the CPU, in the original module's layout: ``[out, in]`` for a Linear,
    ``[in, out]`` for transformers' ``Conv1D``, ``[num_embeddings, dim]`` for a table."""
    if isinstance(m, SparseTernaryEmbedding):
        return m.rows_weight(torch.arange(m.num_embeddings, device=m.T_packed.device)).to(dtype).cpu()
    w = m.effective_weight(dtype).cpu()
    return w.t() if getattr(m, "converted_from", None) == "Conv1D" else w
