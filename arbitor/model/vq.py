"""Ternary VQ codebooks: patches of images, audio and video become tokens of the shared ARB stream.

``TernaryVQCodebook`` *is* a ``SparseTernaryEmbedding`` ``[K, P]`` (packed ternary rows, per-group
int8 exponents), so it has the same two integer update rules, both selectable (``update_rule=``):

* ``"legacy"``: ``T_accum`` int8 ``[K, P]`` / ``E_accum`` int16 ``[K, G]`` threshold flips -- the
  trits themselves move toward the patches (the spec's original sparse VQ tables);
* ``"bigint"``: ``corr_accum`` int64 ``[K, G]`` / ``step_counter`` int64 ``[K]`` -- the BigInt
  correlation port: ``T`` and ``E`` stay fixed, the group scales move.

``ternary_audit`` counts either set of buffers (they carry the standard names). Codes are
initialised from data (``init_from_data``): code ``k`` is a ternarised random training patch --
``T = sign(x)`` where ``|x - mean|`` is large enough, else 0, and ``E`` the rounded ``log2`` of the
group's mean magnitude -- so every code starts inside the data distribution (no dead codes at
step 0). This initialisation writes integers only.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ternary.embedding import SparseTernaryEmbedding
from ..ternary.format import pack_ternary
from ..ternary.scale import E_MAX, E_MIN

__all__ = ["TernaryVQCodebook", "code_usage"]


class TernaryVQCodebook(SparseTernaryEmbedding):
    """A ternary codebook ``[num_codes, dim]`` with integer-only state (module doc).

    Shapes: ``quantize(z [..., dim]) -> idx int64 [...]``; ``forward(idx [...]) -> [..., dim]`` (the
    chosen code vectors; their backward casts one ballot on the touched codes).
    """

    def init_from_data(self, samples: torch.Tensor, generator: Optional[torch.Generator] = None) -> None:
        """Set ``T``/``E`` of every code from a random training patch (integers only; module doc).

        ``samples``: float ``[M, dim]``, ``M >= 1``.
        """
        if samples.dim() != 2 or samples.shape[1] != self.dim or samples.shape[0] == 0:
            raise ValueError(f"init_from_data needs samples [M, {self.dim}], got {tuple(samples.shape)}")
        pick = torch.randint(0, samples.shape[0], (self.num_embeddings,), generator=generator)
        x = samples[pick].to(torch.float32).cpu()
        g = x.view(-1, self.n_groups, self.group_size)
        mag = g.abs()
        keep = mag >= 0.5 * mag.mean(-1, keepdim=True)                      # small entries -> 0 trit
        t = torch.where(keep, torch.sign(g), torch.zeros_like(g))
        nz = keep & (t != 0)
        mean_mag = (mag * nz).sum(-1) / nz.sum(-1).clamp_min(1)              # [K, G]
        E = torch.where(nz.any(-1), torch.log2(mean_mag.clamp_min(2.0 ** -20)).round(),
                        torch.full_like(mean_mag, -4.0))
        dev = self.T_packed.device
        self.T_packed.copy_(pack_ternary(t.reshape(-1, self.dim).to(torch.int8)).to(dev))
        self.E.copy_(E.clamp(E_MIN, E_MAX).to(torch.int8).to(dev))

    @torch.no_grad()
    def codes(self) -> torch.Tensor:
        """All code vectors ``T * S``: float32 ``[num_codes, dim]``."""
        return self.rows_weight(torch.arange(self.num_embeddings, device=self.T_packed.device))

    @torch.no_grad()
    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code (squared Euclidean distance) of each vector: ``z [..., dim]`` -> int64 ``[...]``."""
        c = self.codes()
        flat = z.reshape(-1, self.dim).to(torch.float32)
        d = (flat * flat).sum(1, keepdim=True) - 2 * flat @ c.t() + (c * c).sum(1).unsqueeze(0)
        return d.argmin(1).view(z.shape[:-1])


def code_usage(idx: torch.Tensor, num_codes: int) -> tuple[float, float]:
    """``(fraction of codes used, perplexity of the code histogram)`` of code ids ``idx [...]``."""
    counts = torch.bincount(idx.reshape(-1), minlength=num_codes).to(torch.float64)
    p = counts / counts.sum().clamp_min(1)
    ent = -(p[p > 0] * p[p > 0].log()).sum()
    return float((counts > 0).sum()) / num_codes, float(ent.exp())
