"""The multimodal task: text, code, image, audio and video through one ARB trunk (``arbitor pretrain``).

Every step

1. draws the step's modality ``m`` with probability ``weight[m] / sum(weights)`` (its own seeded
   ``torch.Generator``, checkpointed as ``rng.modality``; a modality of weight 0 is never drawn and
   **none of its data is loaded**, no codebook or decoder is built for it);
2. draws a batch of that modality (``rng.data.<m>``): ``[batch, ctx]`` byte windows (text, code) or
   ``[batch, ctx, P]`` patch windows (image, audio, video -- aligned to whole images / frames;
   ``data/modalities.py``);
3. trains that modality's ``LossComponent`` (integer weight 1: one ballot): text/code -- next-byte
   cross-entropy of the shared text head; image/audio/video -- the VQ losses of
   ``MultimodalARB.patch_losses`` (``codebook + recon + next``), routed to every layer.

The shared vocabulary is 256 bytes followed by ``codes`` VQ codes of each active patch modality in the
order image, audio, video.

Validation (at step 0, every ``eval_interval`` and at the end), logged flat in ``metrics.jsonl``:

* ``val/text/loss``, ``val/code/loss`` -- nats/token on fixed held-out windows;
* ``val/<m>/recon_mse`` -- decoder reconstruction error; ``val/<m>/vq_mse`` -- quantisation error of
  the nearest codes; ``val/<m>/code_usage`` -- fraction of the codebook used on the validation windows;
  ``val/<m>/code_perplexity``; ``val/<m>/next_loss`` -- next-code cross-entropy; ``val/<m>/baseline_mse``
  -- the error of always predicting the training set's mean patch (the level a decoder must beat).

Artifacts: ``image_recon.png`` (rows: original, nearest codes, decoder reconstruction of 16 validation
digits; when image is active).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..data import MODALITIES, PATCH_MODALITIES, TEXT_MODALITIES, Batch, PatchBatch, PatchDataset, unpatchify
from ..model.multimodal import ModalitySpec, MultimodalARB
from ..model.vq import code_usage
from ..ternary.embedding import EMBEDDING_RULES
from .components import LossComponent
from .settings import check_settings, setting
from .task import Task, to_device

__all__ = ["MultimodalConfig", "MultimodalTask", "modality_specs"]


@dataclass
class MultimodalConfig:
    text_weight: float = setting(1.0, "sampling weight of the text modality; 0 = off, loads none of its data", low=0.0)
    code_weight: float = setting(1.0, "sampling weight of the code modality; 0 = off, loads none of its data", low=0.0)
    image_weight: float = setting(1.0, "sampling weight of the image modality; 0 = off, loads none of its data",
                                  low=0.0)
    audio_weight: float = setting(1.0, "sampling weight of the audio modality; 0 = off, loads none of its data",
                                  low=0.0)
    video_weight: float = setting(1.0, "sampling weight of the video modality; 0 = off, loads none of its data",
                                  low=0.0)
    text_data: Optional[str] = setting(None, "UTF-8 text file (default: the standard-library docstring corpus)")
    code_data: Optional[str] = setting(None, "folder of .py files, or one UTF-8 file (default: the stdlib sources)")
    image_data: Optional[str] = setting(None, "folder of PNG/JPEG images (default: scikit-learn digits, or "
                                              "synthetic digits without it)")
    audio_data: Optional[str] = setting(None, "folder of integer-PCM .wav files (default: synthetic notes)")
    video_data: Optional[str] = setting(None, "folder of .npy clips or sub-folders of frames (default: moving "
                                              "digits)")
    codes: int = setting(64, "VQ codes per image/audio/video codebook", low=2, high=4096)
    vq_update_rule: str = setting("bigint", "VQ codebook update rule: BigInt corr_accum scales, or the spec's "
                                            "legacy T_accum/E_accum flips", choices=EMBEDDING_RULES)
    val_fraction: float = setting(0.1, "share of each modality held out for validation", low=0.001, high=0.5,
                                  flag=False)
    max_code_bytes: int = setting(2_000_000, "bytes of code read at most", positive=True, flag=False)

    def __post_init__(self) -> None:
        check_settings(self)
        if sum(self.weights.values()) <= 0:
            raise ValueError("every modality weight is 0: give at least one positive --<modality>-weight")

    @property
    def weights(self) -> dict[str, float]:
        return {m: float(getattr(self, f"{m}_weight")) for m in MODALITIES}

    @property
    def data(self) -> dict[str, Optional[str]]:
        return {m: getattr(self, f"{m}_data") for m in MODALITIES}

    @property
    def active(self) -> list[str]:
        """Modalities with weight > 0, in ``MODALITIES`` order."""
        return [m for m, w in self.weights.items() if w > 0]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def modality_specs(cfg: MultimodalConfig, datasets: dict[str, Any]) -> list[ModalitySpec]:
    """The VQ modalities of the shared vocabulary: bytes first, then each active patch modality's codes."""
    specs, offset = [], 256
    for m in PATCH_MODALITIES:
        if m in datasets:
            specs.append(ModalitySpec(m, cfg.codes, datasets[m].patch_dim, offset))
            offset += cfg.codes
    return specs


