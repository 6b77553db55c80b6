"""The 3.12B-weight text path on one GPU: memory probe and training throughput vs dense bf16 AdamW.

Usage (CUDA machine)::

    PYTHONPATH=. python benchmarks/bench_scale.py [--preset 3b] [--out-dir benchmarks/results/scale]
                                                  [--batches 8,16,24,32] [--ctx 512] [--steps 4]

Writes ``<out-dir>/<device>.json`` and ``<out-dir>/<device>.md``. In one process, in this order:

1. the spec's 3-step memory probe at batch 1 x ctx 4 (``arbitor.train.probe.probe_memory``);
2. the same probe at batch 8 x ctx 512;
3. arbitor training throughput (forward, backward with streamed integer votes, ``arbitor.ternary.step.ternary_step``)
   at 8 x 512 and at larger batches while the peak stays <= 8 GiB (``--mem-cap-gb``);
   a ``torch.profiler`` table of where one step's GPU time goes;
4. the same architecture as a dense bf16 PyTorch model (``nn.Linear`` weights in bf16, fused
   AdamW, same activation checkpointing and bf16 activations) at the same batches, with its
   peak memory.

tokens/s = batch * ctx * timed steps / wall time of those steps (synchronised), after warm-up.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbitor.model.config import preset  # noqa: E402
from arbitor.model.layers import register_linear  # noqa: E402
from arbitor.model.text import ArbitorLM  # noqa: E402
from arbitor.ternary.step import ternary_step  # noqa: E402
from arbitor.train.probe import probe_memory  # noqa: E402
from benchmarks._device import device_tag  # noqa: E402

_MB = 2 ** 20


def _bf16_linear(cfg, in_features: int, out_features: int, seed: int) -> nn.Module:
    layer = nn.Linear(in_features, out_features, bias=False, device="cuda", dtype=torch.bfloat16)
    nn.init.normal_(layer.weight, std=1.0 / math.sqrt(in_features))
    return layer


register_linear("dense_bf16_cuda", _bf16_linear)


def _step_arbitor(model, idx):
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    ternary_step(model)
    return float(loss.detach())


def _make_dense_step(model):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)

    def step(_, idx):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        ternary_step(model)  # the embedding is still ternary in both models
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())
    return step


def _time(step_fn, model, cfg, batch, ctx, steps, warmup=2):
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, cfg.vocab_size, (batch, ctx + 1), generator=gen).cuda() for _ in range(2)]
    torch.cuda.reset_peak_memory_stats()
    for i in range(warmup):
        step_fn(model, batches[i % 2])
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(steps):
        loss = step_fn(model, batches[i % 2])
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return {"batch": batch, "ctx": ctx, "steps": steps, "step_ms": round(1000 * dt / steps, 1),
            "tokens_per_s": round(batch * ctx * steps / dt, 1), "loss": round(loss, 4),
            "peak_mb": round(torch.cuda.max_memory_allocated() / _MB, 1),
            "alloc_mb": round(torch.cuda.memory_allocated() / _MB, 1)}


def _profile(step_fn, model, cfg, batch, ctx, top=15):
    from torch.profiler import ProfilerActivity, profile
    idx = torch.randint(0, cfg.vocab_size, (batch, ctx + 1)).cuda()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step_fn(model, idx)
        torch.cuda.synchronize()
    rows = []
    for ev in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:top]:
        rows.append({"name": ev.key[:90], "calls": ev.count, "cuda_ms": round(ev.device_time_total / 1000, 2)})
    total = sum(ev.device_time_total for ev in prof.key_averages()) / 1000
    return {"total_cuda_ms": round(total, 1), "top": rows}


def _throughput(label, build, step_factory, cfg, batches, ctx, steps, cap_mb, report):
    model = build()
    step_fn = step_factory(model)
    rows = []
    for b in batches:
        try:
            r = _time(step_fn, model, cfg, b, ctx, steps)
        except torch.OutOfMemoryError:
            rows.append({"batch": b, "ctx": ctx, "oom": True})
            print(f"{label}: batch {b} x {ctx}: out of memory", flush=True)
            gc.collect()
            torch.cuda.empty_cache()
            continue
        r["within_cap"] = r["peak_mb"] <= cap_mb
        rows.append(r)
        print(f"{label}: batch {b} x {ctx}: {r['tokens_per_s']:.0f} tok/s, step {r['step_ms']} ms, "
              f"peak {r['peak_mb']:.0f} MB", flush=True)
    report[label] = {"rows": rows, "profile_8x%d" % ctx: _profile(step_fn, model, cfg, batches[0], ctx)}
    del model, step_fn
    gc.collect()
    torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="3b")
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results" / "scale"))
    ap.add_argument("--device-name", default=None)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--batches", default="8,16,24,32")
    ap.add_argument("--dense-batches", default=None, help="default: the same as --batches")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per batch size")
    ap.add_argument("--mem-cap-gb", type=float, default=8.0)
    ap.add_argument("--skip-dense", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_scale needs a CUDA device", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name()
    tag = args.device_name or device_tag(name)
    batches = [int(b) for b in args.batches.split(",")]
    dense_batches = [int(b) for b in (args.dense_batches or args.batches).split(",")]
    cfg = preset(args.preset, max_ctx=max(args.ctx, 512))
    report = {"device": name, "torch": torch.__version__, "preset": args.preset, "config": cfg.to_dict(),
              "command": "PYTHONPATH=. python benchmarks/bench_scale.py " + " ".join(argv or sys.argv[1:]),
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    t0 = time.perf_counter()
    report["probe_b1_ctx4"] = probe_memory(cfg, steps=3, batch=1, ctx=4, device="cuda")
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    report["probe_b8_ctx512"] = probe_memory(cfg, steps=3, batch=8, ctx=512, device="cuda")
    gc.collect()
    torch.cuda.empty_cache()
    print(f"probes done in {time.perf_counter() - t0:.0f}s", flush=True)
    cap_mb = args.mem_cap_gb * 1024

    def build_arbitor():
        torch.manual_seed(cfg.seed)
        return ArbitorLM(cfg).cuda().train()

    _throughput("arbitor", build_arbitor, lambda m: _step_arbitor, cfg, batches, args.ctx, args.steps, cap_mb, report)
    if not args.skip_dense:
        dcfg = cfg.replace(linear="dense_bf16_cuda")

        def build_dense():
            torch.manual_seed(cfg.seed)
            return ArbitorLM(dcfg).cuda().train()

        _throughput("dense_bf16_adamw", build_dense, _make_dense_step, dcfg, dense_batches, args.ctx, args.steps,
                    float("inf"), report)
    report["total_s"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{tag}.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    return 0


def markdown(r: dict) -> str:
    p1, p8 = r["probe_b1_ctx4"], r["probe_b8_ctx512"]
    lines = [f"# 3.12B-weight text path on {r['device']}", "",
             f"Command: `{r['command']}` (device tool, {r['date_utc']} UTC, torch {r['torch']}).", "",
             f"Preset `{r['preset']}`: {p1['logical_ternary_weights']:,} logical ternary weights, training state "
             f"{p1['training_state_mb']:.2f} MB, {p1['trainable_float_params']} trainable float parameters.", "",
             "## Memory probe (MB, `torch.cuda` counters after each step's cleanup)", "",
             "| batch x ctx | after_cuda_mb | step | alloc_mb | reserved_mb | peak_mb |", "|---|---:|---:|---:|---:|---:|"]
    for p in (p1, p8):
        for s in p["steps"]:
            lines.append(f"| {p['batch']} x {p['ctx']} | {p['after_cuda_mb']:.0f} | {s['step']} | {s['alloc_mb']:.0f} | "
                         f"{s['reserved_mb']:.0f} | {s['peak_mb']:.0f} |")
    lines += ["", "## Training throughput (full step: forward, backward, update)", "",
              "| model | batch x ctx | tokens/s | step ms | peak MB | ratio vs dense tok/s | dense peak / arbitor peak |",
              "|---|---|---:|---:|---:|---:|---:|"]
    dense = {row["batch"]: row for row in r.get("dense_bf16_adamw", {}).get("rows", []) if not row.get("oom")}
    for label in ("arbitor", "dense_bf16_adamw"):
        for row in r.get(label, {}).get("rows", []):
            if row.get("oom"):
                lines.append(f"| {label} | {row['batch']} x {row['ctx']} | OOM | | | | |")
                continue
            d = dense.get(row["batch"]) if label == "arbitor" else None
            ratio = f"{row['tokens_per_s'] / d['tokens_per_s']:.2f}x" if d else ""
            memr = f"{d['peak_mb'] / row['peak_mb']:.1f}x" if d else ""
            lines.append(f"| {label} | {row['batch']} x {row['ctx']} | {row['tokens_per_s']:.0f} | {row['step_ms']} | "
                         f"{row['peak_mb']:.0f} | {ratio} | {memr} |")
    for label in ("arbitor", "dense_bf16_adamw"):
        prof = r.get(label, {})
        for key, val in prof.items():
            if key.startswith("profile"):
                lines += ["", f"### Where one {label} step's GPU time goes ({key}, total {val['total_cuda_ms']} ms)", "",
                          "| kernel | calls | CUDA ms |", "|---|---:|---:|"]
                lines += [f"| `{t['name']}` | {t['calls']} | {t['cuda_ms']} |" for t in val["top"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
