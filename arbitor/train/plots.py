"""``loss.png``: the training curves of a run, drawn from its ``metrics.jsonl``.

Left panel: train losses (``loss`` or, with several components, ``loss/<name>``) and every validation
loss in nats (``val_loss``, ``val/<m>/loss``, ``val/<m>/next_loss``); right panel (multimodal runs):
the validation mean squared errors (``val/<m>/*_mse``). Codebook usage and bits/byte are left out
(other units). The file is replaced atomically.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["plot_metrics"]

_SKIP = ("bpb", "code_usage", "code_perplexity")


def plot_metrics(metrics_path: Path, out_path: Path, title: str) -> Path:
    """Draw ``metrics_path`` (JSON lines) into ``out_path`` (PNG); returns ``out_path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series: dict[str, list] = {}
    for line in Path(metrics_path).read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        for k, v in r.items():
            if isinstance(v, (int, float)) and (k == "loss" or k.startswith(("loss/", "val"))) \
                    and not any(s in k for s in _SKIP):
                series.setdefault(k, []).append((r["step"], v))
    parts = [k for k in series if k.startswith("loss/")]
    if len(parts) > 1:
        series.pop("loss", None)          # one curve per component instead of their sum
    else:
        for k in parts:
            series.pop(k)
    mse = {k: v for k, v in series.items() if k.endswith("_mse")}
    nats = {k: v for k, v in series.items() if k not in mse}
    fig, axes = plt.subplots(1, 2 if mse else 1, figsize=(12 if mse else 7, 4.5 if mse else 4), squeeze=False)
    for ax, group, label in ((axes[0, 0], nats, "nats / token (patch train loss: codebook + recon + next)"),
                             *(((axes[0, 1], mse, "mean squared error (validation)"),) if mse else ())):
        for k, pts in sorted(group.items()):
            val = k.startswith("val")
            ax.plot(*zip(*pts), "o-" if val else "-", lw=0.8, ms=3, alpha=1.0 if val else 0.7,
                    label=k.replace("loss/", "train ").replace("loss", "train loss") if not val else k)
        ax.set_xlabel("step")
        ax.set_ylabel(label if mse else "nats / token")
        if mse:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6 if mse else 8)
    fig.suptitle(title)
    fig.tight_layout()
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out_path)
    return out_path
