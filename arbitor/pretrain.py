"""Multimodal pretraining: text, code, image, audio and video through one ARB trunk.

Built on ``main.py``'s machinery (``Trainer``, ``LossComponent``, ``prepare_ternary_backward``,
``ternary_step``): every step

1. draws the step's modality ``m`` with probability ``weight[m] / sum(weights)`` (its own seeded
   ``torch.Generator``; a modality of weight 0 is never drawn and **none of its data is loaded**,
   no codebook or decoder is built for it);
2. draws a batch of that modality: ``[batch, ctx]`` byte windows (text, code) or ``[batch, ctx, P]``
   patch windows (image, audio, video -- aligned to whole images / frames);
3. computes that modality's ``LossComponent`` (one per active modality, integer weight 1 ballot):
   text/code -- next-byte cross-entropy of the shared text head; image/audio/video -- the VQ losses of
   ``vq.MultimodalARB.patch_losses`` (``codebook + recon + next``), routed to every layer;
4. ``prepare_ternary_backward`` + backward (the votes stream into the integer state), then
   ``ternary_step(model)``.

The shared vocabulary is 256 bytes followed by ``codes`` VQ codes of each active patch modality in the
order image, audio, video.

Patch layouts: image 8x8 digits, 4x4 patches (P=16, 4 tokens per image); audio 8 kHz, frames of 16
samples (P=16); video 16x16 frames, 4x4 patches (P=16, 16 tokens per frame). Pixel values ``v`` in [0, 1]
become ``2v - 1``; audio samples stay in [-1, 1].

Validation (``eval_interval``, at step 0 and at the end), logged flat in ``metrics.jsonl``:

* ``val/text/loss``, ``val/code/loss`` -- nats/token on fixed held-out windows;
* ``val/<m>/recon_mse`` -- decoder reconstruction error; ``val/<m>/vq_mse`` -- quantisation error of
  the nearest codes; ``val/<m>/code_usage`` -- fraction of the codebook used on the validation windows;
  ``val/<m>/code_perplexity``; ``val/<m>/next_loss`` -- next-code cross-entropy; ``val/<m>/baseline_mse``
  -- the error of always predicting the training set's mean patch (the level a decoder must beat).

Run directory: ``metrics.jsonl``, ``loss.png``, ``image_recon.png`` (rows: original, nearest codes,
decoder reconstruction of 16 validation digits; when image is active), ``config.json`` and
``checkpoint.safetensors`` (every ``save_interval`` steps and at the end, unless ``no_save``).
With ``no_save`` the spec's memory lines are printed (``logical_ternary_weights``,
``training_state_mb``, ``after_cuda_mb``, then ``step i alloc_mb A reserved_mb R peak_mb P`` per step),
measured like ``probe.py``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from .checkpoint import CHECKPOINT_NAME, atomic_write_bytes, save_checkpoint
from .config import ConfigError, preset
from .data import Batch, ByteVocab, DataError, TextDataset, load_text
from .kernel.ternary_audit import ternary_audit
from .kernel.ternary_scale import ternary_step
from .main import (LossComponent, TrainConfig, Trainer, _restore_voting, fit_config, memory_mb,
                   prepare_ternary_backward)
from .probe import MemoryMeter
from .vq import ModalitySpec, MultimodalARB, code_usage, frame_audio, patchify, unpatchify

__all__ = ["MODALITIES", "PATCH_MODALITIES", "PretrainConfig", "PatchDataset", "PatchBatch", "PretrainTrainer",
           "build_pretrainer", "load_modality"]

MODALITIES = ("text", "code", "image", "audio", "video")
PATCH_MODALITIES = ("image", "audio", "video")
IMAGE_SIZE, IMAGE_PATCH = 8, 4
AUDIO_FRAME = 16
VIDEO_SIZE, VIDEO_PATCH, VIDEO_FRAMES = 16, 4, 8


@dataclass
class PretrainConfig:
    steps: int = 1000
    batch: int = 16
    ctx: int = 64
    weights: dict[str, float] = field(default_factory=lambda: {m: 1.0 for m in MODALITIES})
    data: dict[str, Optional[str]] = field(default_factory=dict)   # modality -> path (None: default data)
    eval_interval: int = 250       # 0: only at step 0 and the end
    eval_batches: int = 4
    log_interval: int = 10         # 0: no per-step train records
    save_interval: int = 0         # 0: checkpoint only at the end
    no_save: bool = False          # no checkpoint; print the memory lines instead
    codes: int = 64                # VQ codes per patch modality
    vq_mode: str = "bigint"        # "bigint" (corr_accum) or "legacy" (T_accum/E_accum)
    val_fraction: float = 0.1
    seed: int = 0
    max_code_bytes: int = 2_000_000

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(MODALITIES)
        if unknown:
            raise ConfigError(f"unknown modality weight(s) {sorted(unknown)}; modalities: {', '.join(MODALITIES)}")
        for m in MODALITIES:
            w = float(self.weights.get(m, 0.0))
            if not (w >= 0 and math.isfinite(w)):
                raise ConfigError(f"--{m}-weight must be a finite number >= 0, got {w}")
            self.weights[m] = w
        if sum(self.weights.values()) <= 0:
            raise ConfigError("every modality weight is 0: give at least one positive --<modality>-weight")
        if self.vq_mode not in ("bigint", "legacy"):
            raise ConfigError(f"vq_mode must be 'bigint' or 'legacy', got {self.vq_mode!r}")
        for name in ("eval_interval", "log_interval", "save_interval"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.codes < 2:
            raise ConfigError(f"codes must be >= 2, got {self.codes}")

    @property
    def active(self) -> list[str]:
        """Modalities with weight > 0, in ``MODALITIES`` order."""
        return [m for m in MODALITIES if self.weights[m] > 0]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------- data
@dataclass
class PatchBatch:
    """``patches``: float32 ``[batch, ctx, P]``."""

    patches: torch.Tensor


class PatchDataset:
    """Train/validation patch streams with a seeded window sampler.

    Args:
        patches: float32 ``[n, P]`` in stream order (images / frames / clips one after another).
        ctx: patches per window.
        unit: window starts are multiples of ``unit`` patches (patches per image or frame).
        item_shape: ``(h, w, p)`` for image-like modalities (for the reconstruction grid), else None.
    """

    def __init__(self, patches: torch.Tensor, ctx: int, unit: int = 1, val_fraction: float = 0.1, seed: int = 0,
                 item_shape: Optional[tuple[int, int, int]] = None, source: str = "") -> None:
        n_units = patches.shape[0] // unit
        n_val = max(1, int(n_units * val_fraction)) * unit
        n_train = n_units * unit - n_val
        if n_train < ctx or n_val < ctx:
            raise DataError(f"ctx={ctx} is too large for {source or 'this data'}: {patches.shape[0]} patches split "
                            f"into {n_train} train / {n_val} validation, each needs >= ctx; lower --ctx or give more data")
        self.ctx, self.unit, self.item_shape, self.source = ctx, unit, item_shape, source
        self.train = patches[:n_train].contiguous()
        self.val = patches[n_train:n_train + n_val].contiguous()
        self.patch_dim = patches.shape[1]
        self.generator = torch.Generator().manual_seed(int(seed))

    def batch(self, batch_size: int, split: str = "train", generator: Optional[torch.Generator] = None) -> PatchBatch:
        data = self.train if split == "train" else self.val
        gen = generator if generator is not None else self.generator
        n_starts = (data.shape[0] - self.ctx) // self.unit + 1
        starts = torch.randint(0, n_starts, (batch_size,), generator=gen) * self.unit
        return PatchBatch(data[starts.unsqueeze(1) + torch.arange(self.ctx)])


def load_modality(name: str, path: Optional[str], ctx: int, val_fraction: float, seed: int,
                  max_code_bytes: int = 2_000_000):
    """Load one modality's data: ``TextDataset`` (text, code) or ``PatchDataset`` (image, audio, video)."""
    if name in ("text", "code"):
        if name == "text":
            text = load_text(path)
        else:
            from .data.code import load_code
            text = load_code(path, max_code_bytes)
        ids = ByteVocab().encode(text)
        ds = TextDataset(ids, ctx, val_fraction, seed)
        ds.source = path or ("stdlib docstrings" if name == "text" else "stdlib sources")
        return ds
    if name == "image":
        from .data.image import load_images
        s = load_images(path, IMAGE_SIZE)
        patches = patchify(s.images * 2 - 1, IMAGE_PATCH)
        return PatchDataset(patches, ctx, (IMAGE_SIZE // IMAGE_PATCH) ** 2, val_fraction, seed,
                            (IMAGE_SIZE, IMAGE_SIZE, IMAGE_PATCH), s.source_name)
    if name == "audio":
        from .data.audio import load_audio
        clips, src = load_audio(path)
        return PatchDataset(frame_audio(clips, AUDIO_FRAME), ctx, 1, val_fraction, seed, None, src)
    if name == "video":
        from .data.video import load_video
        clips, src = load_video(path, VIDEO_FRAMES, VIDEO_SIZE)
        frames = clips.reshape(-1, VIDEO_SIZE, VIDEO_SIZE)
        return PatchDataset(patchify(frames * 2 - 1, VIDEO_PATCH), ctx, (VIDEO_SIZE // VIDEO_PATCH) ** 2,
                            val_fraction, seed, (VIDEO_SIZE, VIDEO_SIZE, VIDEO_PATCH), src)
    raise ConfigError(f"unknown modality {name!r}")


# ----------------------------------------------------------------------------------------- components
def _text_like_component(name: str) -> LossComponent:
    def fn(model: MultimodalARB, batch: Batch, shared: dict) -> torch.Tensor:
        h = model.hidden(batch.x)
        return model.decoders["text"].loss(h, batch.y)
    return LossComponent(name, fn, 1)


def _patch_component(name: str) -> LossComponent:
    def fn(model: MultimodalARB, batch: PatchBatch, shared: dict) -> torch.Tensor:
        out = model.patch_losses(name, batch.patches)
        shared["parts"] = {k: float(out[k].detach()) for k in ("codebook", "recon", "next")}
        return out["codebook"] + out["recon"] + out["next"]
    return LossComponent(name, fn, 1)


# ----------------------------------------------------------------------------------------- trainer
class PretrainTrainer(Trainer):
    """A ``Trainer`` whose every step trains one modality drawn by weight (module doc)."""

    def __init__(self, model: MultimodalARB, datasets: dict[str, Any], pcfg: PretrainConfig,
                 run_dir: Optional[Path] = None, device: Optional[torch.device] = None) -> None:
        tcfg = TrainConfig(steps=pcfg.steps, batch=pcfg.batch, ctx=pcfg.ctx, eval_interval=pcfg.eval_interval,
                           eval_batches=pcfg.eval_batches, val_fraction=pcfg.val_fraction, seed=pcfg.seed)
        comps = [(_text_like_component(m) if m in ("text", "code") else _patch_component(m)) for m in pcfg.active]
        super().__init__(model, None, tcfg, ByteVocab(), comps, run_dir, device)
        self.pcfg = pcfg
        self.datasets = datasets
        self.modalities = list(pcfg.active)
        self.by_name = {c.name: c for c in self.components}
        w = torch.tensor([pcfg.weights[m] for m in self.modalities], dtype=torch.float64)
        self.probs = w / w.sum()
        self.modality_generator = torch.Generator().manual_seed(pcfg.seed + 7919)
        self.print_fn: Callable[[str], None] = print

    def sample_modality(self) -> str:
        """The next step's modality, drawn with probability ``weight / sum(weights)``."""
        i = int(torch.multinomial(self.probs, 1, generator=self.modality_generator))
        return self.modalities[i]

    def _to_device(self, batch):
        if isinstance(batch, PatchBatch):
            return PatchBatch(batch.patches.to(self.device))
        return Batch(batch.x.to(self.device), batch.y.to(self.device))

    def train_step(self) -> dict[str, float]:
        """One step of one modality; returns ``{modality: loss}`` (+ ``<m>/codebook|recon|next`` parts)."""
        model = self.model
        model.train()
        m = self.sample_modality()
        comp = self.by_name[m]
        batch = self._to_device(self.datasets[m].batch(self.pcfg.batch))
        shared: dict = {}
        try:
            loss = comp.fn(model, batch, shared)
            for r in range(comp.weight):
                prepare_ternary_backward(model, comp)
                loss.backward(retain_graph=r < comp.weight - 1)
        finally:
            _restore_voting(model)
        out = {m: float(loss.detach())}
        out.update({f"{m}/{k}": v for k, v in shared.get("parts", {}).items()})
        del loss, shared, batch
        return self._finish_step(out)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Per-modality validation metrics on fixed windows (module doc)."""
        model = self.model
        was = model.training
        model.eval()
        res: dict[str, float] = {}
        for m in self.modalities:
            gen = torch.Generator().manual_seed(10_007 + self.pcfg.seed)
            ds = self.datasets[m]
            if m in ("text", "code"):
                tot = 0.0
                for _ in range(self.pcfg.eval_batches):
                    b = self._to_device(ds.batch(self.pcfg.batch, "val", gen))
                    tot += float(model.decoders["text"].loss(model.hidden(b.x), b.y))
                res[f"val/{m}/loss"] = tot / self.pcfg.eval_batches
                continue
            acc = {"recon_mse": 0.0, "vq_mse": 0.0, "next_loss": 0.0, "baseline_mse": 0.0}
            idxs = []
            mean_patch = ds.train.mean(0).to(self.device)
            for _ in range(self.pcfg.eval_batches):
                b = self._to_device(ds.batch(self.pcfg.batch, "val", gen))
                out = model.patch_losses(m, b.patches)
                acc["baseline_mse"] += float(F.mse_loss(mean_patch.expand_as(b.patches), b.patches))
                acc["recon_mse"] += float(out["recon"])
                acc["vq_mse"] += float(out["codebook"])
                acc["next_loss"] += float(out["next"])
                idxs.append(out["idx"].cpu())
            for k, v in acc.items():
                res[f"val/{m}/{k}"] = v / self.pcfg.eval_batches
            usage, ppl = code_usage(torch.cat([i.reshape(-1) for i in idxs]), model.vq[m].num_embeddings)
            res[f"val/{m}/code_usage"] = usage
            res[f"val/{m}/code_perplexity"] = ppl
        model.train(was)
        return res

    @torch.no_grad()
    def image_grid(self, n: int = 16) -> Optional[Path]:
        """``<run>/image_recon.png``: original / nearest codes / decoder reconstruction of ``n`` validation images."""
        if self.run_dir is None or "image" not in self.modalities:
            return None
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        ds: PatchDataset = self.datasets["image"]
        h, w, p = ds.item_shape
        per = (h // p) * (w // p)
        n = min(n, ds.val.shape[0] // per)
        patches = ds.val[: n * per].to(self.device).unsqueeze(0)            # [1, n*per, P]
        model = self.model
        was = model.training
        model.eval()
        rows = [patches[0]]
        vq = model.vq["image"]
        idx = vq.quantize(patches)
        rows.append(vq.codes()[idx[0]])
        recon = []
        win = max(per, self.pcfg.ctx // per * per)              # windows of whole images, at most ~ctx patches
        for i in range(0, n * per, win):
            ci = vq.quantize(patches[:, i:i + win])
            recon.append(model.decoders["image"](model.hidden(ci + model.specs["image"].offset))[0])
        rows.append(torch.cat(recon)[: n * per])
        model.train(was)
        fig, axes = plt.subplots(3, n, figsize=(n * 0.8, 3 * 0.9))
        for r, (row, label) in enumerate(zip(rows, ("original", "codes", "decoded"))):
            imgs = ((unpatchify(row.float().cpu(), h, w, p) + 1) / 2).clamp(0, 1)
            for j in range(n):
                ax = axes[r, j] if n > 1 else axes[r]
                ax.imshow(imgs[j].numpy(), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]); ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(label, fontsize=7)
        fig.suptitle(f"image reconstructions, step {self.step}", fontsize=8)
        path = self.run_dir / "image_recon.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def plot(self) -> Optional[Path]:
        """``<run>/loss.png``: train loss per modality and the validation metrics against step."""
        if self.run_dir is None or not self._metrics_path().exists():
            return None
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        series: dict[str, list] = {}
        for line in self._metrics_path().read_text().splitlines():
            r = json.loads(line)
            for k, v in r.items():
                if (k.startswith("loss/") or k.startswith("val/")) and "/code_" not in k and "parts" not in k:
                    series.setdefault(k, []).append((r["step"], v))
        fig, (ax_n, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
        for k, pts in sorted(series.items()):
            ax = ax_m if k.endswith("_mse") else ax_n
            ax.plot(*zip(*pts), "o-" if k.startswith("val/") else "-", lw=0.8, ms=3, label=k)
        ax_n.set_ylabel("nats/token; patch train loss = codebook+recon+next")
        ax_m.set_ylabel("mean squared error (validation)")
        for ax in (ax_n, ax_m):
            ax.set_xlabel("step"); ax.set_yscale("log"); ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=6)
        fig.suptitle(f"arbitor pretrain {self.run_dir.name}")
        fig.tight_layout()
        path = self.run_dir / "loss.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def save(self) -> Path:
        """Atomically write ``<run>/checkpoint.safetensors`` (model state + pretrain config) and ``config.json``."""
        ternary_step(self.model)
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "pretrain_config": self.pcfg.to_dict(),
                 "modalities": {s.name: dataclasses.asdict(s) for s in self.model.specs.values()},
                 "vq_mode": self.model.vq_mode}
        extra = {"rng.modality": self.modality_generator.get_state()}
        extra.update({f"rng.data.{m}": ds.generator.get_state() for m, ds in self.datasets.items()})
        path = self.run_dir / CHECKPOINT_NAME
        save_checkpoint(path, self.model.state_dict(), self.model.cfg.to_dict(), state, extra)
        cfg_json = {"model": self.model.cfg.to_dict(), "pretrain": self.pcfg.to_dict(), "step": self.step,
                    "modalities": state["modalities"]}
        atomic_write_bytes(self.run_dir / "config.json", json.dumps(cfg_json, indent=2).encode())
        return path

    # ------------------------------------------------------------------ loop
    def fit(self, steps: Optional[int] = None, progress: bool = True,
            log_interval: Optional[int] = None) -> dict[str, float]:
        """Train to ``steps`` (default ``pcfg.steps``); evaluate at 0, every ``eval_interval`` and the end."""
        from tqdm import tqdm
        target = self.pcfg.steps if steps is None else steps
        log_every = self.pcfg.log_interval if log_interval is None else log_interval
        meter = MemoryMeter(self.model, self.device, self.print_fn) if self.pcfg.no_save else None
        if meter is not None:
            meter.header()
        last = self.evaluate()
        self.log({"step": self.step, **last})
        bar = tqdm(total=target, initial=self.step, disable=not progress, unit="step", dynamic_ncols=True)
        counts = {m: 0 for m in self.modalities}
        t_last, tok_last = time.perf_counter(), self.tokens_seen
        try:
            while self.step < target:
                losses = meter.step(self.step, self.train_step)[0] if meter is not None else self.train_step()
                m = next(iter(losses))
                counts[m] += 1
                bar.update(1)
                bar.set_postfix({m: f"{losses[m]:.3f}"})
                if log_every and (self.step % log_every == 0 or self.step == target):
                    now = time.perf_counter()
                    tps = (self.tokens_seen - tok_last) / max(now - t_last, 1e-9)
                    t_last, tok_last = now, self.tokens_seen
                    rec = {"step": self.step, "modality": m, "loss": losses[m], "tokens_per_s": tps,
                           "mem_mb": memory_mb(self.device), "tokens_seen": self.tokens_seen,
                           "modality_counts": dict(counts)}
                    rec.update({f"loss/{k}" if "/" not in k else f"parts/{k}": v for k, v in losses.items()})
                    self.log(rec)
                interval = self.pcfg.eval_interval
                if (interval and self.step % interval == 0) or self.step == target:
                    last = self.evaluate()
                    self.log({"step": self.step, **last})
                    bar.write(f"step {self.step}: " + ", ".join(f"{k[4:]} {v:.4f}" for k, v in last.items()))
                    if self.run_dir is not None:
                        self.plot()
                        self.image_grid()
                save_now = (self.pcfg.save_interval and self.step % self.pcfg.save_interval == 0) or self.step == target
                if self.run_dir is not None and not self.pcfg.no_save and save_now:
                    self.save()
        finally:
            bar.close()
        self.modality_counts = counts
        return last


def build_pretrainer(pcfg: PretrainConfig, run_dir: Optional[Path] = None, preset_name: str = "tiny",
                     overrides: Optional[dict[str, Any]] = None, device: str = "cpu",
                     loader: Callable[..., Any] = load_modality) -> PretrainTrainer:
    """Load the data of every active modality (only those), build the model and the trainer.

    Raises ``DataError`` / ``ConfigError`` with a one-line reason.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    datasets = {m: loader(m, pcfg.data.get(m), pcfg.ctx, pcfg.val_fraction, pcfg.seed, pcfg.max_code_bytes)
                for m in pcfg.active}
    specs, offset = [], 256
    for m in PATCH_MODALITIES:
        if m in datasets:
            specs.append(ModalitySpec(m, pcfg.codes, datasets[m].patch_dim, offset))
            offset += pcfg.codes
    fields = {k: v for k, v in (overrides or {}).items() if v is not None}
    fields["vocab_size"] = offset
    cfg = fit_config(preset(preset_name, **fields), pcfg.ctx, dev)
    torch.manual_seed(cfg.seed)
    model = MultimodalARB(cfg, specs, pcfg.vq_mode)
    gen = torch.Generator().manual_seed(pcfg.seed + 31)
    for s in specs:
        model.vq[s.name].init_from_data(datasets[s.name].train, gen)
    if run_dir is not None:
        run_dir = Path(run_dir)
        if (run_dir / CHECKPOINT_NAME).exists() and not pcfg.no_save:
            raise ConfigError(f"{run_dir / CHECKPOINT_NAME} already exists; choose another --run "
                              "(arbitor never overwrites a checkpoint)")
        run_dir.mkdir(parents=True, exist_ok=True)
        mp = run_dir / "metrics.jsonl"
        if mp.exists():
            mp.unlink()
    trainer = PretrainTrainer(model, datasets, pcfg, run_dir, dev)
    trainer.preset = preset_name
    return trainer


# ----------------------------------------------------------------------------------------- command line
def add_pretrain_arguments(p) -> None:
    """The flags of ``arbitor pretrain`` and ``training/pretrain.py``."""
    from .cli import _non_negative, _positive
    nonneg_float, pos_int, nonneg_int = _non_negative(float), _positive(int), _non_negative(int)

    p.add_argument("--steps", type=pos_int, default=1000, help="optimisation steps (default 1000)")
    p.add_argument("--batch", type=pos_int, default=16, help="sequences per step (default 16)")
    p.add_argument("--ctx", type=pos_int, default=64, help="tokens (bytes or patches) per sequence (default 64)")
    for m in MODALITIES:
        p.add_argument(f"--{m}-weight", type=nonneg_float, default=1.0,
                       help=f"sampling weight of the {m} modality; 0 = off, loads none of its data (default 1)")
    p.add_argument("--text-data", default=None, metavar="PATH",
                   help="UTF-8 text file (default: the standard-library docstring corpus)")
    p.add_argument("--code-data", default=None, metavar="DIR", help="folder of .py files (default: the stdlib sources)")
    p.add_argument("--image-data", default=None, metavar="DIR",
                   help="folder of PNG/JPEG images (default: scikit-learn digits, or synthetic digits without it)")
    p.add_argument("--audio-data", default=None, metavar="DIR",
                   help="folder of integer-PCM .wav files (default: synthetic notes)")
    p.add_argument("--video-data", default=None, metavar="DIR",
                   help="folder of .npy clips or sub-folders of frames (default: moving digits)")
    p.add_argument("--eval-interval", type=nonneg_int, default=250,
                   help="validate every N steps; 0 = only at the start and the end (default 250)")
    p.add_argument("--eval-batches", type=pos_int, default=4, help="validation batches per modality (default 4)")
    p.add_argument("--log-interval", type=nonneg_int, default=10,
                   help="write a train record every N steps; 0 = none (default 10)")
    p.add_argument("--save-interval", type=nonneg_int, default=0,
                   help="checkpoint every N steps; 0 = only at the end (default 0)")
    p.add_argument("--no-save", action="store_true",
                   help="write no checkpoint; print the memory lines (logical_ternary_weights, training_state_mb, "
                        "after_cuda_mb, step i alloc_mb/reserved_mb/peak_mb)")
    p.add_argument("--run", default=None, help="run name under --runs-dir, or a path (default pretrain-<timestamp>)")
    p.add_argument("--runs-dir", default="runs", help="directory holding runs (default ./runs)")
    p.add_argument("--preset", default="tiny", help="model preset (default tiny; see arbitor.config.PRESETS)")
    p.add_argument("--strength", type=float, default=None, help="override the preset's BigInt strength")
    p.add_argument("--codes", type=pos_int, default=64, help="VQ codes per image/audio/video codebook (default 64)")
    p.add_argument("--vq-mode", choices=("bigint", "legacy"), default="bigint",
                   help="VQ codebook training rule: BigInt corr_accum (default) or legacy T_accum/E_accum flips")
    p.add_argument("--backend", choices=("auto", "torch", "triton"), default=None,
                   help="ternary kernel backend (default: ARB_TERNARY_BACKEND or auto)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu; e.g. cuda)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model init, data and modality order (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def pretrain_from_args(args) -> int:
    """``arbitor pretrain``: build the run, train, report. User errors raise ``cli.UserError``."""
    from .cli import UserError
    if args.run is None:
        args.run = time.strftime("pretrain-%Y%m%d-%H%M%S")
    run = Path(args.run)
    run_dir = run if (run.is_absolute() or len(run.parts) > 1) else Path(args.runs_dir) / run
    weights = {m: getattr(args, f"{m}_weight") for m in MODALITIES}
    data = {m: getattr(args, f"{m}_data") for m in MODALITIES}
    try:
        pcfg = PretrainConfig(steps=args.steps, batch=args.batch, ctx=args.ctx, weights=weights, data=data,
                              eval_interval=args.eval_interval, eval_batches=args.eval_batches,
                              log_interval=args.log_interval, save_interval=args.save_interval,
                              no_save=args.no_save, codes=args.codes, vq_mode=args.vq_mode, seed=args.seed)
        trainer = build_pretrainer(pcfg, run_dir, args.preset,
                                   {"strength": args.strength, "backend": args.backend, "seed": args.seed},
                                   device=args.device)
    except (DataError, ConfigError) as exc:
        raise UserError(str(exc)) from None
    except (ValueError, RuntimeError) as exc:
        raise UserError(" ".join(str(exc).split())) from None
    report = ternary_audit(trainer.model)
    srcs = ", ".join(f"{m} x{pcfg.weights[m]:g} ({getattr(trainer.datasets[m], 'source', '')})" for m in pcfg.active)
    print(f"run {run_dir}: preset {args.preset}, {report['logical_ternary_weights']:,} ternary weights, "
          f"{report['training_state_bytes']:,} B integer training state, "
          f"{report['trainable_float_params']:,} trainable float params; vocab {trainer.model.cfg.vocab_size}; "
          f"modalities: {srcs}", flush=True)
    result = trainer.fit(progress=not args.no_progress)
    print(f"done: step {trainer.step}, steps per modality {trainer.modality_counts}; "
          + ", ".join(f"{k} {v:.4f}" for k, v in result.items()) + f"; {run_dir}/metrics.jsonl")
    return 0
