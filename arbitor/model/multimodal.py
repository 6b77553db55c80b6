"""``MultimodalARB``: the ARB trunk over a shared vocabulary of bytes and VQ codes.

Pipeline of one non-text modality (image shown; audio frames and video frame patches are the same)::

    image [H, W] --data.patches.patchify--> patches [n, P]   (P = p*p pixels, centred to [-1, 1])
    patches --TernaryVQCodebook.quantize--> code idx [n]     (nearest code, squared distance; vq.py)
    token = offset + idx                                     (shared vocabulary: 256 bytes, then each
                                                              modality's K codes)
    tokens --ArbitorLM trunk--> h [n, D] --PatchDecoder--> reconstructed patches [n, P]

Training (one ``LossComponent`` per modality, ``arbitor/train/multimodal.py``) sums three losses whose
backward is one ballot in every ternary layer it reaches:

* ``codebook``: ``mse(codebook(idx), patches)`` -- the chosen codes are pulled toward their
  patches; its backward votes into the codebook's integer state only;
* ``recon``: ``mse(PatchDecoder(h), patches)`` -- the decoder reconstructs each patch from the
  hidden state at its code (which has seen that code and the codes before it);
* ``next``: cross-entropy of the shared text head predicting the next code token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .decoders import PatchDecoder
from .text import ArbitorLM
from .vq import TernaryVQCodebook

__all__ = ["ModalitySpec", "MultimodalARB"]


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

    def __init__(self, cfg: ModelConfig, specs: list[ModalitySpec], vq_update_rule: str = "bigint",
                 vq_group_size: int = 4) -> None:
        super().__init__(cfg)
        need = 256 + sum(s.num_codes for s in specs)
        if cfg.vocab_size != need:
            raise ValueError(f"vocab_size {cfg.vocab_size} != 256 bytes + {need - 256} codes")
        self.specs = {s.name: s for s in specs}
        self.vq_update_rule = vq_update_rule
        s0 = cfg.seed * 1000 + 50_000
        self.vq = nn.ModuleDict({s.name: TernaryVQCodebook(s.num_codes, s.patch_dim, vq_group_size,
                                                           update_rule=vq_update_rule, seed=s0 + i, init_var=0.25,
                                                           ballot_prior=cfg.ternary.ballot_prior)
                                 for i, s in enumerate(specs)})
        for i, s in enumerate(specs):
            self.decoders[s.name] = PatchDecoder(cfg, s0 + 100 + 7 * i, s.name, s.patch_dim)

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
