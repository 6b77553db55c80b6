"""Data-parallel traffic and overhead of ``TernaryDataParallel`` (docs/distributed.md).

Part ``traffic`` (no device needed): for each preset and rule, the bytes one step all-reduces
(``reduce_tensors()`` of every ternary module, in its wire dtype) per logical ternary weight, against
DDP on the same weights in dense bf16 (2 bytes per weight; DDP's default all-reduces gradients in the
parameters' dtype). Models are built on the meta device, so the ``3b`` row costs no memory.

Part ``overhead``: tokens/s of the tiny preset's step on this machine, one process, with and without a
process group of size 1 (gloo on CPU, NCCL on CUDA): the cost of the collectives and buffer copies with
nothing to overlap them with.

    PYTHONPATH=. python benchmarks/bench_distributed.py --parts traffic,overhead
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbitor.model.config import preset  # noqa: E402
from arbitor.model.text import ArbitorLM  # noqa: E402
from arbitor.ternary.audit import ternary_audit  # noqa: E402
from arbitor.ternary.step import set_step_mode, ternary_layers  # noqa: E402
from benchmarks._device import device_tag  # noqa: E402

PRESETS = ("tiny", "small", "base", "medium", "3b")


def traffic(micro_batches: int) -> list[dict]:
    rows = []
    for name in PRESETS:
        for rule in ("bigint", "counter"):
            with torch.device("meta"):
                model = ArbitorLM(preset(name, ternary={"update_rule": rule}))
            set_step_mode(model, micro_batches)
            sent = sum(t.numel() * torch.empty((), dtype=d).element_size()
                       for m in ternary_layers(model) for t, d in m.reduce_tensors())
            weights = ternary_audit(model)["logical_ternary_weights"]
            rows.append({"preset": name, "update_rule": rule, "group_size": model.cfg.ternary.group_size,
                         "logical_weights": weights, "bytes_per_step": sent, "bytes_per_weight": sent / weights,
                         "ddp_bf16_bytes_per_step": 2 * weights, "ratio_vs_ddp_bf16": sent / (2 * weights)})
    return rows


def overhead(steps: int, device: str) -> list[dict]:
    import torch.distributed as dist

    from arbitor.data import BUNDLED_TEXT_PATH
    from arbitor.train import TextConfig, TrainConfig, build_run
    text = TextConfig(text_data=str(BUNDLED_TEXT_PATH), max_chars=200_000)
    rows = []
    for label, grad_accum, group in (("one micro-batch, online (no wrapper)", 1, False),
                                     ("grad_accum 2, no process group", 2, False),
                                     ("grad_accum 2, process group of 1", 2, True)):
        if group:
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
            dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
        tr = build_run("text", TrainConfig(steps=steps, batch=16 // grad_accum, ctx=64), text, device=device)
        for _ in range(2):
            tr.train_step()
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            tr.train_step()
        if device == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / steps
        rows.append({"setup": label, "step_ms": 1000 * dt, "tokens_per_s": 16 * 64 / dt})
        print(rows[-1], flush=True)
        if group:
            dist.destroy_process_group()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="traffic,overhead")
    ap.add_argument("--micro-batches", type=int, default=8, help="ballots per step the traffic rows assume")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results" / "distributed"))
    args = ap.parse_args(argv)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    tag = device_tag(name)
    res = {"device": tag, "device_name": name, "torch": torch.__version__, "python": platform.python_version(),
           "command": "PYTHONPATH=. python benchmarks/bench_distributed.py " + " ".join(argv or sys.argv[1:])}
    parts = args.parts.split(",")
    if "traffic" in parts:
        res["traffic"] = traffic(args.micro_batches)
    if "overhead" in parts:
        res["overhead"] = overhead(args.steps, args.device)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(res, indent=1))
    lines = [f"# Data-parallel traffic and overhead ({tag})", "", f"Command: `{res['command']}`", ""]
    if "traffic" in res:
        lines += [f"All-reduced per step ({args.micro_batches} ballots per step), against DDP in bf16 (2 B/weight):", "",
                  "| preset | rule | group | weights | bytes/step | bytes/weight | vs DDP bf16 |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['preset']} | {r['update_rule']} | {r['group_size']} | {r['logical_weights']:,} | "
                  f"{r['bytes_per_step']:,} | {r['bytes_per_weight']:.4f} | {r['ratio_vs_ddp_bf16']:.3f}x |"
                  for r in res["traffic"]]
    if "overhead" in res:
        lines += ["", f"Step time of the tiny preset on {name} (16 x 64 tokens per step):", "",
                  "| setup | step ms | tokens/s |", "|---|---:|---:|"]
        lines += [f"| {r['setup']} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} |" for r in res["overhead"]]
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