def _text_like_component(name: str) -> LossComponent:
    def fn(model: MultimodalARB, batch: Batch, shared: dict) -> torch.Tensor:
        return model.decoders["text"].loss(model.hidden(batch.x), batch.y)
    return LossComponent(name, fn, 1)


def _patch_component(name: str) -> LossComponent:
    def fn(model: MultimodalARB, batch: PatchBatch, shared: dict) -> torch.Tensor:
        out = model.patch_losses(name, batch.patches)
        shared.setdefault("parts", {})[name] = {k: out[k].detach() for k in ("codebook", "recon", "next")}
        return out["codebook"] + out["recon"] + out["next"]
    return LossComponent(name, fn, 1)


class MultimodalTask(Task):
    """One modality per step, drawn by weight (module doc). ``counts``: steps per modality in this process."""

    kind = "multimodal"

    def __init__(self, cfg: MultimodalConfig, datasets: dict[str, Any], seed: int) -> None:
        self.cfg = cfg
        self.datasets = datasets
        self.modalities = list(cfg.active)
        self.components = [(_text_like_component(m) if m in TEXT_MODALITIES else _patch_component(m))
                           for m in self.modalities]
        self.by_name = {c.name: c for c in self.components}
        w = torch.tensor([cfg.weights[m] for m in self.modalities], dtype=torch.float64)
        self.probs = w / w.sum()
        self.modality_generator = torch.Generator().manual_seed(seed + 7919)
        self.counts = {m: 0 for m in self.modalities}

    def sample_modality(self) -> str:
        """The next step's modality, drawn with probability ``weight / sum(weights)``."""
        i = int(torch.multinomial(self.probs, 1, generator=self.modality_generator))
        return self.modalities[i]

    @staticmethod
    def _to(batch: Any, device: torch.device) -> Any:
        if isinstance(batch, PatchBatch):
            return PatchBatch(to_device(batch.patches, device))
        return Batch(to_device(batch.x, device), to_device(batch.y, device))

    def next_batch(self, batch_size: int, device: torch.device) -> tuple[Any, list[LossComponent]]:
        m = self.sample_modality()
        self.counts[m] += 1
        return self._to(self.datasets[m].batch(batch_size), device), [self.by_name[m]]

    def batch_at(self, batch_size: int, device: torch.device, key: int) -> tuple[Any, list[LossComponent]]:
        gen = torch.Generator().manual_seed(key)
        m = self.modalities[int(torch.multinomial(self.probs, 1, generator=gen))]
        self.counts[m] += 1
        return self._to(self.datasets[m].batch(batch_size, "train", gen), device), [self.by_name[m]]

    def evaluate(self, model: nn.Module, batch_size: int, eval_batches: int, device: torch.device,
                 seed: int) -> dict[str, float]:
        res: dict[str, float] = {}
        for m in self.modalities:
            gen = torch.Generator().manual_seed(10_007 + seed)
            ds = self.datasets[m]
            if m in TEXT_MODALITIES:
                tot = 0.0
                for _ in range(eval_batches):
                    b = self._to(ds.batch(batch_size, "val", gen), device)
                    tot += float(model.decoders["text"].loss(model.hidden(b.x), b.y))
                res[f"val/{m}/loss"] = tot / eval_batches
                continue
            acc = {"recon_mse": 0.0, "vq_mse": 0.0, "next_loss": 0.0, "baseline_mse": 0.0}
            idxs = []
            mean_patch = ds.train.mean(0).to(device)
            for _ in range(eval_batches):
                b = self._to(ds.batch(batch_size, "val", gen), device)
                out = model.patch_losses(m, b.patches)
                acc["baseline_mse"] += float(F.mse_loss(mean_patch.expand_as(b.patches), b.patches))
                acc["recon_mse"] += float(out["recon"])
                acc["vq_mse"] += float(out["codebook"])
                acc["next_loss"] += float(out["next"])
                idxs.append(out["idx"].cpu())
            for k, v in acc.items():
                res[f"val/{m}/{k}"] = v / eval_batches
            usage, ppl = code_usage(torch.cat([i.reshape(-1) for i in idxs]), model.vq[m].num_embeddings)
            res[f"val/{m}/code_usage"] = usage
            res[f"val/{m}/code_perplexity"] = ppl
        return res

    def format_eval(self, metrics: dict[str, float]) -> str:
        return ", ".join(f"{k[4:]} {v:.4f}" for k, v in metrics.items())

    def rng_tensors(self) -> dict[str, torch.Tensor]:
        out = {"rng.modality": self.modality_generator.get_state()}
        out.update({f"rng.data.{m}": ds.generator.get_state() for m, ds in self.datasets.items()})
        return out

    def load_rng_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.modality_generator.set_state(tensors["rng.modality"])
        for m, ds in self.datasets.items():
            ds.generator.set_state(tensors[f"rng.data.{m}"])

    def config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def checkpoint_state(self) -> dict[str, Any]:
        return {"modalities": {m: dataclasses.asdict(s) for m, s in self._specs().items()}}

    def _specs(self) -> dict[str, ModalitySpec]:
        return {s.name: s for s in modality_specs(self.cfg, self.datasets)}

    def log_fields(self, components: list[LossComponent]) -> dict[str, Any]:
        return {"modality": components[0].name, "modality_counts": dict(self.counts)}

    def summary(self) -> str:
        return "modalities: " + ", ".join(f"{m} x{self.cfg.weights[m]:g} ({getattr(self.datasets[m], 'source', '')})"
                                          for m in self.modalities)

    @torch.no_grad()
    def artifacts(self, model: nn.Module, run_dir: Path, step: int, ctx: int, n: int = 16) -> Optional[Path]:
        """``<run>/image_recon.png``: original / nearest codes / decoder reconstruction of ``n`` validation images."""
        if "image" not in self.modalities:
            return None
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        ds: PatchDataset = self.datasets["image"]
        h, w, p = ds.item_shape
        per = (h // p) * (w // p)
        n = min(n, ds.val.shape[0] // per)
        device = next(iter(model.buffers())).device
        patches = ds.val[: n * per].to(device).unsqueeze(0)            # [1, n*per, P]
        was = model.training
        model.eval()
        rows = [patches[0]]
        vq = model.vq["image"]
        idx = vq.quantize(patches)
        rows.append(vq.codes()[idx[0]])
        recon = []
        win = max(per, ctx // per * per)              # windows of whole images, at most ~ctx patches
        for i in range(0, n * per, win):
            ci = vq.quantize(patches[:, i:i + win])
            recon.append(model.decoders["image"](model.hidden(ci + model.specs["image"].offset))[0])
        rows.append(torch.cat(recon)[: n * per])
        model.train(was)
        fig, axes = plt.subplots(3, n, figsize=(n * 0.8, 3 * 0.9), squeeze=False)
        for r, (row, label) in enumerate(zip(rows, ("original", "codes", "decoded"))):
            imgs = ((unpatchify(row.float().cpu(), h, w, p) + 1) / 2).clamp(0, 1)
            for j in range(n):
                ax = axes[r, j]
                ax.imshow(imgs[j].numpy(), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(label, fontsize=7)
        fig.suptitle(f"image reconstructions, step {step}", fontsize=8)
        path = run_dir / "image_recon.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

