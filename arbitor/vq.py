"""Ternary VQ tables: patches of images, audio and video become tokens of the shared ARB stream.

Pipeline of one non-text modality (image shown; audio frames and video frame patches are the same)::

    image [H, W] --patchify--> patches [n, P]           (P = p*p pixels, centred to [-1, 1])
    patches --TernaryVQCodebook.quantize--> code idx [n] (nearest code, squared distance)
    token = offset + idx                                (shared vocabulary: 256 bytes, then each
                                                         modality's K codes)
    tokens --ArbitorLM trunk--> h [n, D] --PatchDecoder--> reconstructed patches [n, P]

Training (one ``LossComponent`` per modality, see ``arbitor/pretrain.py``) sums three losses whose
backward is one ballot in every ternary layer it reaches:

* ``codebook``: ``mse(codebook(idx), patches)`` -- the chosen codes are pulled toward their
  patches; its backward votes into the codebook's integer state only;
* ``recon``: ``mse(PatchDecoder(h), patches)`` -- the decoder reconstructs each patch from the
  hidden state at its code (which has seen that code and the codes before it);
* ``next``: cross-entropy of the shared text head predicting the next code token.

``TernaryVQCodebook`` *is* a ``SparseTernaryEmbedding`` ``[K, P]`` (packed ternary rows, per-group
int8 exponents), so it has the same two integer training modes, both selectable (``mode=``):

* ``"legacy"``: ``T_accum`` int8 ``[K, P]`` / ``E_accum`` int16 ``[K, G]`` threshold flips -- the
  trits themselves move toward the patches (the spec's original sparse VQ tables);
* ``"bigint"``: ``corr_accum`` int64 ``[K, G]`` / ``step_counter`` int64 ``[K]`` -- the BigInt
  correlation port: ``T`` and ``E`` stay fixed, the group scales move.

``ternary_audit`` counts either set of buffers (they carry the standard names). Codes are
initialised from data (``init_from_data``): code ``k`` is a ternarised random training patch --
``T = sign(x)`` where ``|x - mean| `` is large enough, else 0, and ``E`` the rounded ``log2`` of the
group's mean magnitude -- so every code starts inside the data distribution (no dead codes at
step 0). This initialisation writes integers only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .components import RMSNorm, make_linear
from .config import ModelConfig
from .decoders import Decoder
from .embedding import SparseTernaryEmbedding
from .kernel.bigint_scale import E_MAX, E_MIN
from .kernel.packing import pack_ternary
from .model import ArbitorLM

__all__ = ["TernaryVQCodebook", "PatchDecoder", "ModalitySpec", "MultimodalARB", "patchify", "unpatchify",
           "frame_audio", "code_usage"]


# ----------------------------------------------------------------------------------------- patches
def patchify(frames: torch.Tensor, p: int) -> torch.Tensor:
    """``frames [N, H, W]`` -> patches ``[N * (H/p) * (W/p), p*p]`` (frame by frame, raster order)."""
    n, h, w = frames.shape
    if h % p or w % p:
        raise ValueError(f"frame size {h}x{w} is not a multiple of the patch size {p}")
    x = frames.reshape(n, h // p, p, w // p, p).permute(0, 1, 3, 2, 4)
    return x.reshape(-1, p * p).contiguous()


def unpatchify(patches: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """Inverse of ``patchify``: ``[N * (h/p) * (w/p), p*p]`` -> ``[N, h, w]``."""
    x = patches.reshape(-1, h // p, w // p, p, p).permute(0, 1, 3, 2, 4)
    return x.reshape(-1, h, w)


def frame_audio(clips: list[torch.Tensor], frame: int) -> torch.Tensor:
    """Audio clips -> non-overlapping frames ``[n_frames, frame]`` (each clip's tail shorter than a frame dropped)."""
    out = [c[: (c.numel() // frame) * frame].reshape(-1, frame) for c in clips if c.numel() >= frame]
    if not out:
        raise ValueError(f"no audio clip has at least one frame of {frame} samples")
    return torch.cat(out)


def code_usage(idx: torch.Tensor, num_codes: int) -> tuple[float, float]:
    """``(fraction of codes used, perplexity of the code histogram)`` of code ids ``idx [...]``."""
    counts = torch.bincount(idx.reshape(-1), minlength=num_codes).to(torch.float64)
    p = counts / counts.sum().clamp_min(1)
    ent = -(p[p > 0] * p[p > 0].log()).sum()
    return float((counts > 0).sum()) / num_codes, float(ent.exp())


# ----------------------------------------------------------------------------------------- codebook
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


# ----------------------------------------------------------------------------------------- decoder
class PatchDecoder(Decoder):
    """Reconstructs a patch from the hidden state at its code: ``h [B, T, D] -> [B, T, patch_dim]``.

    ``RMSNorm`` then a ternary ``[D] -> [patch_dim]`` projection (``cfg.linear``); ``loss`` is the
    mean squared error against the true patches ``[B, T, patch_dim]``.
    """

    def __init__(self, cfg: ModelConfig, seed: int, modality: str, patch_dim: int) -> None:
        super().__init__()
        self.modality = modality
        self.patch_dim = patch_dim
        self.norm = RMSNorm()
        self.head = make_linear(cfg, cfg.d_model, patch_dim, seed)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(h))

    def loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self(h).float(), targets.float())


# ----------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ModalitySpec:
    """A non-text modality of the shared stream: ``num_codes`` tokens from ``offset``, patches of ``patch_dim``."""

    name: str
    num_codes: int
    patch_dim: int
    offset: int


class MultimodalARB(ArbitorLM):
    """``ArbitorLM`` over the shared vocabulary plus one VQ codebook and one patch decoder per modality.

    ``cfg.vocab_size`` must be ``256 + sum(num_codes)`` (bytes first, then each modality's codes at
    its ``offset``). ``self.vq[name]`` is the codebook, ``self.decoders[name]`` the patch decoder;
    the trunk, the embedding and the text head are shared by all modalities.
    """

    def __init__(self, cfg: ModelConfig, specs: list[ModalitySpec], vq_mode: str = "bigint",
                 vq_group_size: int = 4) -> None:
        super().__init__(cfg)
        need = 256 + sum(s.num_codes for s in specs)
        if cfg.vocab_size != need:
            raise ValueError(f"vocab_size {cfg.vocab_size} != 256 bytes + {need - 256} codes")
        self.specs = {s.name: s for s in specs}
        self.vq_mode = vq_mode
        s0 = cfg.seed * 1000 + 50_000
        self.vq = nn.ModuleDict({s.name: TernaryVQCodebook(s.num_codes, s.patch_dim, vq_group_size, mode=vq_mode,
                                                           seed=s0 + i, init_var=0.25)
                                 for i, s in enumerate(specs)})
        for i, s in enumerate(specs):
            self.decoders[s.name] = PatchDecoder(cfg, s0 + 100 + 7 * i, s.name, s.patch_dim)
            if vq_mode == "bigint" and cfg.ballot_prior:
                self.vq[s.name].step_counter.fill_(cfg.ballot_prior)

    def patch_losses(self, name: str, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of one modality's patches ``[B, T, P]``: ``codebook``, ``recon``, ``next`` (module doc)
        plus the detached ``idx [B, T]`` and ``recon_patches [B, T, P]``."""
        spec = self.specs[name]
        vq = self.vq[name]
        idx = vq.quantize(patches)
        q = vq(idx)
        tokens = idx + spec.offset
        h = self.hidden(tokens)
        dec = self.decoders[name]
        recon = dec(h).float()
        logits = self.decoders["text"](h[:, :-1]).float()
        nxt = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        return {"codebook": F.mse_loss(q, patches), "recon": F.mse_loss(recon, patches), "next": nxt,
                "idx": idx, "recon_patches": recon.detach()}
